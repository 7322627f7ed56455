package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"doppel/node/api"
	"doppel/node/peer"
	"doppel/node/peer/membership"
)

// detectionBound is how long the fast preset may take to report a member's
// failure everywhere, with slack for a loaded two-core machine and for the
// API polling.
const detectionBound = membership.FastDetectionBound + time.Second

// seenByAll waits until every daemon in ds reports node name in state, and
// returns how long that took.
func seenByAll(t *testing.T, ds []*daemon, name, state string, timeout time.Duration) time.Duration {
	t.Helper()
	return waitFor(t, timeout, fmt.Sprintf("every node sees %s %s", name, state), func() (bool, string) {
		for _, d := range ds {
			m, err := memberStates(d)
			if err != nil {
				return false, fmt.Sprintf("%s: %v", d.Name, err)
			}
			if m[name] != state {
				return false, fmt.Sprintf("%s sees %v", d.Name, m)
			}
		}
		return true, ""
	})
}

// TestE2EMembership: a node that joins, one that leaves (SIGTERM) and one
// that fails (SIGKILL) are seen as alive, left and dead by every other node
// within the fast preset's bounds, and raft follows: the newcomer becomes a
// voter, the one that left is removed, and the survivors keep a leader.
func TestE2EMembership(t *testing.T) {
	c := newCluster(t)
	n1, n2, n3 := c.start(), c.start(), c.start()
	all := []*daemon{n1, n2, n3}
	for _, d := range all {
		seenByAll(t, all, d.Name, api.NodeAlive, 10*time.Second)
	}

	start := time.Now()
	n4 := c.start()
	all = append(all, n4)
	seenByAll(t, all, n4.Name, api.NodeAlive, detectionBound)
	t.Logf("measured: join of n4 seen alive by all %s after its daemon started", time.Since(start).Round(time.Millisecond))
	waitFor(t, 10*time.Second, "n4 becomes a raft voter", func() (bool, string) {
		ns, err := n1.Client.Nodes(ctxT(t))
		if err != nil {
			return false, err.Error()
		}
		for _, n := range ns {
			if n.Name == "n4" {
				return n.Voter, fmt.Sprintf("n4: %+v", n)
			}
		}
		return false, "n4 not listed"
	})

	start = time.Now()
	n4.stop(t)
	seenByAll(t, all[:3], "n4", api.NodeLeft, detectionBound)
	t.Logf("measured: leave of n4 (SIGTERM) seen by all %s after the signal", time.Since(start).Round(time.Millisecond))

	// The leader drops the node that left from raft.
	waitFor(t, 10*time.Second, "n4 leaves raft", func() (bool, string) {
		ns, err := n1.Client.Nodes(ctxT(t))
		if err != nil {
			return false, err.Error()
		}
		for _, n := range ns {
			if n.Name == "n4" && n.Voter {
				return false, "n4 still a voter"
			}
		}
		return true, ""
	})

	// A failure: the victim is a follower, so that the cluster keeps its
	// leader; a leader's failure is covered below by the quorum check.
	victim, survivors := n3, []*daemon{n1, n2}
	if st, _ := n3.Client.Status(ctxT(t)); st.Leader == "n3" {
		victim, survivors = n2, []*daemon{n1, n3}
	}
	start = time.Now()
	victim.kill9(t)
	seenByAll(t, survivors, victim.Name, api.NodeDead, detectionBound)
	t.Logf("measured: failure of %s (SIGKILL) seen dead by all survivors %s after the kill (bound %s)",
		victim.Name, time.Since(start).Round(time.Millisecond), membership.FastDetectionBound)
	for _, d := range survivors {
		st, err := d.Client.Status(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		if st.Leader == "" || st.Leader == victim.Name || !st.Quorum || st.Members != 2 {
			t.Errorf("%s after the failure: %+v", d.Name, st)
		}
	}
}

// TestE2EWrongKey: a node holding another cluster key is refused by the
// gossip (its daemon says it could not join and exits), by raft and by the
// peer transport (TLS handshakes fail and are logged), and never appears
// among the cluster's nodes.
func TestE2EWrongKey(t *testing.T) {
	c := newCluster(t)
	n1, n2 := c.start(), c.start()
	seenByAll(t, []*daemon{n1, n2}, "n2", api.NodeAlive, 10*time.Second)

	// Gossip: a daemon with another key cannot join.
	otherKey := c.dir + "/other.key"
	c.mustCLI("", "init", "--key-file", otherKey)
	dir := c.dir + "/intruder"
	args := c.nodeArgs("intruder", c.ip(5), dir, dir+"/api.sock", true)
	for i, a := range args {
		if a == c.key {
			args[i] = otherKey
		}
	}
	intruder := c.spawn("intruder", c.ip(5), dir, dir+"/api.sock", args)
	err := intruder.wait(20 * time.Second)
	intruder.done = true
	var ee interface{ ExitCode() int }
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("daemon with the wrong key: exit %v, want status 1\n%s", err, intruder.logTail(20))
	}
	if log := intruder.log(); !strings.Contains(log, "could not join") {
		t.Errorf("daemon with the wrong key does not say it could not join:\n%s", log)
	}
	waitFor(t, 5*time.Second, "n1 logs the undecryptable gossip", func() (bool, string) {
		return strings.Contains(n1.log(), "no installed keys could decrypt"), "not logged"
	})

	wrong, err := peer.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	right, err := peer.LoadKey(c.key, nil)
	if err != nil {
		t.Fatal(err)
	}

	// Raft: the TLS handshake with the wrong key fails on both sides; with
	// the right key it succeeds (the control).
	raftAddr := n1.IP + ":7947"
	dialTLS := func(k peer.Key) error {
		d := &net.Dialer{Timeout: 2 * time.Second}
		conn, err := tls.DialWithDialer(d, "tcp", raftAddr, k.TLS())
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(time.Second))
		return conn.Handshake()
	}
	if err := dialTLS(right); err != nil {
		t.Fatalf("raft TLS with the cluster key: %v", err)
	}
	if err := dialTLS(wrong); err == nil {
		t.Fatal("raft accepted a TLS handshake with the wrong key")
	}
	waitFor(t, 5*time.Second, "n1 logs the refused raft connection", func() (bool, string) {
		return strings.Contains(n1.log(), "raft: refused connection"), "not logged"
	})

	// Peer transport: an RPC with the wrong key fails at the handshake;
	// with the right key the same RPC reaches the handler (which answers
	// not found for an unknown app).
	call := func(k peer.Key, name string) error {
		cfg := peer.DefaultConfig()
		cfg.BindAddr = c.ip(6) + ":0"
		cfg.Key = k
		cfg.NodeName = name
		tr, err := peer.Listen(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var d api.AppDetail
		return tr.Call(ctx, n1.IP+":7948", rpcDetail, "no-such-app", &d)
	}
	if err := call(right, "control"); err == nil || !strings.Contains(err.Error(), "no app no-such-app") {
		t.Fatalf("peer RPC with the cluster key: %v, want the handler's not found", err)
	}
	if err := call(wrong, "intruder"); err == nil || strings.Contains(err.Error(), "no app") {
		t.Fatalf("peer RPC with the wrong key: %v, want a refused handshake", err)
	}
	waitFor(t, 5*time.Second, "n1 logs the refused peer handshake", func() (bool, string) {
		return strings.Contains(n1.log(), "peer TLS handshake failed"), "not logged"
	})

	for _, d := range []*daemon{n1, n2} {
		m, err := memberStates(d)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := m["intruder"]; ok || len(m) != 2 {
			t.Errorf("%s lists %v", d.Name, m)
		}
		st, err := d.Client.Status(ctxT(t))
		if err != nil || !st.Quorum || st.Members != 2 {
			t.Errorf("%s status %+v, %v", d.Name, st, err)
		}
	}
}

// runApp starts a pageapp under the name with the CLI on node d and waits
// until it answers on addr.
func runApp(t *testing.T, c *testCluster, d *daemon, name, addr string, replicas int, interval time.Duration) {
	t.Helper()
	args := append([]string{"run", name, "--replicas", fmt.Sprint(replicas), "--interval", interval.String(), "--"}, pageappArgs(addr)...)
	out := c.mustCLI(d.Sock, args...)
	if want := name + " running on " + d.Name; !strings.Contains(out, want) {
		t.Fatalf("doppel run printed %q, want %q", out, want)
	}
	waitFor(t, 10*time.Second, name+" answers on "+addr, func() (bool, string) {
		st, err := queryApp(addr)
		if err != nil {
			return false, err.Error()
		}
		return st.OK, fmt.Sprintf("%+v", st)
	})
}

// opInfo returns the app as its OP describes it (clone health included),
// asking node d.
func opInfo(t *testing.T, d *daemon, name string) (api.AppInfo, error) {
	det, err := appOn(t, d, name)
	return det.AppInfo, err
}

// restoreHere restores the app with the CLI on node d and returns the
// epoch it restored.
func restoreHere(t *testing.T, c *testCluster, d *daemon, name string) uint64 {
	t.Helper()
	out := c.mustCLI(d.Sock, "restore", name)
	var epoch, term uint64
	var state, op string
	if _, err := fmt.Sscanf(strings.TrimSpace(out), name+" %s on %s (term %d, epoch %d)", &state, &op, &term, &epoch); err != nil {
		t.Fatalf("doppel restore printed %q: %v", out, err)
	}
	if state != api.AppRunning || op != d.Name || epoch == 0 {
		t.Fatalf("doppel restore on %s printed %q", d.Name, out)
	}
	return epoch
}

// stopApp stops the app with the CLI and waits until it no longer answers.
func stopApp(t *testing.T, c *testCluster, d *daemon, name, addr string) {
	t.Helper()
	if out := c.mustCLI(d.Sock, "stop", name); strings.TrimSpace(out) != name+" stopped" {
		t.Fatalf("doppel stop printed %q", out)
	}
	waitFor(t, 10*time.Second, name+" is killed", func() (bool, string) {
		return appGone(addr), "still answers on " + addr
	})
	// ls shows it stopped, with no OP.
	out := c.mustCLI(d.Sock, "ls")
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[0] == name && (f[1] != api.AppStopped || f[2] != "-") {
			t.Fatalf("doppel ls after stop:\n%s", out)
		}
	}
}

// TestE2EReplicateAndRestore: an app with two clones reaches in-sync on
// both; after ten epochs of an app that dirties pages, each clone in turn
// restores the newest acknowledged epoch (the OP stopped first) and the app
// resumes there with exactly the memory it had.
func TestE2EReplicateAndRestore(t *testing.T) {
	c := newCluster(t)
	n1 := c.start()
	c.start()
	c.start()
	name, addr := c.newApp("pages"), c.appAddr(0)

	start := time.Now()
	runApp(t, c, n1, name, addr, 2, 500*time.Millisecond)
	took := waitFor(t, 30*time.Second, "both clones in-sync", func() (bool, string) {
		info, err := opInfo(t, n1, name)
		if err != nil {
			return false, err.Error()
		}
		return clonesInSync(info, 1)
	})
	t.Logf("measured: both clones in-sync %s after doppel run (%s after the app answered)",
		time.Since(start).Round(time.Millisecond), took.Round(time.Millisecond))

	first, err := queryApp(addr)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "ten epochs acknowledged by both clones", func() (bool, string) {
		info, err := opInfo(t, n1, name)
		if err != nil {
			return false, err.Error()
		}
		return clonesInSync(info, 10)
	})
	eps, err := n1.Client.Epochs(ctxT(t), name)
	if err != nil || len(eps) == 0 {
		t.Fatalf("epochs: %v %v", eps, err)
	}
	for _, e := range eps {
		if e.Parent != 0 && e.PagesChanged == 0 {
			t.Errorf("epoch %d: no page changed although the app dirties pages every tick", e.Epoch)
		}
	}

	// Freeze the app's state, then take one more epoch: it is the newest
	// and both clones acknowledge it before checkpoint returns.
	if ans, err := askApp(addr, "PAUSE"); err != nil || !strings.HasPrefix(ans, "paused ") {
		t.Fatalf("PAUSE: %q %v", ans, err)
	}
	want, err := queryApp(addr)
	if err != nil || !want.OK || want.Counter <= first.Counter {
		t.Fatalf("state before the last epoch %+v (%v); first %+v", want, err, first)
	}
	out := c.mustCLI(n1.Sock, "checkpoint", name)
	var last uint64
	if _, err := fmt.Sscanf(out, name+" epoch %d:", &last); err != nil || last < 10 {
		t.Fatalf("doppel checkpoint printed %q (%v)", out, err)
	}
	info, err := opInfo(t, n1, name)
	if err != nil {
		t.Fatal(err)
	}
	if ok, desc := clonesInSync(info, last); !ok {
		t.Fatalf("after checkpoint %d: %s", last, desc)
	}
	cloneA, cloneB := info.Clones[0].Node, info.Clones[1].Node
	byName := map[string]*daemon{}
	for _, d := range c.nodes {
		byName[d.Name] = d
	}
	stopApp(t, c, n1, name, addr)

	// The cluster state records each clone's newest acknowledged epoch.
	acked := map[string]uint64{}
	ai, err := byName[cloneA].Client.App(ctxT(t), name)
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range ai.Clones {
		acked[cl.Node] = cl.AckedEpoch
	}
	if acked[cloneA] < last || acked[cloneB] < last {
		t.Fatalf("acknowledged epochs after stop %v, want at least %d", acked, last)
	}

	epA := restoreHere(t, c, byName[cloneA], name)
	if epA != acked[cloneA] {
		t.Errorf("%s restored epoch %d, its newest acknowledged epoch is %d", cloneA, epA, acked[cloneA])
	}
	got, err := queryApp(addr)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("restored on %s from epoch %d: state %+v, want %+v", cloneA, epA, got, want)
	}
	t.Logf("%s restored epoch %d: counter %d, buffer %s…, memory matches its replay", cloneA, epA, got.Counter, got.Sum[:12])
	out = c.mustCLI(n1.Sock, "ls")
	if !strings.Contains(out, name+"  running  "+cloneA) {
		t.Errorf("doppel ls after the restore on %s:\n%s", cloneA, out)
	}

	stopApp(t, c, byName[cloneA], name, addr)
	epB := restoreHere(t, c, byName[cloneB], name)
	got, err = queryApp(addr)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("restored on %s from epoch %d: state %+v, want %+v", cloneB, epB, got, want)
	}
	t.Logf("%s restored epoch %d: same state", cloneB, epB)

	// The restored app lives on: it ticks again once resumed.
	if ans, err := askApp(addr, "RESUME"); err != nil || !strings.HasPrefix(ans, "resumed ") {
		t.Fatalf("RESUME: %q %v", ans, err)
	}
	waitFor(t, 10*time.Second, "the restored app ticks", func() (bool, string) {
		st, err := queryApp(addr)
		if err != nil {
			return false, err.Error()
		}
		return st.OK && st.Counter > want.Counter+5, fmt.Sprintf("%+v", st)
	})
}

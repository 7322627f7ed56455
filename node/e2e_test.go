package node

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
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
	// ls shows it stopped, with no OP: at once on the node that stopped it
	// (it waits for its own copy of the state), soon on every node.
	stopped := func(n *daemon) (bool, string) {
		out := c.mustCLI(n.Sock, "ls")
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 2 && f[0] == name {
				return f[1] == api.AppStopped && f[2] == "-", out
			}
		}
		return false, out
	}
	if ok, out := stopped(d); !ok {
		t.Fatalf("doppel ls on %s right after doppel stop:\n%s", d.Name, out)
	}
	for _, n := range c.nodes {
		if n.alive() {
			waitFor(t, 5*time.Second, "doppel ls on "+n.Name+" shows "+name+" stopped", func() (bool, string) { return stopped(n) })
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

	// The restored app is replicated again, from its new OP: cloneB
	// acknowledges an epoch taken on cloneA.
	waitFor(t, 20*time.Second, cloneA+"'s clones acknowledge an epoch it took", func() (bool, string) {
		info, err := opInfo(t, byName[cloneA], name)
		if err != nil {
			return false, err.Error()
		}
		if info.OP != cloneA {
			return false, "OP is " + info.OP
		}
		return clonesInSync(info, epA+1)
	})

	stopApp(t, c, byName[cloneA], name, addr)
	epB := restoreHere(t, c, byName[cloneB], name)
	if epB <= epA {
		t.Errorf("%s restored epoch %d, not one %s took after epoch %d", cloneB, epB, cloneA, epA)
	}
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

// TestE2ECloneNodeFailure: when a node holding a clone fails (SIGKILL of
// its daemon), the clone is re-placed on the spare node, which catches up,
// and the app keeps running with its epochs acknowledged.
func TestE2ECloneNodeFailure(t *testing.T) {
	c := newCluster(t)
	n1 := c.start()
	for range 3 {
		c.start()
	}
	name, addr := c.newApp("survivor"), c.appAddr(0)
	runApp(t, c, n1, name, addr, 2, 500*time.Millisecond)
	waitFor(t, 30*time.Second, "both clones in-sync", func() (bool, string) {
		info, err := opInfo(t, n1, name)
		if err != nil {
			return false, err.Error()
		}
		return clonesInSync(info, 2)
	})
	info, err := opInfo(t, n1, name)
	if err != nil {
		t.Fatal(err)
	}
	victim, kept := info.Clones[0].Node, info.Clones[1].Node
	var spare string
	byName := map[string]*daemon{}
	for _, d := range c.nodes {
		byName[d.Name] = d
		if d.Name != "n1" && d.Name != victim && d.Name != kept {
			spare = d.Name
		}
	}
	before, err := queryApp(addr)
	if err != nil {
		t.Fatal(err)
	}
	keptAcked := info.Clones[1].AckedEpoch

	start := time.Now()
	byName[victim].kill9(t)
	took := waitFor(t, 15*time.Second, "the clone moves from "+victim+" to "+spare, func() (bool, string) {
		info, err := opInfo(t, n1, name)
		if err != nil {
			return false, err.Error()
		}
		var nodes []string
		for _, cl := range info.Clones {
			nodes = append(nodes, cl.Node)
		}
		got := strings.Join(nodes, ",")
		return got == kept+","+spare, "clones " + got
	})
	t.Logf("measured: clone re-placed from %s to %s %s after the kill", victim, spare, took.Round(time.Millisecond))
	waitFor(t, 20*time.Second, spare+" in-sync", func() (bool, string) {
		info, err := opInfo(t, n1, name)
		if err != nil {
			return false, err.Error()
		}
		return clonesInSync(info, 1)
	})
	t.Logf("measured: new clone %s in-sync %s after the kill", spare, time.Since(start).Round(time.Millisecond))

	// The app kept running, and epochs keep being acknowledged by both
	// clones, the old one without a gap.
	waitFor(t, 20*time.Second, "three more epochs acknowledged by both clones", func() (bool, string) {
		info, err := opInfo(t, n1, name)
		if err != nil {
			return false, err.Error()
		}
		return clonesInSync(info, keptAcked+3)
	})
	after, err := queryApp(addr)
	if err != nil {
		t.Fatal(err)
	}
	if !after.OK || after.Seed != before.Seed || after.Counter <= before.Counter {
		t.Errorf("app before the failure %+v, after %+v", before, after)
	}
	// The spare holds the epochs it acknowledged.
	eps, err := byName[spare].Client.Epochs(ctxT(t), name)
	if err != nil || len(eps) == 0 {
		t.Errorf("epochs on %s: %v %v", spare, eps, err)
	}
	// The cluster state agrees: the raft record of acknowledgements.
	st, err := byName[kept].Client.Nodes(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st {
		hasClone := strings.Contains(","+strings.Join(n.Clones, ",")+",", ","+name+",")
		if want := n.Name == kept || n.Name == spare; hasClone != want {
			t.Errorf("node %s (%s) lists clones %v", n.Name, n.State, n.Clones)
		}
	}
}

// eventLog collects a node's event stream in the background.
type eventLog struct {
	mu     sync.Mutex
	events []api.Event
	err    error
	done   chan struct{}
}

func watchEvents(t *testing.T, d *daemon) *eventLog {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := d.Client.Events(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	l := &eventLog{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			ev, err := w.Next()
			l.mu.Lock()
			if err != nil {
				l.err = err
				l.mu.Unlock()
				return
			}
			l.events = append(l.events, ev)
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		w.Close()
		<-l.done
	})
	return l
}

func (l *eventLog) snapshot() []api.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]api.Event(nil), l.events...)
}

// checkEpochEvents checks the events of one app's checkpoints: sequence
// numbers grow; each epoch runs PSB, RM, SRM, PRM (each started then
// ended), is committed, then each clone gets XFER, ACK and an ack, all
// before the next epoch starts. It returns the epochs seen complete.
func checkEpochEvents(events []api.Event, app string, clones []string) ([]uint64, error) {
	var seq uint64
	type step struct {
		kind, phase string
		end         bool
		clone       string
	}
	var order []uint64
	byEpoch := map[uint64][]step{}
	for _, ev := range events {
		if ev.Seq <= seq {
			return nil, fmt.Errorf("event %d after %d: %+v", ev.Seq, seq, ev)
		}
		seq = ev.Seq
		if ev.App != app || (ev.Kind != api.KindPhase && ev.Kind != api.KindEpoch && ev.Kind != api.KindAck) {
			continue
		}
		s := step{kind: ev.Kind, phase: ev.Phase, end: ev.End}
		switch {
		case ev.Kind == api.KindAck:
			s.clone = ev.Node
		case ev.Phase == "XFER" || ev.Phase == "ACK":
			s.clone, _ = ev.Fields["clone"].(string)
		}
		if len(order) == 0 || order[len(order)-1] != ev.Epoch {
			if _, seen := byEpoch[ev.Epoch]; seen {
				return nil, fmt.Errorf("epoch %d: events resume after those of epoch %d began", ev.Epoch, order[len(order)-1])
			}
			order = append(order, ev.Epoch)
		}
		byEpoch[ev.Epoch] = append(byEpoch[ev.Epoch], s)
	}
	var complete []uint64
	for i, e := range order {
		steps := byEpoch[e]
		if len(steps) == 0 || steps[0] != (step{kind: api.KindPhase, phase: "PSB"}) {
			continue // joined the stream midway
		}
		if i == len(order)-1 {
			continue // may still be under way
		}
		var want []step
		for _, p := range []string{"PSB", "RM", "SRM", "PRM"} {
			want = append(want, step{kind: api.KindPhase, phase: p}, step{kind: api.KindPhase, phase: p, end: true})
		}
		want = append(want, step{kind: api.KindEpoch})
		if len(steps) != len(want)+3*len(clones) {
			return nil, fmt.Errorf("epoch %d: %d events, want %d: %+v", e, len(steps), len(want)+3*len(clones), steps)
		}
		for j, w := range want {
			if steps[j] != w {
				return nil, fmt.Errorf("epoch %d: event %d is %+v, want %+v (all: %+v)", e, j, steps[j], w, steps)
			}
		}
		for _, cl := range clones {
			var got []step
			for _, s := range steps[len(want):] {
				if s.clone == cl {
					got = append(got, s)
				}
			}
			wantCl := []step{{api.KindPhase, "XFER", true, cl}, {api.KindPhase, "ACK", true, cl}, {api.KindAck, "", false, cl}}
			if !slices.Equal(got, wantCl) {
				return nil, fmt.Errorf("epoch %d, clone %s: %+v, want %+v", e, cl, got, wantCl)
			}
		}
		if len(complete) > 0 && complete[len(complete)-1] != e-1 {
			return nil, fmt.Errorf("epoch %d follows epoch %d", e, complete[len(complete)-1])
		}
		complete = append(complete, e)
	}
	return complete, nil
}

// TestE2EAPI exercises every endpoint of the local API with the typed
// client against real daemons: status, nodes, run, apps, app detail (with
// the OP's resource graph, also through another node), epochs, checkpoint
// (local and forwarded), the event stream, export, stop, restore, rm and
// import.
func TestE2EAPI(t *testing.T) {
	c := newCluster(t)
	n1 := c.start()
	for range 3 {
		c.start()
	}
	byName := map[string]*daemon{}
	for _, d := range c.nodes {
		byName[d.Name] = d
	}
	waitFor(t, 15*time.Second, "four raft voters", func() (bool, string) {
		ns, err := n1.Client.Nodes(ctxT(t))
		if err != nil {
			return false, err.Error()
		}
		voters := 0
		for _, n := range ns {
			if n.Voter {
				voters++
			}
		}
		return voters == 4, fmt.Sprintf("%+v", ns)
	})

	// GET /v1/status on every node.
	for _, d := range c.nodes {
		st, err := d.Client.Status(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		if st.Node != d.Name || st.Leader != "n1" || !st.Quorum || st.Members != 4 || st.Apps != 0 || st.Version == "" {
			t.Errorf("status of %s: %+v", d.Name, st)
		}
	}
	// GET /v1/nodes.
	ns, err := c.nodes[1].Client.Nodes(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(ns) != 4 {
		t.Fatalf("nodes: %+v", ns)
	}
	for i, n := range ns {
		d := c.nodes[i]
		if n.Name != d.Name || n.State != api.NodeAlive || n.Role != RoleWorker || n.Self != (d.Name == "n2") ||
			n.Leader != (d.Name == "n1") || !n.Voter || n.Addr != d.IP+":7948" || n.MemTotal == 0 || n.CRIU == "" ||
			len(n.Apps) != 0 || len(n.Clones) != 0 {
			t.Errorf("node %d: %+v", i, n)
		}
	}

	events := watchEvents(t, n1)

	// POST /v1/apps.
	name, addr := c.newApp("api"), c.appAddr(0)
	req := api.RunRequest{Name: name, Args: pageappArgs(addr), Dir: c.dir, Replicas: 2, Interval: api.Duration(500 * time.Millisecond)}
	info, err := n1.Client.Run(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != name || info.OP != "n1" || info.Term != 1 || info.Replicas != 2 || len(info.Clones) != 2 {
		t.Errorf("run answered %+v", info)
	}
	if _, err := c.nodes[2].Client.Run(ctxT(t), req); !errors.Is(err, api.ErrConflict) {
		t.Errorf("second run of %s: %v, want conflict", name, err)
	}
	bad := req
	bad.Name = "Not A Name"
	if _, err := n1.Client.Run(ctxT(t), bad); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("run with a bad name: %v, want bad request", err)
	}
	waitFor(t, 30*time.Second, "both clones in-sync", func() (bool, string) {
		info, err := opInfo(t, n1, name)
		if err != nil {
			return false, err.Error()
		}
		return clonesInSync(info, 1)
	})

	// GET /v1/apps, from a node that is not the OP.
	apps, err := c.nodes[3].Client.Apps(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(apps) != 1 || apps[0].Name != name || apps[0].OP != "n1" || apps[0].State != api.AppRunning ||
		len(apps[0].Clones) != 2 || time.Duration(apps[0].Interval) != 500*time.Millisecond ||
		!slices.Equal(apps[0].Args, req.Args) || apps[0].Pid == 0 {
		t.Fatalf("apps: %+v", apps)
	}
	clones := []string{apps[0].Clones[0].Node, apps[0].Clones[1].Node}
	var spare *daemon
	for _, d := range c.nodes[1:] {
		if !slices.Contains(clones, d.Name) {
			spare = d
		}
	}

	// GET /v1/apps/{name}: the OP's resource graph, on the OP and through
	// another node.
	for _, d := range []*daemon{n1, spare} {
		det, err := d.Client.App(ctxT(t), name)
		if err != nil {
			t.Fatal(err)
		}
		var g struct {
			Root  int `json:"root"`
			Nodes []struct {
				Kind  string `json:"kind"`
				Label string `json:"label"`
			} `json:"nodes"`
		}
		if err := json.Unmarshal(det.Graph, &g); err != nil {
			t.Fatalf("graph from %s: %v: %.200s", d.Name, err, det.Graph)
		}
		kinds := map[string]int{}
		for _, n := range g.Nodes {
			kinds[n.Kind]++
		}
		if g.Root != det.Pid || det.Pid == 0 || kinds["process"] < 2 || kinds["tcp"] < 1 {
			t.Errorf("graph from %s: root %d (pid %d), node kinds %v", d.Name, g.Root, det.Pid, kinds)
		}
		if det.OP != "n1" || det.State != api.AppRunning || len(det.Epochs) == 0 {
			t.Errorf("detail from %s: %+v", d.Name, det.AppInfo)
		}
	}

	// POST /v1/apps/{name}/checkpoint, forwarded to the OP and on it.
	ep1, err := spare.Client.Checkpoint(ctxT(t), name)
	if err != nil {
		t.Fatal(err)
	}
	ep2, err := n1.Client.Checkpoint(ctxT(t), name)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []api.EpochInfo{ep1, ep2} {
		if e.App != name || e.Epoch == 0 || e.Parent == 0 || e.Term != 1 || e.Phases.PRM <= 0 || e.Phases.PSB <= 0 ||
			e.PagesScanned == 0 || e.PagesChanged == 0 || e.BytesStored == 0 {
			t.Errorf("checkpoint answered %+v", e)
		}
	}
	if ep2.Epoch <= ep1.Epoch {
		t.Errorf("checkpoint epochs %d then %d", ep1.Epoch, ep2.Epoch)
	}

	// GET /v1/apps/{name}/epochs on the OP and on a clone: both hold the
	// epoch just acknowledged.
	for _, d := range []*daemon{n1, byName[clones[0]]} {
		eps, err := d.Client.Epochs(ctxT(t), name)
		if err != nil {
			t.Fatal(err)
		}
		var nums []uint64
		for _, e := range eps {
			nums = append(nums, e.Epoch)
			if len(e.Manifest) == 0 || e.App != name {
				t.Errorf("epoch from %s: %+v", d.Name, e)
			}
		}
		if !slices.IsSorted(nums) || !slices.Contains(nums, ep2.Epoch) {
			t.Errorf("epochs on %s: %v, want %d among them", d.Name, nums, ep2.Epoch)
		}
	}

	// GET /v1/events: phase events in order, for consecutive epochs.
	var complete []uint64
	waitFor(t, 20*time.Second, "three complete epochs in the event stream", func() (bool, string) {
		var err error
		complete, err = checkEpochEvents(events.snapshot(), name, clones)
		if err != nil {
			t.Fatal(err)
		}
		return len(complete) >= 3, fmt.Sprintf("complete epochs %v", complete)
	})
	t.Logf("event stream: epochs %v complete and in order", complete)

	// POST /v1/apps/{name}/export.
	before, err := queryApp(addr)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(c.dir, name+".doppel")
	ex, err := n1.Client.Export(ctxT(t), name, api.ExportRequest{Path: archive})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(archive); err != nil || ex.App != name || ex.Epoch < ep2.Epoch || ex.Bytes != fi.Size() || ex.Bytes == 0 {
		t.Errorf("export answered %+v (file: %v)", ex, err)
	}

	// POST /v1/apps/{name}/stop, through a clone.
	if err := byName[clones[1]].Client.Stop(ctxT(t), name); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, name+" is killed", func() (bool, string) {
		return appGone(addr), "still answers"
	})
	// Every node's copy of the cluster state soon has it stopped.
	for _, d := range c.nodes {
		waitFor(t, 5*time.Second, d.Name+" sees "+name+" stopped", func() (bool, string) {
			det, err := d.Client.App(ctxT(t), name)
			return err == nil && det.State == api.AppStopped && det.OP == "" && det.Term == 2 && len(det.Clones) == 2,
				fmt.Sprintf("%+v %v", det.AppInfo, err)
		})
	}
	if _, err := n1.Client.Checkpoint(ctxT(t), name); !errors.Is(err, api.ErrConflict) {
		t.Errorf("checkpoint of a stopped app: %v, want conflict", err)
	}

	// POST /v1/apps/{name}/restore: not another epoch than the newest, not
	// on a node without epochs, yes on a clone.
	if _, err := byName[clones[0]].Client.Restore(ctxT(t), name, 1, false); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("restore of epoch 1: %v, want bad request", err)
	}
	if _, err := spare.Client.Restore(ctxT(t), name, 0, false); !errors.Is(err, api.ErrConflict) {
		t.Errorf("restore on %s, which holds no epoch: %v, want conflict", spare.Name, err)
	}
	ri, err := byName[clones[0]].Client.Restore(ctxT(t), name, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	if ri.OP != clones[0] || ri.Term != 3 {
		t.Errorf("restore answered %+v", ri)
	}
	waitFor(t, 20*time.Second, name+" runs on "+clones[0], func() (bool, string) {
		st, err := queryApp(addr)
		if err != nil {
			return false, err.Error()
		}
		return st.OK && st.Seed == before.Seed && st.Counter >= before.Counter, fmt.Sprintf("%+v", st)
	})
	if _, err := n1.Client.Restore(ctxT(t), name, 0, false); !errors.Is(err, api.ErrConflict) {
		t.Errorf("restore of a running app: %v, want conflict", err)
	}

	// DELETE /v1/apps/{name}: the app leaves the cluster and its OP kills it.
	if err := n1.Client.Remove(ctxT(t), name); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, name+" is killed after rm", func() (bool, string) {
		return appGone(addr), "still answers"
	})
	if apps, err := n1.Client.Apps(ctxT(t)); err != nil || len(apps) != 0 {
		t.Errorf("apps after rm: %+v %v", apps, err)
	}
	if _, err := spare.Client.App(ctxT(t), name); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("app after rm: %v, want not found", err)
	}

	// POST /v1/import on a node that never held the app (a newcomer: the
	// others may all have held a clone of it), and start it there.
	spare = c.start()
	spareEvents := watchEvents(t, spare)
	im, err := spare.Client.Import(ctxT(t), api.ImportRequest{Path: archive, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	if im.App != name || im.Epoch != ex.Epoch || !im.Started {
		t.Errorf("import answered %+v", im)
	}
	waitFor(t, 20*time.Second, name+" runs on "+spare.Name+" from the archive", func() (bool, string) {
		st, err := queryApp(addr)
		if err != nil {
			return false, err.Error()
		}
		return st.OK && st.Seed == before.Seed && st.Counter >= before.Counter, fmt.Sprintf("%+v", st)
	})
	// Its terms go on above the removed app's last (3): epochs that app
	// left on a node down at the rm are of an older term.
	waitFor(t, 10*time.Second, name+" running on "+spare.Name+" in term 4", func() (bool, string) {
		det, err := n1.Client.App(ctxT(t), name)
		return err == nil && det.State == api.AppRunning && det.OP == spare.Name && det.Term == 4, fmt.Sprintf("%+v %v", det.AppInfo, err)
	})
	if _, err := n1.Client.Import(ctxT(t), api.ImportRequest{Path: archive}); !errors.Is(err, api.ErrConflict) {
		t.Errorf("second import: %v, want conflict", err)
	}

	// Stop and remove through the CLI. Each node's event stream carries
	// what happened on it.
	c.mustCLI(n1.Sock, "stop", name)
	c.mustCLI(n1.Sock, "rm", name)
	for _, w := range []struct {
		d    *daemon
		l    *eventLog
		want []string
	}{
		{n1, events, []string{name + " started on n1", "export ", name + " stopped on n1"}},
		{spare, spareEvents, []string{name + " imported from " + archive, name + " restored on " + spare.Name, name + " stopped on " + spare.Name}},
	} {
		waitFor(t, 10*time.Second, "app events on "+w.d.Name, func() (bool, string) {
			var msgs []string
			for _, ev := range w.l.snapshot() {
				if ev.App == name && ev.Kind == api.KindApp {
					msgs = append(msgs, ev.Message)
				}
			}
			all := strings.Join(msgs, "\n")
			for _, s := range w.want {
				if !strings.Contains(all, s) {
					return false, fmt.Sprintf("no %q in:\n%s", s, all)
				}
			}
			return true, ""
		})
	}
}

// TestE2EBadInput: a second daemon on a state directory or socket in use
// is refused with a clear error and harms nothing; requests for an unknown
// app answer not found; garbage sent to the peer and raft ports is refused
// and logged and the cluster carries on; running an existing name is a
// conflict; the CLI without a daemon says, in one line, how to start one.
func TestE2EBadInput(t *testing.T) {
	c := newCluster(t)
	n1, n2 := c.start(), c.start()
	name, addr := c.newApp("bad"), c.appAddr(0)
	runApp(t, c, n1, name, addr, 1, 300*time.Millisecond)

	// A second daemon on n1's socket, and one on n1's state directory.
	for _, tc := range []struct {
		what, stateDir, sock, want string
	}{
		{"socket", c.dir + "/dup-sock", n1.Sock, "another doppel node is running on " + n1.Sock},
		{"state directory", n1.StateDir, c.dir + "/dup-state.sock", "state directory " + n1.StateDir + " is in use by another doppel node"},
	} {
		args := c.nodeArgs("dup", c.ip(7), tc.stateDir, tc.sock, true)
		d := c.spawn("dup", c.ip(7), tc.stateDir, tc.sock, args)
		err := d.wait(20 * time.Second)
		d.done = true
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("second daemon on the %s: %v, want exit status 1\n%s", tc.what, err, d.logTail(20))
		}
		if log := d.log(); !strings.Contains(log, tc.want) {
			t.Errorf("second daemon on the %s does not say %q:\n%s", tc.what, tc.want, log)
		}
		if _, err := n1.Client.Status(ctxT(t)); err != nil {
			t.Fatalf("n1 after a second daemon on its %s: %v", tc.what, err)
		}
	}
	if m, err := memberStates(n1); err != nil || len(m) != 2 {
		t.Errorf("members after the refused daemons: %v %v", m, err)
	}

	// An unknown app: not found from every endpoint that names one.
	ctx := ctxT(t)
	cl := n2.Client
	notFound := map[string]error{}
	_, notFound["app"] = cl.App(ctx, "no-such-app")
	_, notFound["epochs"] = cl.Epochs(ctx, "no-such-app")
	_, notFound["checkpoint"] = cl.Checkpoint(ctx, "no-such-app")
	_, notFound["restore"] = cl.Restore(ctx, "no-such-app", 0, false)
	notFound["stop"] = cl.Stop(ctx, "no-such-app")
	notFound["rm"] = cl.Remove(ctx, "no-such-app")
	_, notFound["export"] = cl.Export(ctx, "no-such-app", api.ExportRequest{Path: c.dir + "/x.doppel"})
	for what, err := range notFound {
		if !errors.Is(err, api.ErrNotFound) || !strings.Contains(err.Error(), "no-such-app") {
			t.Errorf("%s of an unknown app: %v, want not found naming it", what, err)
		}
	}
	code, _, errOut := c.cli(n1.Sock, "stop", "no-such-app")
	if code != 1 || !strings.Contains(errOut, "no app no-such-app") || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
		t.Errorf("doppel stop no-such-app: exit %d, stderr %q", code, errOut)
	}

	// Garbage on the peer and raft ports of n1.
	info, err := opInfo(t, n1, name)
	if err != nil {
		t.Fatal(err)
	}
	ackedBefore := info.Clones[0].AckedEpoch
	junk := make([]byte, 4096)
	for i := range junk {
		junk[i] = byte(i*7 + 3)
	}
	for _, port := range []string{"7948", "7947"} {
		conn, err := net.DialTimeout("tcp", n1.IP+":"+port, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write(junk)
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 512)
		for {
			// The node answers with at most a TLS alert, then closes.
			if _, err := conn.Read(buf); err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Errorf("port %s: the node kept a connection of garbage open", port)
				}
				break
			}
		}
		conn.Close()
	}
	waitFor(t, 5*time.Second, "n1 logs the refused garbage", func() (bool, string) {
		log := n1.log()
		return strings.Contains(log, "peer TLS handshake failed") && strings.Contains(log, "raft: refused connection"), "not logged"
	})
	// Nothing lost: the app runs and its epochs keep being acknowledged.
	waitFor(t, 20*time.Second, "epochs acknowledged after the garbage", func() (bool, string) {
		info, err := opInfo(t, n1, name)
		if err != nil {
			return false, err.Error()
		}
		return clonesInSync(info, ackedBefore+3)
	})
	if st, err := queryApp(addr); err != nil || !st.OK {
		t.Errorf("app after the garbage: %+v %v", st, err)
	}

	// doppel run of an existing name: a conflict, from the OP and from
	// another node.
	for _, d := range []*daemon{n1, n2} {
		args := append([]string{"run", name, "--"}, pageappArgs(c.appAddr(1))...)
		code, out, errOut := c.cli(d.Sock, args...)
		if code != 1 || !strings.Contains(errOut, "conflict: app "+name+" already exists") || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
			t.Errorf("doppel run of an existing name on %s: exit %d, stdout %q, stderr %q", d.Name, code, out, errOut)
		}
	}

	// The CLI without a daemon: exit status 1 and one line saying how to
	// start one.
	nowhere := c.dir + "/nowhere/api.sock"
	for _, args := range [][]string{{"status"}, {"ls"}, {"stop", name}} {
		code, out, errOut := c.cli(nowhere, args...)
		want := "doppel: no doppel daemon at " + nowhere + " (start one with: doppel node ..., or pass --socket)\n"
		if code != 1 || errOut != want || out != "" {
			t.Errorf("doppel %v without a daemon: exit %d, stdout %q, stderr %q; want exit 1 and %q", args, code, out, errOut, want)
		}
	}
}

// TestE2EMetrics: a node started with --metrics exposes the epoch counter
// and the phase histograms once an epoch was taken.
func TestE2EMetrics(t *testing.T) {
	c := newCluster(t)
	metricsAddr := c.ip(0) + ":9464"
	n1 := c.start("--metrics", metricsAddr)
	get := func() string {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /metrics: %s %v", resp.Status, err)
		}
		return string(b)
	}
	name := c.newApp("metrics")
	if body := get(); strings.Contains(body, "doppel_epochs_total{") {
		t.Fatalf("epochs counted before any app ran:\n%s", body)
	}
	info, err := n1.Client.Run(ctxT(t), api.RunRequest{Name: name, Args: pageappArgs(c.appAddr(0)), Dir: c.dir, Interval: api.Duration(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if info.Replicas != 0 || len(info.Clones) != 0 {
		t.Errorf("run answered %+v", info)
	}
	waitFor(t, 20*time.Second, name+" runs", func() (bool, string) {
		d, err := appOn(t, n1, name)
		return err == nil && d.State == api.AppRunning, fmt.Sprintf("%+v %v", d.AppInfo, err)
	})
	for range 2 {
		if _, err := n1.Client.Checkpoint(ctxT(t), name); err != nil {
			t.Fatal(err)
		}
	}
	body := get()
	for _, want := range []string{
		`doppel_epochs_total{app="` + name + `"} 2`,
		`doppel_phase_seconds_count{phase="PSB"} 2`,
		`doppel_phase_seconds_count{phase="PRM"} 2`,
		`doppel_phase_seconds_bucket{phase="PRM",le="+Inf"} 2`,
		`doppel_pages_changed_total{app="` + name + `"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}

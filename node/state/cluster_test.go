package state

import (
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// electionBudget is the deadline for a fast-preset election in these tests:
// generous, so a loaded machine does not fail them; the time it took is
// logged (typically well under a second on loopback).
const electionBudget = 10 * time.Second

func TestSingleNodeBootstrapApply(t *testing.T) {
	log, _ := newTestLogger(t)
	cfg := testConfig(t, "n1", log, nil)
	cfg.Bootstrap = true
	start := time.Now()
	c := openTest(t, cfg)
	waitLeader(t, electionBudget, c)
	t.Logf("single node elected itself in %s", time.Since(start).Round(time.Millisecond))

	if !c.HasQuorum() {
		t.Fatal("a single-voter leader has no quorum")
	}
	ch, stop := c.Watch()
	defer stop()

	res, err := c.Apply(ctxT(t, 5*time.Second), putApp("web"))
	if err != nil {
		t.Fatal(err)
	}
	app, ok := res.(*App)
	if !ok || app.Spec.Name != "web" || app.Created.IsZero() {
		t.Fatalf("result %#v", res)
	}
	st := c.State()
	if st.Apps["web"] == nil || st.Index == 0 {
		t.Fatalf("state after apply: %+v", st)
	}
	// Apply returns after the local FSM applied: the watcher holds it now.
	waitFor(t, 10*time.Second, "watch to show the app", func() bool {
		select {
		case s := <-ch:
			return s.Index == st.Index && s.Apps["web"] != nil
		default:
			return false
		}
	})

	if _, err := c.Apply(ctxT(t, 5*time.Second), putApp("web")); !errors.Is(err, ErrExists) {
		t.Fatalf("second put: %v", err)
	}
	if _, err := c.Apply(ctxT(t, 5*time.Second), Command{Type: CmdAck, Name: "web"}); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("malformed: %v", err)
	}
	if err := c.Barrier(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	servers, err := c.Servers()
	if err != nil || len(servers) != 1 || servers[0] != (Server{Name: "n1", Addr: c.Addr(), Voter: true}) {
		t.Fatalf("servers %+v, %v", servers, err)
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, "raft.db")); err != nil {
		t.Fatal(err)
	}
}

// startCluster starts n nodes: the first bootstraps, the others join as
// voters. It returns them with the leader first. All are shut down when
// the test ends. Joining retries on whichever node leads if leadership
// moves meanwhile (AddVoter is idempotent).
func startCluster(t *testing.T, n int, useTLS bool) []*Cluster {
	t.Helper()
	log, _ := newTestLogger(t)
	tlsCfg := testTLSOrNil(t, useTLS)
	cs := make([]*Cluster, n)
	for i := range cs {
		cfg := testConfig(t, "n"+string(rune('1'+i)), log, tlsCfg)
		cfg.Bootstrap = i == 0
		cs[i] = openTest(t, cfg)
	}
	for i := 1; i < n; i++ {
		deadline := time.Now().Add(10 * time.Second)
		for {
			leader := waitLeader(t, electionBudget, cs[:i]...)
			err := leader.AddVoter(ctxT(t, 5*time.Second), cs[i].Name(), cs[i].Addr())
			if err == nil {
				break
			}
			if !errors.Is(err, ErrNotLeader) || time.Now().After(deadline) {
				t.Fatalf("add voter %s: %v", cs[i].Name(), err)
			}
			t.Logf("add voter %s: %v; retrying", cs[i].Name(), err)
		}
	}
	leader := waitLeader(t, electionBudget, cs...)
	out := []*Cluster{leader}
	for _, c := range cs {
		if c != leader {
			out = append(out, c)
		}
	}
	return out
}

func testTLSOrNil(t *testing.T, use bool) *tls.Config {
	if !use {
		return nil
	}
	return testTLS(t)
}

func TestThreeNodesReplicate(t *testing.T) {
	cs := startCluster(t, 3, true)
	leader := cs[0]
	ctx := ctxT(t, 30*time.Second)
	for _, cmd := range []Command{
		putApp("web"), place("web", "n2", 1, 0, "n3"), ack("web", "n3", 1, 4), ack("web", "n2", 1, 5),
		{Type: CmdSetDrained, Node: "n1", Drained: true},
	} {
		if _, err := leader.Apply(ctx, cmd); err != nil {
			t.Fatalf("%s: %v", cmd.Type, err)
		}
	}
	st := waitSameState(t, 10*time.Second, leader, cs[1:]...)
	app := st.Apps["web"]
	if app.OP != "n2" || app.Term != 1 || app.Acked["n3"].Epoch != 4 || !st.Drained["n1"] {
		t.Fatalf("replicated state %+v %+v", st, app)
	}
	for _, c := range cs {
		servers, err := c.Servers()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range servers {
			if !s.Voter {
				t.Errorf("%s: %s is not a voter", c.Name(), s.Name)
			}
			names = append(names, s.Name)
		}
		slices.Sort(names)
		if !slices.Equal(names, []string{"n1", "n2", "n3"}) {
			t.Errorf("%s: servers %v", c.Name(), names)
		}
	}
	waitFor(t, 10*time.Second, "quorum on every node", func() bool {
		for _, c := range cs {
			if !c.HasQuorum() {
				return false
			}
		}
		return true
	})

	// A follower refuses to apply, add or barrier, and names the leader.
	// (If leadership moves meanwhile on a loaded machine, ask again.)
	addrOf := map[string]string{}
	for _, c := range cs {
		addrOf[c.Name()] = c.Addr()
	}
	harmless := Command{Type: CmdSetDrained, Node: "nobody"}
	waitFor(t, 10*time.Second, "followers' NotLeaderErrors naming the leader", func() bool {
		leader = waitLeader(t, electionBudget, cs...)
		for _, c := range cs {
			if c == leader {
				continue
			}
			for what, err := range map[string]error{
				"apply":     func() error { _, err := c.Apply(ctx, harmless); return err }(),
				"add voter": c.AddVoter(ctx, "n9", "127.0.0.1:1"),
				"barrier":   c.Barrier(ctx),
			} {
				var nle *NotLeaderError
				if err == nil {
					return false // c became leader meanwhile
				}
				if !errors.As(err, &nle) || !errors.Is(err, ErrNotLeader) {
					t.Fatalf("%s on follower %s: %v", what, c.Name(), err)
				}
				if nle.Leader != "" && (addrOf[nle.Leader] != nle.Addr || !strings.Contains(err.Error(), nle.Leader+" at "+nle.Addr)) {
					t.Fatalf("%s on follower %s: bad leader in %+v: %v", what, c.Name(), nle, err)
				}
				if nle.Leader != leader.Name() {
					return false
				}
			}
		}
		return true
	})

	// Remove a voter: the others drop it from their configuration.
	leader = waitLeader(t, electionBudget, cs...)
	var gone, stays *Cluster
	for _, c := range cs {
		switch {
		case c == leader:
		case gone == nil:
			gone = c
		default:
			stays = c
		}
	}
	if err := leader.RemoveServer(ctx, gone.Name()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, gone.Name()+" removed", func() bool {
		servers, err := stays.Servers()
		return err == nil && len(servers) == 2
	})
	if _, err := leader.Apply(ctx, putApp("db")); err != nil {
		t.Fatalf("apply after removing %s: %v", gone.Name(), err)
	}
	waitSameState(t, 10*time.Second, leader, stays)
}

// TestLeaderFailover: when the leader shuts down the others elect a new
// one that applies; the old leader restarts from its Dir, rejoins and
// catches up.
func TestLeaderFailover(t *testing.T) {
	cs := startCluster(t, 3, true)
	old := cs[0]
	ctx := ctxT(t, 20*time.Second)
	if _, err := old.Apply(ctx, putApp("web")); err != nil {
		t.Fatal(err)
	}
	waitSameState(t, 10*time.Second, old, cs[1:]...)
	oldCfg := old.cfg

	start := time.Now()
	if err := old.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if old.IsLeader() || old.HasQuorum() {
		t.Fatal("a shut-down node is leader or has quorum")
	}
	leader := waitLeader(t, electionBudget, cs[1:]...)
	t.Logf("new leader %s elected %s after the leader shut down", leader.Name(), time.Since(start).Round(time.Millisecond))

	if _, err := leader.Apply(ctx, place("web", "n3", 1, 0, "n2")); err != nil {
		t.Fatalf("apply on the new leader: %v", err)
	}
	waitSameState(t, 10*time.Second, leader, cs[1:]...)
	waitFor(t, 10*time.Second, "quorum on survivors", func() bool { return cs[1].HasQuorum() && cs[2].HasQuorum() })

	// Restart the old leader on its address from its directory.
	cfg := oldCfg
	cfg.Bind = old.Addr()
	restarted := openTest(t, cfg)
	waitSameState(t, 10*time.Second, leader, restarted)
	waitLeader(t, electionBudget, cs[1], cs[2], restarted)
	if got := restarted.State().Apps["web"]; got.OP != "n3" {
		t.Fatalf("restarted node did not catch up: %+v", got)
	}
}

// TestRestartKeepsState: a node restarted from its Dir recovers from a
// snapshot plus the log after it.
func TestRestartKeepsState(t *testing.T) {
	log, _ := newTestLogger(t)
	cfg := testConfig(t, "n1", log, nil)
	cfg.Bootstrap = true
	c := openTest(t, cfg)
	waitLeader(t, electionBudget, c)
	ctx := ctxT(t, 20*time.Second)
	for _, cmd := range append(base[:2:2], ack("web", "b", 1, 3), Command{Type: CmdSetDrained, Node: "z", Drained: true}) {
		if _, err := c.Apply(ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Snapshot(); err != nil {
		t.Fatal(err)
	}
	snaps, err := os.ReadDir(filepath.Join(cfg.Dir, "snapshots"))
	if err != nil || len(snaps) != 1 {
		t.Fatalf("snapshots: %v %v", snaps, err)
	}
	// Entries after the snapshot come back from the log.
	for _, cmd := range []Command{putApp("db"), ack("web", "c", 1, 9)} {
		if _, err := c.Apply(ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}
	want := stateJSON(t, c.State())
	if err := c.Shutdown(); err != nil {
		t.Fatal(err)
	}

	cfg.Bind = c.Addr()
	r := openTest(t, cfg) // Bootstrap is ignored: state exists
	waitLeader(t, electionBudget, r)
	// A new leader applies its log up to the commit index: wait for it.
	if err := r.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	if got := stateJSON(t, r.State()); got != want {
		t.Fatalf("after restart:\n got %s\nwant %s", got, want)
	}
	if _, err := r.Apply(ctx, ack("web", "b", 1, 10)); err != nil {
		t.Fatal(err)
	}
	if err := r.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := r.Shutdown(); err != nil {
		t.Fatalf("second shutdown: %v", err)
	}
	if _, err := r.Apply(ctx, ack("web", "b", 1, 11)); !errors.Is(err, ErrShutdown) {
		t.Fatalf("apply after shutdown: %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	log, _ := newTestLogger(t)
	good := testConfig(t, "n1", log, nil)
	for name, change := range map[string]func(*Config){
		"bad name":      func(c *Config) { c.NodeName = "-x" },
		"no dir":        func(c *Config) { c.Dir = "" },
		"no bind":       func(c *Config) { c.Bind = "" },
		"bad preset":    func(c *Config) { c.Preset = "wan" },
		"unspecified":   func(c *Config) { c.Bind = "0.0.0.0:0" },
		"bad advertise": func(c *Config) { c.Advertise = "nohost" },
	} {
		cfg := good
		change(&cfg)
		if c, err := Open(cfg); err == nil {
			c.Shutdown()
			t.Errorf("%s: opened", name)
		}
	}
	openTest(t, good)
	second := good
	second.NodeName = "n2"
	start := time.Now()
	if c2, err := Open(second); err == nil {
		c2.Shutdown()
		t.Fatal("two clusters opened one Dir")
	} else if !strings.Contains(err.Error(), "locked") {
		t.Fatalf("second open: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("second open took %s", d)
	}
}

// TestNotLeaderErrorMessage: the error names the leader, or says none is
// known.
func TestNotLeaderErrorMessage(t *testing.T) {
	e := &NotLeaderError{Leader: "n2", Addr: "127.0.0.1:7947"}
	if !strings.Contains(e.Error(), "n2 at 127.0.0.1:7947") || !errors.Is(e, ErrNotLeader) {
		t.Fatal(e)
	}
	cause := errors.New("leadership lost while committing log")
	e = &NotLeaderError{Err: cause}
	if !strings.Contains(e.Error(), "no leader known") || !errors.Is(e, cause) {
		t.Fatal(e)
	}
}

// TestHasQuorumLost: a leader whose followers are gone steps down and
// reports no quorum within about a lease.
func TestHasQuorumLost(t *testing.T) {
	cs := startCluster(t, 3, false)
	waitFor(t, 10*time.Second, "quorum on every node", func() bool {
		return cs[0].HasQuorum() && cs[1].HasQuorum() && cs[2].HasQuorum()
	})
	start := time.Now()
	for _, c := range cs[1:] {
		if err := c.Shutdown(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*cs[0].Lease(), "the cut-off leader to lose quorum", func() bool { return !cs[0].HasQuorum() })
	t.Logf("leader lost quorum %s after its followers stopped (lease %s)", time.Since(start).Round(time.Millisecond), cs[0].Lease())
	if cs[0].IsLeader() {
		t.Fatal("leader without quorum still leader")
	}
	if _, err := cs[0].Apply(ctxT(t, time.Second), putApp("web")); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("apply without quorum: %v", err)
	}
}

// TestShutdownLeavesNoGoroutines: a cluster's goroutines end with
// Shutdown.
func TestShutdownLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	log, _ := newTestLogger(t)
	tlsCfg := testTLS(t)
	var cs []*Cluster
	for i, name := range []string{"n1", "n2"} {
		cfg := testConfig(t, name, log, tlsCfg)
		cfg.Bootstrap = i == 0
		c, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	defer func() {
		for _, c := range cs {
			c.Shutdown()
		}
	}()
	waitLeader(t, electionBudget, cs[0])
	if err := cs[0].AddNonvoter(ctxT(t, 5*time.Second), "n2", cs[1].Addr()); err != nil {
		t.Fatal(err)
	}
	if _, err := cs[0].Apply(ctxT(t, 5*time.Second), putApp("web")); err != nil {
		t.Fatal(err)
	}
	waitSameState(t, 10*time.Second, cs[0], cs[1])
	for _, c := range cs {
		if err := c.Shutdown(); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after shutdown:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

package chaos

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"doppel/node/api"
)

// envInt reads a positive integer from the environment, or def.
func envInt(t testing.TB, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// failoverTimes are the measured moments of one failover, from the kill.
type failoverTimes struct {
	Promoted time.Duration // the promotion's raft commit (leader's event)
	Open     time.Duration // the new OP's service open
	Served   time.Duration // first answer to a request sent after the kill
	Restore  string        // the daemon's own account of the restore
	Replayed string        // and of the replay
}

// measureFailover waits until a request sent after killAt is answered by
// another node than the failed one, and collects what the events say about
// the promotion that made it possible.
func measureFailover(t testing.TB, c *cluster, s *kvService, l *load, killed string, killAt time.Time, timeout time.Duration) (failoverTimes, string) {
	t.Helper()
	var first ack
	_, err := poll(timeout, func() (bool, string) {
		if errs := l.errs(); len(errs) > 0 {
			return true, ""
		}
		a, ok := l.firstServedAfter(killAt, s.addrOf(c.byName(killed)))
		first = a
		return ok, fmt.Sprintf("%d answered so far", l.count())
	})
	if errs := l.errs(); err != nil || len(errs) > 0 {
		s.diagnose(t, killAt)
		t.Fatalf("no request sent after the kill of %s answered: %v; load errors: %v", killed, err, errs)
	}
	var ft failoverTimes
	ft.Served = first.Got.Sub(killAt)
	newOP := s.nodeOfAddr(first.Addr)
	// The events of the promotion may arrive a moment after the answer.
	_, _ = poll(5*time.Second, func() (bool, string) {
		_, ok := c.rec.find(killAt, func(ev nodeEvent) bool { return isServiceOpen(s.Name, ev) && ev.Node == newOP })
		return ok, ""
	})
	if ev, ok := c.rec.find(killAt, func(ev nodeEvent) bool {
		_, ok := promotionTerm(s.Name, ev)
		return ok && ev.Event.Node == newOP
	}); ok {
		ft.Promoted = ev.Time.Sub(killAt)
	}
	if ev, ok := c.rec.find(killAt, func(ev nodeEvent) bool { return isServiceOpen(s.Name, ev) && ev.Node == newOP }); ok {
		ft.Open = ev.Time.Sub(killAt)
	}
	if ev, ok := c.rec.find(killAt, func(ev nodeEvent) bool {
		return ev.Node == newOP && ev.Kind == api.KindApp && strings.HasPrefix(ev.Message, s.Name+" restored on ")
	}); ok {
		ft.Restore = ev.Message
	}
	if ev, ok := c.rec.find(killAt, func(ev nodeEvent) bool {
		return ev.Node == newOP && ev.Kind == api.KindApp && strings.HasPrefix(ev.Message, "replayed ")
	}); ok && ev.Time.Sub(killAt) < ft.Open+time.Second {
		ft.Replayed = ev.Message
	}
	return ft, newOP
}

// percentile returns the p-th percentile (nearest rank) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(p/100*float64(len(s))+0.999999) - 1
	return s[max(0, min(rank, len(s)-1))]
}

// finalChecks compares the loads with the app's final state and the
// recorded service intervals, and reports what is wrong.
func finalChecks(t *testing.T, c *cluster, s *kvService, loads ...*load) {
	t.Helper()
	finalChecksMode(t, c, s, true, loads...)
}

// finalChecksMode is finalChecks; without durable, acknowledged increments
// may be missing (--journal async promises no more: a message the old OP
// acknowledged before its clones stored it is lost with it), and only the
// single-OP, single-copy and data-file checks apply.
func finalChecksMode(t *testing.T, c *cluster, s *kvService, durable bool, loads ...*load) {
	t.Helper()
	_, op, err := s.opInfo()
	if err != nil {
		t.Fatalf("final state: %v", err)
	}
	addr := s.addrOf(op)
	ids, err := kvIDs(addr)
	if err != nil {
		t.Fatalf("final IDS through %s: %v", op.Name, err)
	}
	var acks []ack
	for _, l := range loads {
		if !durable {
			t.Logf("load %s: %d increments acknowledged (async journal: durability not checked)", l.cfg.Run, l.count())
			acks = append(acks, l.acked()...)
			continue
		}
		reportAll(t, "load "+l.cfg.Run, l.verify(ids))
		for _, w := range l.ws {
			v, err := kvInt(addr, "GET "+w.key())
			if err != nil {
				t.Fatal(err)
			}
			if want := int64(len(w.acks)); v != want && !(w.pending > 0 && v == want+1) {
				t.Errorf("%s is %d, %d increments were acknowledged", w.key(), v, want)
			}
		}
		writes, retried := l.sends()
		t.Logf("load %s: %d increments acknowledged, %d request writes (%d requests retried)", l.cfg.Run, l.count(), writes, retried)
		acks = append(acks, l.acked()...)
	}
	if err := kvCheck(addr); err != nil {
		t.Errorf("final CHECK: %v", err)
	}
	st, err := kvGetStats(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("final: the app applied %d increments and absorbed %d repeated deliveries", st.Applied, st.Dups)
	if copies := s.copies(); len(copies) != 1 {
		t.Errorf("%d copies of the app run at the end (pids %v), want 1", len(copies), copies)
	} else {
		t.Logf("the app holds %d TCP socket(s) at the end", len(socketsOf(copies[0])))
	}

	evs := c.rec.all()
	c.mu.Lock()
	faults := slices.Clone(c.faults)
	c.mu.Unlock()
	iv := servingIntervals(s.Name, evs, faults, time.Now())
	var ov []string
	for _, o := range overlaps(iv, faults) {
		ov = append(ov, "two OPs had the service open at once: "+o.String())
	}
	reportAll(t, "service intervals", ov)
	still := 0
	for _, v := range iv {
		if v.Still {
			still++
		}
	}
	if still != 1 {
		t.Errorf("%d nodes have the service open at the end, want 1: %+v", still, iv)
	}
	reportAll(t, "two OPs answered clients", staleAnswers(s, acks, evs, faults))
	if len(iv) > 0 {
		t.Logf("service intervals: %d (terms %d..%d)", len(iv), iv[0].Term, iv[len(iv)-1].Term)
	}
}

// reportAll fails the test with the first problems of a check and how
// many there are.
func reportAll(t *testing.T, check string, problems []string) {
	t.Helper()
	const show = 10
	for i, p := range problems {
		if i == show {
			t.Errorf("%s: %d more problem(s) like these", check, len(problems)-show)
			break
		}
		t.Errorf("%s: %s", check, p)
	}
}

// TestChaosKillOP kills the OP node (its daemon and everything it
// started, SIGKILL) at random moments under load, CHAOS_CYCLES times (20
// by default), restarting the killed node each time; a clone takes over
// and the clients carry on. At the end every acknowledged increment is in
// the app exactly once, the data file agrees with memory, and no two nodes
// served at once. Failover times (kill to first answer) are logged.
// CHAOS_SEED replays a run's random moments.
func TestChaosKillOP(t *testing.T) {
	c := newNetCluster(t)
	c.startNodes("worker", "worker", "worker")
	s := c.runKV(c.nodes[0], kvOptions{Replicas: 2, Interval: time.Second, Journal: "sync"})
	s.waitInSync(60 * time.Second)

	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("CHAOS_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("CHAOS_SEED=%q: %v", v, err)
		}
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	cycles := envInt(t, "CHAOS_CYCLES", 20)
	t.Logf("seed %d (CHAOS_SEED), %d cycles (CHAOS_CYCLES)", seed, cycles)

	l := startLoad(loadConfig{Addrs: s.addrs(), Workers: 4, Run: randomHex(4), Pace: 2 * time.Millisecond})
	t.Cleanup(l.halt)
	if err := l.waitAcks(200, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	var served, open, promoted []time.Duration
	for i := range cycles {
		info, op, err := s.opInfo()
		if err != nil {
			t.Fatalf("cycle %d: %v", i+1, err)
		}
		// A random moment: after a random number of answers, so the kill
		// falls anywhere in the checkpoint cycle (and, sometimes, within
		// a checkpoint).
		if err := l.waitAcks(1+rng.IntN(1500), 30*time.Second); err != nil {
			t.Fatalf("cycle %d: load: %v", i+1, err)
		}
		killAt := s.killOP(t, op)
		ft, newOP := measureFailover(t, c, s, l, op.Name, killAt, 60*time.Second)
		if a, ok := l.firstServedAfter(killAt, ""); ok && s.nodeOfAddr(a.Addr) == op.Name {
			t.Fatalf("cycle %d: the killed node %s answered a request sent after the kill at %s", i+1, op.Name, a.Got.Format("15:04:05.000"))
		}
		served, open, promoted = append(served, ft.Served), append(open, ft.Open), append(promoted, ft.Promoted)
		t.Logf("cycle %d: killed OP %s (term %d, epoch %d); %s serves: promoted %s, open %s, first answer %s after the kill; %s; %s",
			i+1, op.Name, info.Term, info.NewestEpoch, newOP, ft.Promoted.Round(time.Millisecond), ft.Open.Round(time.Millisecond),
			ft.Served.Round(time.Millisecond), ft.Restore, ft.Replayed)
		if ft.Promoted == 0 || ft.Open == 0 {
			t.Errorf("cycle %d: no promotion or service-open event recorded for %s", i+1, newOP)
		}

		op.restart()
		s.waitInSync(90*time.Second, op.Name)
		if copies := s.copies(); len(copies) != 1 {
			t.Fatalf("cycle %d: %d copies of the app run (pids %v), want 1", i+1, len(copies), copies)
		}
	}
	elapsed := time.Since(start)
	if err := l.waitAcks(50, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	l.halt()
	if errs := l.errs(); len(errs) > 0 {
		t.Errorf("load: %v", errs)
	}
	t.Logf("%d failovers in %s; kill → first answer: median %s, p95 %s, max %s (goal: median ≤ 2s, p95 ≤ 4s)",
		cycles, elapsed.Round(time.Second), percentile(served, 50).Round(time.Millisecond),
		percentile(served, 95).Round(time.Millisecond), percentile(served, 100).Round(time.Millisecond))
	t.Logf("kill → promotion committed: median %s, p95 %s; kill → service open: median %s, p95 %s",
		percentile(promoted, 50).Round(time.Millisecond), percentile(promoted, 95).Round(time.Millisecond),
		percentile(open, 50).Round(time.Millisecond), percentile(open, 95).Round(time.Millisecond))
	finalChecks(t, c, s, l)
}

// staleProbe is a client that sent a request to the OP while its daemon
// was stopped, and keeps waiting for the answer.
type staleProbe struct {
	id    string
	addr  string
	sent  time.Time
	done  chan struct{}
	reply string
	got   time.Time
	err   error
}

// probeStopped sends INCR stale 1 ID over a new connection to addr and
// waits up to timeout for the answer, in the background.
func probeStopped(addr, id string, timeout time.Duration) *staleProbe {
	p := &staleProbe{id: id, addr: addr, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			p.err = err
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(timeout))
		p.sent = time.Now()
		if _, err := fmt.Fprintf(conn, "INCR stale 1 %s\n", id); err != nil {
			p.err = err
			return
		}
		line, err := bufio.NewReader(conn).ReadString('\n')
		p.got = time.Now()
		p.reply, p.err = strings.TrimSpace(line), err
	}()
	return p
}

// TestChaosPartition stops the OP's daemon (SIGSTOP, its app keeps
// running) for longer than the fence lease, so that the cluster promotes a
// clone, then lets it continue (SIGCONT): the old OP must see the higher
// term and kill its copy, exactly one OP serves afterwards, and no client
// gets answers from two OPs — including a client that sent a request to
// the stopped OP and waits for its answer across the resume.
func TestChaosPartition(t *testing.T) {
	c := newNetCluster(t)
	c.startNodes("worker", "worker", "worker")
	s := c.runKV(c.nodes[0], kvOptions{Replicas: 2, Interval: time.Second, Journal: "sync"})
	s.waitInSync(60 * time.Second)
	l := startLoad(loadConfig{Addrs: s.addrs(), Workers: 4, Run: randomHex(4), Pace: 2 * time.Millisecond, TryTimeout: time.Second})
	t.Cleanup(l.halt)
	if err := l.waitAcks(500, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	info, op, err := s.opInfo()
	if err != nil {
		t.Fatal(err)
	}

	stopAt := op.pause()
	t.Logf("%s (OP, term %d) stopped at %s", op.Name, info.Term, stopAt.Format("15:04:05.000"))
	probe := probeStopped(s.addrOf(op), "stale-"+randomHex(4), 60*time.Second)
	promoted := waitFor(t, 30*time.Second, "a clone is promoted while "+op.Name+" is stopped", func() (bool, string) {
		_, ok := c.rec.find(stopAt, func(ev nodeEvent) bool { _, ok := promotionTerm(s.Name, ev); return ok })
		return ok, "no promotion event yet"
	})
	// Stopped beyond the lease in any case, and until the new OP either
	// serves or reports why it cannot.
	_, _ = poll(20*time.Second, func() (bool, string) {
		if time.Since(stopAt) < 2*fenceLease {
			return false, ""
		}
		_, ok := c.rec.find(stopAt, func(ev nodeEvent) bool {
			return ev.Node != op.Name && ev.App == s.Name && (isServiceOpen(s.Name, ev) || ev.Kind == api.KindError)
		})
		return ok, ""
	})
	contAt := op.resume(stopAt)
	t.Logf("%s resumed after %s (promotion seen %s after the stop)", op.Name, contAt.Sub(stopAt).Round(time.Millisecond), promoted.Round(time.Millisecond))

	ft, newOP := measureFailover(t, c, s, l, op.Name, stopAt, 60*time.Second)
	t.Logf("after the stop of %s: %s serves: promoted %s, open %s, first answer %s after the stop; %s; %s",
		op.Name, newOP, ft.Promoted.Round(time.Millisecond), ft.Open.Round(time.Millisecond), ft.Served.Round(time.Millisecond), ft.Restore, ft.Replayed)
	waitFor(t, 30*time.Second, "one copy of the app runs", func() (bool, string) {
		cp := s.copies()
		return len(cp) == 1, fmt.Sprintf("copies %v", cp)
	})
	var end nodeEvent
	if _, err := poll(10*time.Second, func() (bool, string) {
		var ok bool
		end, ok = c.rec.find(contAt, func(ev nodeEvent) bool { return ev.Node == op.Name && isServiceEnd(s.Name, ev) })
		return ok, "no event"
	}); err != nil {
		t.Errorf("%s published no end of its service after the resume", op.Name)
	} else {
		t.Logf("%s after the resume: %s (%s after it)", op.Name, end.Message, end.Time.Sub(contAt).Round(time.Millisecond))
	}
	s.waitInSync(90*time.Second, op.Name)
	if err := l.waitAcks(200, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	l.halt()
	if errs := l.errs(); len(errs) > 0 {
		t.Errorf("load: %v", errs)
	}

	<-probe.done
	_, now, err := s.opInfo()
	if err != nil {
		t.Fatal(err)
	}
	applied, err := kvInt(s.addrOf(now), "GET stale")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("request sent to the stopped OP at %s: answer %q at %s, err %v; applied in the final state: %v",
		probe.sent.Format("15:04:05.000"), probe.reply, probe.got.Format("15:04:05.000"), probe.err, applied == 1)
	if probe.err == nil {
		if opened, ok := c.rec.find(stopAt, func(ev nodeEvent) bool { return isServiceOpen(s.Name, ev) && ev.Node != op.Name }); ok && probe.got.After(opened.Time) {
			t.Errorf("the deposed OP %s answered %q at %s, after %s opened the service at %s: two OPs served",
				op.Name, probe.reply, probe.got.Format("15:04:05.000"), opened.Node, opened.Time.Format("15:04:05.000"))
		}
		if applied != 1 {
			t.Errorf("the deposed OP %s acknowledged %s (answer %q) but the final state does not hold it (stale=%d)", op.Name, probe.id, probe.reply, applied)
		}
	}
	finalChecks(t, c, s, l)
}

// fenceLease is node.Config.FenceLease's default, which the daemons run
// with.
const fenceLease = time.Second // the fast preset's node.Config.FenceLease

// TestChaosNetPartition cuts the OP node off the other nodes (blackhole
// routes both ways between network namespaces) while clients can still
// reach it, for the sync and the async journal. A clone is promoted; the
// cut-off OP must stop serving (it fences itself once it has had no
// majority for the lease) before the new OP serves, so that no client is
// answered by both; after the cut heals, the old OP kills its copy and
// becomes a clone again. A second client knows only the old OP's address
// (a stale address, as a client behind a slow DNS update has), so any
// answer the old OP gives after the promotion is seen.
func TestChaosNetPartition(t *testing.T) {
	for _, mode := range []string{"sync", "async"} {
		t.Run(mode, func(t *testing.T) { testNetPartition(t, mode) })
	}
}

func testNetPartition(t *testing.T, mode string) {
	c := newNetCluster(t)
	c.startNodes("worker", "worker", "worker")
	s := c.runKV(c.nodes[0], kvOptions{Replicas: 2, Interval: time.Second, Journal: mode})
	s.waitInSync(60 * time.Second)
	info, op, err := s.opInfo()
	if err != nil {
		t.Fatal(err)
	}
	l := startLoad(loadConfig{Addrs: s.addrs(), Workers: 3, Run: randomHex(4), Pace: 2 * time.Millisecond, TryTimeout: time.Second})
	t.Cleanup(l.drop)
	sticky := startLoad(loadConfig{Addrs: []string{s.addrOf(op)}, Workers: 1, Run: "st" + randomHex(4), Keys: "stale",
		Pace: 2 * time.Millisecond, TryTimeout: time.Second, GiveUp: 5 * time.Minute})
	t.Cleanup(sticky.drop)
	if err := l.waitAcks(300, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	cutAt := time.Now()
	c.partition(op.index)
	t.Logf("%s (OP, term %d) cut off at %s", op.Name, info.Term, cutAt.Format("15:04:05.000"))
	var others []string
	for _, d := range c.nodes {
		if d != op {
			others = append(others, s.addrOf(d))
		}
	}
	var newAddr string
	served := waitFor(t, 60*time.Second, "another node serves after the cut", func() (bool, string) {
		for _, a := range others {
			if _, err := kvInt(a, "GET probe"); err == nil {
				newAddr = a
				return true, ""
			}
		}
		return false, "no other node serves"
	})
	newOP := s.nodeOfAddr(newAddr)
	t.Logf("%s serves %s after the cut", newOP, served.Round(time.Millisecond))
	// The cut-off OP must stop serving within the lease (plus a quarter
	// for the check's period and a second for raft to notice).
	bound := fenceLease + fenceLease/4 + time.Second
	isFence := func(ev nodeEvent) bool {
		return ev.Node == op.Name && ev.Kind == api.KindError && strings.HasPrefix(ev.Message, s.Name+" fenced on ")
	}
	_, _ = poll(3*bound, func() (bool, string) {
		_, ok := c.rec.find(cutAt, isFence)
		return ok, ""
	})
	if ev, ok := c.rec.find(cutAt, isFence); !ok {
		t.Errorf("the cut-off OP %s did not fence itself within %s of the cut (its runner is busy: see the report's fencing bug)", op.Name, 3*bound)
	} else if d := ev.Time.Sub(cutAt); d > bound {
		t.Errorf("the cut-off OP %s fenced itself %s after the cut, later than its lease allows (%s)", op.Name, d.Round(time.Millisecond), bound)
	} else {
		t.Logf("%s fenced itself %s after the cut (lease %s)", op.Name, d.Round(time.Millisecond), fenceLease)
	}
	var lastStale time.Time
	for _, a := range sticky.acked() {
		if a.Sent.After(cutAt) {
			lastStale = a.Got
		}
	}
	if !lastStale.IsZero() {
		t.Logf("the cut-off OP %s answered requests sent after the cut until %s after it", op.Name, lastStale.Sub(cutAt).Round(time.Millisecond))
	}

	healAt := time.Now()
	c.heal(op.index)
	t.Logf("healed %s after the cut", healAt.Sub(cutAt).Round(time.Millisecond))
	waitFor(t, 30*time.Second, "one copy of the app runs after the heal", func() (bool, string) {
		cp := s.copies()
		return len(cp) == 1, fmt.Sprintf("copies %v", cp)
	})
	if ev, ok := c.rec.find(healAt, func(ev nodeEvent) bool { return ev.Node == op.Name && isServiceEnd(s.Name, ev) }); ok {
		t.Logf("%s after the heal: %s (%s after it)", op.Name, ev.Message, ev.Time.Sub(healAt).Round(time.Millisecond))
	}
	// The cluster takes the healed node back: gossip, then a clone.
	rejoined, err := poll(30*time.Second, func() (bool, string) {
		return c.sees(c.byName(newOP), op.Name)
	})
	if err != nil {
		t.Errorf("after the heal, %s never sees %s alive again: %v (the gossip does not re-merge after a partition longer than GossipToTheDeadTime: see the report)", newOP, op.Name, err)
	} else {
		t.Logf("%s sees %s alive %s after the heal", newOP, op.Name, rejoined.Round(time.Millisecond))
		s.waitInSync(90*time.Second, op.Name)
	}
	if err := l.waitAcks(200, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	l.halt()
	sticky.drop()
	if errs := l.errs(); len(errs) > 0 {
		t.Errorf("load: %v", errs)
	}
	t.Logf("the stale-address client: %d answers", sticky.count())
	finalChecksMode(t, c, s, mode == "sync", l, sticky)
}

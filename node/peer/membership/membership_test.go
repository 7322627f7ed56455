package membership

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"doppel/node/peer"
)

// logBuf collects log output for assertions.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// recorder drains a Membership's events so a test can look for one.
type recorder struct {
	mu     sync.Mutex
	events []Event
	at     []time.Time
	done   chan struct{}
}

func record(m *Membership) *recorder {
	r := &recorder{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for e := range m.Events() {
			r.mu.Lock()
			r.events = append(r.events, e)
			r.at = append(r.at, time.Now())
			r.mu.Unlock()
		}
	}()
	return r
}

// find returns the first event of kind about name and when it arrived.
func (r *recorder) find(kind EventKind, name string) (Event, time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, e := range r.events {
		if e.Kind == kind && e.Member.Name == name {
			return e, r.at[i], true
		}
	}
	return Event{}, time.Time{}, false
}

type testNode struct {
	*Membership
	logs *logBuf
	rec  *recorder
	meta atomic.Pointer[Meta]
}

// start runs a member on ip with a free port and the fast preset; it is
// shut down when the test ends.
func start(t *testing.T, ip, name string, key peer.Key, meta Meta, join ...string) (*testNode, error) {
	t.Helper()
	n := &testNode{logs: &logBuf{}}
	n.meta.Store(&meta)
	cfg := DefaultConfig()
	cfg.Name = name
	cfg.BindAddr = ip
	cfg.BindPort = 0
	cfg.Key = key
	cfg.Preset = PresetFast
	cfg.Join = join
	cfg.Meta = func() Meta { return *n.meta.Load() }
	cfg.Logger = slog.New(slog.NewTextHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m, err := JoinCluster(cfg)
	if err != nil {
		return nil, err
	}
	n.Membership = m
	n.rec = record(m)
	t.Cleanup(func() {
		m.Shutdown()
		<-n.rec.done
	})
	return n, nil
}

func mustStart(t *testing.T, ip, name string, key peer.Key, meta Meta, join ...string) *testNode {
	t.Helper()
	n, err := start(t, ip, name, key, meta, join...)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	return n
}

// checkGoroutines fails the test if, after every later cleanup (members
// shut down), more goroutines run than when it was called. Register first.
func checkGoroutines(t *testing.T) {
	t.Helper()
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > base {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("goroutine leak: %d running, %d before\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func mustKey(t *testing.T) peer.Key {
	k, err := peer.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func member(m *Membership, name string) (Member, bool) {
	for _, x := range m.Members() {
		if x.Name == name {
			return x, true
		}
	}
	return Member{}, false
}

func stateOf(m *Membership, name string) State {
	x, ok := member(m, name)
	if !ok {
		return ""
	}
	return x.State
}

func metaFor(name string) Meta {
	return Meta{
		Role: "worker", Version: "0.1.0", Proto: 1, CRIU: "4.1",
		Caps: []string{"pidfd", "lazy"}, Load: 0.5, MemFree: 1 << 30, MemTotal: 4 << 30,
		API: "/run/doppel/doppel.sock", Peer: name + ":7948", Raft: name + ":7947",
	}
}

// cluster starts three nodes on 127.0.0.21-23; b and c join a.
func cluster(t *testing.T, key peer.Key) (a, b, c *testNode) {
	t.Helper()
	a = mustStart(t, "127.0.0.21", "a", key, metaFor("a"))
	b = mustStart(t, "127.0.0.22", "b", key, metaFor("b"), a.Addr())
	c = mustStart(t, "127.0.0.23", "c", key, metaFor("c"), a.Addr())
	for _, n := range []*testNode{a, b, c} {
		waitFor(t, 5*time.Second, n.Name()+" to see 3 alive members", func() bool {
			ms := n.Members()
			if len(ms) != 3 {
				return false
			}
			for _, m := range ms {
				if m.State != StateAlive {
					return false
				}
			}
			return true
		})
	}
	return a, b, c
}

func TestThreeNodesSeeEachOther(t *testing.T) {
	checkGoroutines(t)
	a, b, c := cluster(t, mustKey(t))
	for _, n := range []*testNode{a, b, c} {
		ms := n.Members()
		for i, name := range []string{"a", "b", "c"} {
			m := ms[i]
			if m.Name != name {
				t.Fatalf("%s: members %v not sorted by name", n.Name(), ms)
			}
			want := metaFor(name)
			if fmt.Sprint(m.Meta) != fmt.Sprint(want) {
				t.Errorf("%s sees %s with meta %+v, want %+v", n.Name(), name, m.Meta, want)
			}
			if host, _, err := net.SplitHostPort(m.Addr); err != nil || host != "127.0.0.2"+string(rune('1'+i)) {
				t.Errorf("%s sees %s at %q", n.Name(), name, m.Addr)
			}
			if m.Since.IsZero() {
				t.Errorf("%s sees %s without Since", n.Name(), name)
			}
		}
		for _, other := range []string{"a", "b", "c"} {
			if _, _, ok := n.rec.find(EventJoin, other); !ok {
				waitFor(t, 5*time.Second, n.Name()+" to get a join event for "+other, func() bool {
					_, _, ok := n.rec.find(EventJoin, other)
					return ok
				})
			}
		}
	}
	if !strings.Contains(a.logs.String(), "member join") {
		t.Error("joins were not logged")
	}
}

func TestFailureDetection(t *testing.T) {
	a, b, c := cluster(t, mustKey(t))
	killed := time.Now()
	if err := c.Shutdown(); err != nil { // no Leave: a crash
		t.Fatal(err)
	}
	var detected [2]time.Duration
	for i, n := range []*testNode{a, b} {
		waitFor(t, 4*FastDetectionBound, n.Name()+" to report c dead", func() bool {
			return stateOf(n.Membership, "c") == StateDead
		})
		e, at, ok := n.rec.find(EventDead, "c")
		if !ok {
			waitFor(t, time.Second, n.Name()+" dead event for c", func() bool {
				e, at, ok = n.rec.find(EventDead, "c")
				return ok
			})
		}
		if e.Member.State != StateDead {
			t.Errorf("dead event carries state %q", e.Member.State)
		}
		detected[i] = at.Sub(killed)
	}
	t.Logf("fast preset: c reported dead by a after %v, by b after %v (bound %v)",
		detected[0].Round(time.Millisecond), detected[1].Round(time.Millisecond), FastDetectionBound)
	for i, d := range detected {
		if d > FastDetectionBound {
			t.Errorf("node %d reported the failure after %v, beyond the fast preset's bound %v", i, d, FastDetectionBound)
		}
	}
	// The suspicion that led to it was reported by at least one survivor
	// (memberlist's suspicion starts with some node's failed probe).
	_, _, sa := a.rec.find(EventSuspect, "c")
	_, _, sb := b.rec.find(EventSuspect, "c")
	if !sa && !sb {
		t.Error("no survivor reported c suspect before dead")
	}
	// The survivors still see each other alive.
	if stateOf(a.Membership, "b") != StateAlive || stateOf(b.Membership, "a") != StateAlive {
		t.Errorf("survivors: a sees b %s, b sees a %s", stateOf(a.Membership, "b"), stateOf(b.Membership, "a"))
	}
}

func TestGracefulLeave(t *testing.T) {
	checkGoroutines(t)
	a, b, c := cluster(t, mustKey(t))
	if err := c.Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	if s := stateOf(c.Membership, "c"); s != StateLeft {
		t.Errorf("c sees itself %s after Leave", s)
	}
	if err := c.Shutdown(); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*testNode{a, b} {
		waitFor(t, 4*FastDetectionBound, n.Name()+" to report c left", func() bool {
			return stateOf(n.Membership, "c") == StateLeft
		})
		waitFor(t, time.Second, n.Name()+" leave event for c", func() bool {
			_, _, ok := n.rec.find(EventLeave, "c")
			return ok
		})
		if _, _, ok := n.rec.find(EventDead, "c"); ok {
			t.Errorf("%s reported c dead after a graceful leave", n.Name())
		}
		if _, _, ok := n.rec.find(EventUpdate, "c"); ok {
			t.Errorf("%s reported the farewell as a meta update", n.Name())
		}
	}
	if err := c.Leave(time.Second); !errors.Is(err, ErrShutdown) {
		t.Errorf("Leave after Shutdown: %v", err)
	}
}

func TestWrongKeyCannotJoin(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	a := mustStart(t, "127.0.0.21", "a", key, metaFor("a"))
	b := mustStart(t, "127.0.0.22", "b", key, metaFor("b"), a.Addr())
	waitFor(t, 5*time.Second, "a and b to meet", func() bool { return len(a.Members()) == 2 })

	_, err := start(t, "127.0.0.24", "mallory", mustKey(t), metaFor("mallory"), a.Addr())
	if !errors.Is(err, ErrNoContact) {
		t.Fatalf("join with a wrong key: %v, want ErrNoContact", err)
	}
	// A node with the key joins fine afterwards, and nobody knows mallory.
	c := mustStart(t, "127.0.0.23", "c", key, metaFor("c"), a.Addr())
	for _, n := range []*testNode{a, b, c} {
		waitFor(t, 5*time.Second, n.Name()+" to see 3 members", func() bool { return len(n.Members()) == 3 })
		if _, ok := member(n.Membership, "mallory"); ok {
			t.Errorf("%s knows the node with the wrong key", n.Name())
		}
	}
	if !strings.Contains(a.logs.String(), "decrypt") {
		t.Errorf("a did not log the undecryptable join: %s", a.logs.String())
	}
}

func TestIncompatibleProtoRefused(t *testing.T) {
	key := mustKey(t)
	a := mustStart(t, "127.0.0.21", "a", key, metaFor("a"))
	future := metaFor("future")
	future.Proto = 2
	_, err := start(t, "127.0.0.25", "future", key, future, a.Addr())
	if !errors.Is(err, ErrIncompatible) || !errors.Is(err, ErrNoContact) || !strings.Contains(err.Error(), "protocol 1") {
		t.Fatalf("join with another protocol: %v, want ErrIncompatible naming the protocols", err)
	}
	waitFor(t, 5*time.Second, "a to report the refusal", func() bool {
		_, _, ok := a.rec.find(EventRefused, "future")
		return ok
	})
	e, _, _ := a.rec.find(EventRefused, "future")
	if !strings.Contains(e.Reason, "speaks cluster protocol 2, this node 1") || e.Member.Meta.Proto != 2 {
		t.Errorf("refusal event %+v", e)
	}
	if _, ok := member(a.Membership, "future"); ok {
		t.Error("a lists the refused node")
	}

	// A member that changes protocol is refused too: its new alive
	// messages are ignored and reported.
	b := mustStart(t, "127.0.0.22", "b", key, metaFor("b"), a.Addr())
	waitFor(t, 5*time.Second, "a to see b", func() bool { return stateOf(a.Membership, "b") == StateAlive })
	nm := metaFor("b")
	nm.Proto, nm.Load = 3, 9
	b.meta.Store(&nm)
	b.UpdateMeta()
	waitFor(t, 5*time.Second, "a to refuse b's new protocol", func() bool {
		e, _, ok := a.rec.find(EventRefused, "b")
		return ok && strings.Contains(e.Reason, "protocol 3")
	})
	if x, _ := member(a.Membership, "b"); x.Meta.Proto != 1 || x.Meta.Load == 9 {
		t.Errorf("a took b's incompatible meta: %+v", x.Meta)
	}
}

func TestMetaUpdatePropagates(t *testing.T) {
	a, b, c := cluster(t, mustKey(t))
	nm := metaFor("b")
	nm.Load, nm.Drained, nm.Caps = 3.25, true, []string{"pidfd"}
	b.meta.Store(&nm)
	if err := b.UpdateMeta(); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*testNode{a, b, c} {
		waitFor(t, 5*time.Second, n.Name()+" to see b's new meta", func() bool {
			x, _ := member(n.Membership, "b")
			return x.Meta.Load == 3.25 && x.Meta.Drained && len(x.Meta.Caps) == 1
		})
	}
	for _, n := range []*testNode{a, c} {
		waitFor(t, time.Second, n.Name()+" update event", func() bool {
			e, _, ok := n.rec.find(EventUpdate, "b")
			return ok && e.Member.Meta.Drained
		})
	}
	// Members returns copies.
	ms := a.Members()
	ms[1].Meta.Caps[0] = "changed"
	if x, _ := member(a.Membership, "b"); x.Meta.Caps[0] != "pidfd" {
		t.Error("Members shares its slices with the caller")
	}
}

func TestMetaTooLarge(t *testing.T) {
	key := mustKey(t)
	big := metaFor("a")
	big.Caps = []string{strings.Repeat("x", MaxMetaSize)}
	if _, err := start(t, "127.0.0.21", "a", key, big); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("start with oversized meta: %v", err)
	}
	a := mustStart(t, "127.0.0.21", "a", key, metaFor("a"))
	a.meta.Store(&big)
	if err := a.UpdateMeta(); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("UpdateMeta with oversized meta: %v", err)
	}
	if x, _ := member(a.Membership, "a"); x.Meta.Peer != "a:7948" || len(x.Meta.Caps) != 2 {
		t.Errorf("old meta not kept: %+v", x.Meta)
	}
	// Leave still works: it falls back to the last good meta.
	if err := a.Leave(time.Second); err != nil {
		t.Errorf("Leave with oversized meta: %v", err)
	}
}

func TestJoinErrors(t *testing.T) {
	key := mustKey(t)
	ln, err := net.Listen("tcp", "127.0.0.21:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if _, err := start(t, "127.0.0.22", "b", key, metaFor("b"), addr); !errors.Is(err, ErrNoContact) || !strings.Contains(err.Error(), addr) {
		t.Errorf("join of a closed port: %v", err)
	}
	bad := []struct {
		name string
		mod  func(*Config)
	}{
		{"bad name", func(c *Config) { c.Name = "no spaces" }},
		{"zero key", func(c *Config) { c.Key = peer.Key{} }},
		{"preset", func(c *Config) { c.Preset = "slow" }},
		{"bind addr", func(c *Config) { c.BindAddr = "localhost" }},
	}
	for _, c := range bad {
		cfg := DefaultConfig()
		cfg.Name, cfg.BindAddr, cfg.BindPort, cfg.Key = "x", "127.0.0.21", 0, key
		c.mod(&cfg)
		if m, err := JoinCluster(cfg); err == nil {
			m.Shutdown()
			t.Errorf("%s: JoinCluster succeeded", c.name)
		}
	}
}

func TestEventsDropOldest(t *testing.T) {
	m := &Membership{events: make(chan Event, 2)}
	for i := range 5 {
		m.emit(Event{Kind: EventUpdate, Member: Member{Name: fmt.Sprint(i)}})
	}
	if m.Dropped() != 3 {
		t.Errorf("dropped %d, want 3", m.Dropped())
	}
	if a, b := <-m.events, <-m.events; a.Member.Name != "3" || b.Member.Name != "4" {
		t.Errorf("kept %s and %s, want the newest 3 and 4", a.Member.Name, b.Member.Name)
	}
}

func TestSuspicionFromLog(t *testing.T) {
	var got []string
	w := &logWriter{log: slog.New(slog.DiscardHandler), onSuspect: func(n string) { got = append(got, n) }}
	fmt.Fprintf(w, "[INFO] memberlist: Suspect node-1.x has failed, no acks received\n")
	fmt.Fprintf(w, "[INFO] memberlist: Marking node-2 as failed, suspect timeout reached (0 peer confirmations)\n")
	if len(got) != 1 || got[0] != "node-1.x" {
		t.Errorf("suspects parsed: %v", got)
	}
	var logs logBuf
	w = &logWriter{log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	fmt.Fprintf(w, "[DEBUG] memberlist: a\n[WARN] memberlist: b\n[ERR] memberlist: c\nplain\n")
	out := logs.String()
	for _, want := range []string{`level=DEBUG msg="memberlist: a"`, `level=WARN msg="memberlist: b"`, `level=ERROR msg="memberlist: c"`, "level=INFO msg=plain"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
}

func TestLANPreset(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	cfg := DefaultConfig()
	cfg.Name, cfg.BindAddr, cfg.BindPort, cfg.Key = "a", "127.0.0.21", 0, key
	cfg.Logger = slog.New(slog.DiscardHandler)
	a, err := JoinCluster(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown()
	cfg.Name, cfg.BindAddr, cfg.Join = "b", "127.0.0.22", []string{a.Addr()}
	b, err := JoinCluster(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown()
	waitFor(t, 5*time.Second, "a and b to meet", func() bool {
		return stateOf(a, "b") == StateAlive && stateOf(b, "a") == StateAlive
	})
	if a.ml.ProbeInterval != time.Second || a.ml.SuspicionMult != 4 {
		t.Errorf("lan preset is not memberlist's DefaultLANConfig: probe %v, suspicion mult %d", a.ml.ProbeInterval, a.ml.SuspicionMult)
	}
}

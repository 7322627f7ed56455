package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)

func putApp(name string) Command { return Command{Type: CmdPutApp, App: testSpec(name)} }

func place(name, op string, term, expect uint64, clones ...string) Command {
	return Command{Type: CmdPlace, Name: name, OP: op, Term: term, ExpectTerm: expect, Clones: clones}
}

func ack(name, node string, term, epoch uint64) Command {
	return Command{Type: CmdAck, Name: name, Node: node, Term: term, Epoch: epoch}
}

// base: app "web" placed on a with clones b, c in term 1.
var base = []Command{putApp("web"), place("web", "a", 1, 0, "b", "c")}

func TestFSMRules(t *testing.T) {
	tests := []struct {
		name  string
		setup []Command
		cmd   Command
		err   error // sentinel, nil for success
		check func(t *testing.T, s State, res any)
	}{
		{
			name: "put app", cmd: putApp("web"),
			check: func(t *testing.T, s State, res any) {
				app := s.Apps["web"]
				if app == nil || !reflect.DeepEqual(app.Spec, *testSpec("web")) || app.Term != 0 || app.OP != "" || !app.Created.Equal(t0) {
					t.Fatalf("app = %+v", app)
				}
				if r, ok := res.(*App); !ok || r.Spec.Name != "web" {
					t.Fatalf("result = %#v", res)
				}
			},
		},
		{name: "put app twice", setup: []Command{putApp("web")}, cmd: putApp("web"), err: ErrExists},
		{name: "put app without spec", cmd: Command{Type: CmdPutApp}, err: ErrBadCommand},
		{name: "put app bad name", cmd: Command{Type: CmdPutApp, App: &AppSpec{Name: "Web", Args: []string{"x"}}}, err: ErrBadCommand},
		{name: "put app no args", cmd: Command{Type: CmdPutApp, App: &AppSpec{Name: "web"}}, err: ErrBadCommand},
		{name: "put app negative replicas", cmd: Command{Type: CmdPutApp, App: &AppSpec{Name: "web", Args: []string{"x"}, Replicas: -1}}, err: ErrBadCommand},
		{name: "put app bad policy", cmd: Command{Type: CmdPutApp, App: &AppSpec{Name: "web", Args: []string{"x"}, Policy: "maybe"}}, err: ErrBadCommand},
		{name: "unknown command type", cmd: Command{Type: 200, Name: "web"}, err: ErrBadCommand},

		{
			name: "first placement", setup: []Command{putApp("web")}, cmd: place("web", "a", 1, 0, "b", "c"),
			check: func(t *testing.T, s State, res any) {
				app := s.Apps["web"]
				if app.OP != "a" || app.Term != 1 || !reflect.DeepEqual(app.Clones, []string{"b", "c"}) || !app.Moved.Equal(t0) {
					t.Fatalf("app = %+v", app)
				}
			},
		},
		{name: "place unknown app", cmd: place("web", "a", 1, 0), err: ErrNotFound},
		{name: "place with wrong expected term", setup: base, cmd: place("web", "b", 2, 0, "c"), err: ErrTermConflict},
		{name: "place with older term", setup: base, cmd: place("web", "b", 0, 1, "c"), err: ErrStaleTerm},
		{name: "move OP without new term", setup: base, cmd: place("web", "b", 1, 1, "c"), err: ErrStaleTerm},
		{name: "OP listed as clone", setup: base, cmd: place("web", "b", 2, 1, "b"), err: ErrBadCommand},
		{name: "duplicate clone", setup: base, cmd: place("web", "b", 2, 1, "c", "c"), err: ErrBadCommand},
		{name: "bad clone name", setup: base, cmd: place("web", "b", 2, 1, "-x"), err: ErrBadCommand},
		{
			name: "new OP drained", setup: append(base[:2:2], Command{Type: CmdSetDrained, Node: "b", Drained: true}),
			cmd: place("web", "b", 2, 1, "c"), err: ErrDrained,
		},
		{
			name:  "drained OP keeps its clones changed in the same term",
			setup: append(base[:2:2], Command{Type: CmdSetDrained, Node: "a", Drained: true}),
			cmd:   place("web", "a", 1, 1, "c"),
			check: func(t *testing.T, s State, _ any) {
				if app := s.Apps["web"]; app.OP != "a" || !reflect.DeepEqual(app.Clones, []string{"c"}) {
					t.Fatalf("app = %+v", app)
				}
			},
		},
		{
			name:  "clones change in the same term, acks of leavers dropped",
			setup: append(base[:2:2], ack("web", "b", 1, 4), ack("web", "c", 1, 5), ack("web", "a", 1, 5)),
			cmd:   place("web", "a", 1, 1, "c", "d"),
			check: func(t *testing.T, s State, _ any) {
				app := s.Apps["web"]
				if app.Term != 1 || app.OP != "a" || !reflect.DeepEqual(app.Clones, []string{"c", "d"}) {
					t.Fatalf("app = %+v", app)
				}
				if _, ok := app.Acked["b"]; ok || app.Acked["c"].Epoch != 5 || app.Acked["a"].Epoch != 5 {
					t.Fatalf("acked = %+v", app.Acked)
				}
			},
		},
		{
			name:  "failover: new term, new OP, old acks kept with their term",
			setup: append(base[:2:2], ack("web", "b", 1, 7)),
			cmd:   place("web", "b", 2, 1, "c"),
			check: func(t *testing.T, s State, _ any) {
				app := s.Apps["web"]
				if app.Term != 2 || app.OP != "b" || !reflect.DeepEqual(app.Clones, []string{"c"}) {
					t.Fatalf("app = %+v", app)
				}
				if a := app.Acked["b"]; a.Epoch != 7 || a.Term != 1 {
					t.Fatalf("acked = %+v", app.Acked)
				}
			},
		},
		{
			name: "unplace in a new term", setup: base, cmd: place("web", "", 2, 1),
			check: func(t *testing.T, s State, _ any) {
				if app := s.Apps["web"]; app.OP != "" || app.Term != 2 || len(app.Clones) != 0 {
					t.Fatalf("app = %+v", app)
				}
			},
		},

		{
			name: "ack from clone", setup: base, cmd: ack("web", "b", 1, 3),
			check: func(t *testing.T, s State, res any) {
				want := Ack{Epoch: 3, Term: 1, At: t0}
				if got := s.Apps["web"].Acked["b"]; got != want {
					t.Fatalf("ack = %+v, want %+v", got, want)
				}
				if res != want {
					t.Fatalf("result = %#v", res)
				}
			},
		},
		{
			name: "ack from OP", setup: base, cmd: ack("web", "a", 1, 3),
			check: func(t *testing.T, s State, _ any) {
				if s.Apps["web"].Acked["a"].Epoch != 3 {
					t.Fatal(s.Apps["web"].Acked)
				}
			},
		},
		{name: "ack from stranger", setup: base, cmd: ack("web", "z", 1, 3), err: ErrNotMember},
		{name: "ack for old term", setup: append(base[:2:2], place("web", "b", 2, 1, "c")), cmd: ack("web", "c", 1, 9), err: ErrStaleTerm},
		{name: "ack for future term", setup: base, cmd: ack("web", "b", 2, 3), err: ErrStaleTerm},
		{name: "ack unknown app", cmd: ack("web", "b", 1, 3), err: ErrNotFound},
		{name: "ack bad node name", setup: base, cmd: ack("web", "", 1, 3), err: ErrBadCommand},
		{
			name: "older ack keeps the max epoch", setup: append(base[:2:2], ack("web", "b", 1, 9)), cmd: ack("web", "b", 1, 4),
			check: func(t *testing.T, s State, res any) {
				if got := s.Apps["web"].Acked["b"]; got.Epoch != 9 {
					t.Fatalf("ack = %+v", got)
				}
				if r, ok := res.(Ack); !ok || r.Epoch != 9 {
					t.Fatalf("result = %#v", res)
				}
			},
		},
		{
			name:  "ack of a new term replaces a higher epoch of an older term",
			setup: append(base[:2:2], ack("web", "c", 1, 9), place("web", "b", 2, 1, "c")),
			cmd:   ack("web", "c", 2, 6),
			check: func(t *testing.T, s State, _ any) {
				if got := s.Apps["web"].Acked["c"]; got.Epoch != 6 || got.Term != 2 {
					t.Fatalf("ack = %+v", got)
				}
			},
		},

		{
			name: "remove app", setup: base, cmd: Command{Type: CmdRemoveApp, Name: "web"},
			check: func(t *testing.T, s State, _ any) {
				if _, ok := s.Apps["web"]; ok {
					t.Fatal("app still there")
				}
			},
		},
		{
			name:  "an app created again starts above the removed one's terms",
			setup: append(base[:2:2], place("web", "b", 2, 1, "c"), Command{Type: CmdRemoveApp, Name: "web"}),
			cmd:   putApp("web"),
			check: func(t *testing.T, s State, _ any) {
				if app := s.Apps["web"]; app.Term != 2 || app.OP != "" {
					t.Fatalf("app = %+v, want term 2 (the removed app's last) and no OP", app)
				}
				if _, ok := s.Retired["web"]; ok {
					t.Fatalf("retired %v still names web", s.Retired)
				}
			},
		},
		{name: "remove unknown app", cmd: Command{Type: CmdRemoveApp, Name: "web"}, err: ErrNotFound},
		{
			name: "drain and undrain", setup: []Command{{Type: CmdSetDrained, Node: "a", Drained: true}, {Type: CmdSetDrained, Node: "b", Drained: true}},
			cmd: Command{Type: CmdSetDrained, Node: "a", Drained: false},
			check: func(t *testing.T, s State, _ any) {
				if !reflect.DeepEqual(s.Drained, map[string]bool{"b": true}) {
					t.Fatalf("drained = %v", s.Drained)
				}
			},
		},
		{name: "drain bad node", cmd: Command{Type: CmdSetDrained, Node: "a b", Drained: true}, err: ErrBadCommand},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := State{}.Clone()
			for i, c := range tt.setup {
				if _, err := s.apply(c, t0); err != nil {
					t.Fatalf("setup %d (%s): %v", i, c.Type, err)
				}
			}
			before := stateJSON(t, s)
			res, err := s.apply(tt.cmd, t0)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				if after := stateJSON(t, s); after != before {
					t.Fatalf("a refused command changed the state:\nbefore %s\nafter  %s", before, after)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if tt.check != nil {
				tt.check(t, s, res)
			}
		})
	}
}

// TestStateCloneIsDeep: changing a copy leaves the original alone.
func TestStateCloneIsDeep(t *testing.T) {
	var s State
	for _, c := range append(base[:2:2], ack("web", "b", 1, 1), Command{Type: CmdSetDrained, Node: "x", Drained: true}) {
		if _, err := s.apply(c, t0); err != nil {
			t.Fatal(err)
		}
	}
	want := stateJSON(t, s)
	c := s.Clone()
	app := c.Apps["web"]
	app.Spec.Args[0] = "changed"
	app.Spec.Env[0] = "changed"
	app.Spec.DataPaths[0] = "changed"
	app.Spec.Service.Listen = "changed"
	app.Clones[0] = "changed"
	app.Acked["b"] = Ack{Epoch: 99}
	c.Drained["y"] = true
	c.Apps["other"] = &App{}
	if got := stateJSON(t, s); got != want {
		t.Fatalf("original changed:\n%s\n%s", want, got)
	}
}

func TestCommandEncoding(t *testing.T) {
	for _, c := range []Command{
		putApp("web"), place("web", "a", 3, 2, "b", "c"), ack("web", "b", 3, 17),
		{Type: CmdRemoveApp, Name: "web"}, {Type: CmdSetDrained, Node: "n1", Drained: true},
	} {
		b, err := encodeCommand(c)
		if err != nil {
			t.Fatalf("encode %s: %v", c.Type, err)
		}
		if b[0] != ProtocolVersion || CmdType(b[1]) != c.Type {
			t.Fatalf("header % x", b[:2])
		}
		got, err := decodeCommand(b)
		if err != nil {
			t.Fatalf("decode %s: %v", c.Type, err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Fatalf("round trip %s:\n got %+v\nwant %+v", c.Type, got, c)
		}
	}
	good, _ := encodeCommand(putApp("web"))
	newer := append([]byte{ProtocolVersion + 1}, good[1:]...)
	if _, err := decodeCommand(newer); !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), "upgrade") {
		t.Fatalf("newer version: %v", err)
	}
	for name, b := range map[string][]byte{
		"empty":        nil,
		"short":        {ProtocolVersion},
		"bad json":     {ProtocolVersion, byte(CmdPutApp), '{'},
		"unknown type": append([]byte{ProtocolVersion, 99}, good[2:]...),
		"invalid":      {ProtocolVersion, byte(CmdAck), '{', '}'},
	} {
		if _, err := decodeCommand(b); !errors.Is(err, ErrBadCommand) {
			t.Errorf("%s: err = %v, want ErrBadCommand", name, err)
		}
	}
	if _, err := encodeCommand(Command{Type: CmdAck, Name: "web"}); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("encode invalid: %v", err)
	}
}

// TestCmdTypeValuesFixed pins the wire values of the append-only enum.
func TestCmdTypeValuesFixed(t *testing.T) {
	want := map[CmdType]uint8{CmdPutApp: 1, CmdPlace: 2, CmdAck: 3, CmdRemoveApp: 4, CmdSetDrained: 5}
	for c, v := range want {
		if uint8(c) != v {
			t.Errorf("%s = %d, want %d (stored in raft logs: never renumber)", c, uint8(c), v)
		}
	}
}

func logEntry(t *testing.T, index uint64, c Command) *raft.Log {
	t.Helper()
	b, err := encodeCommand(c)
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: b, AppendedAt: t0.Add(time.Duration(index) * time.Second)}
}

func newTestFSM() *fsm { return newFSM(slog.New(slog.DiscardHandler)) }

// TestFSMApplyEntries: the raft-facing Apply decodes, applies, advances
// Index for refused and unreadable entries too, and ignores non-commands.
func TestFSMApplyEntries(t *testing.T) {
	f := newTestFSM()
	res := f.Apply(logEntry(t, 1, putApp("web"))).(applyResult)
	if res.err != nil || res.value.(*App).Created != t0.Add(time.Second) {
		t.Fatalf("put: %+v", res)
	}
	res = f.Apply(logEntry(t, 2, putApp("web"))).(applyResult)
	if !errors.Is(res.err, ErrExists) {
		t.Fatalf("second put: %+v", res)
	}
	res = f.Apply(&raft.Log{Index: 3, Type: raft.LogCommand, Data: []byte{ProtocolVersion + 1, 1, '{', '}'}}).(applyResult)
	if !errors.Is(res.err, ErrIncompatible) {
		t.Fatalf("newer entry: %+v", res)
	}
	if r := f.Apply(&raft.Log{Index: 4, Type: raft.LogNoop}); r != nil {
		t.Fatalf("noop: %v", r)
	}
	st := f.state()
	if st.Index != 3 || len(st.Apps) != 1 {
		t.Fatalf("state = %+v", st)
	}
}

// memSink is a raft.SnapshotSink in memory.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }

func TestFSMSnapshotRestore(t *testing.T) {
	f := newTestFSM()
	cmds := append(base[:2:2], ack("web", "b", 1, 3), putApp("db"), Command{Type: CmdSetDrained, Node: "c", Drained: true})
	for i, c := range cmds {
		if res := f.Apply(logEntry(t, uint64(i+1), c)).(applyResult); res.err != nil {
			t.Fatal(res.err)
		}
	}
	want := stateJSON(t, f.state())
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Changes after Snapshot are not in it.
	f.Apply(logEntry(t, 10, Command{Type: CmdRemoveApp, Name: "db"}))
	var sink memSink
	if err := snap.Persist(&sink); err != nil || !sink.closed || sink.cancelled {
		t.Fatalf("persist: %v closed=%v cancelled=%v", err, sink.closed, sink.cancelled)
	}
	snap.Release()

	g := newTestFSM()
	ch, stop := g.watch()
	defer stop()
	<-ch // the empty initial state
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if got := stateJSON(t, g.state()); got != want {
		t.Fatalf("restored:\n got %s\nwant %s", got, want)
	}
	if got := stateJSON(t, <-ch); got != want {
		t.Fatalf("watch after restore: %s", got)
	}
	// The restored FSM goes on applying by the same rules.
	if res := g.Apply(logEntry(t, 11, ack("web", "b", 1, 2))).(applyResult); res.err != nil || res.value.(Ack).Epoch != 3 {
		t.Fatalf("ack after restore: %+v", res)
	}

	var newer bytes.Buffer
	json.NewEncoder(&newer).Encode(snapshotFile{Version: ProtocolVersion + 1})
	if err := g.Restore(io.NopCloser(&newer)); !errors.Is(err, ErrIncompatible) {
		t.Fatalf("newer snapshot: %v", err)
	}
	if err := g.Restore(io.NopCloser(strings.NewReader("garbage"))); err == nil {
		t.Fatal("garbage snapshot restored")
	}
	if got := stateJSON(t, g.state()); !strings.Contains(got, `"web"`) {
		t.Fatalf("failed restore changed the state: %s", got)
	}
}

// TestWatchCoalesces: a watcher that does not read never blocks Apply and
// then sees only the newest state; stop and closeWatchers close channels.
func TestWatchCoalesces(t *testing.T) {
	f := newTestFSM()
	slow, stopSlow := f.watch()
	fast, stopFast := f.watch()
	if s := <-fast; s.Index != 0 {
		t.Fatalf("initial state index %d", s.Index)
	}
	const n = 200
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.Apply(logEntry(t, 1, putApp("web")))
		for i := uint64(2); i <= n; i++ {
			f.Apply(logEntry(t, i, Command{Type: CmdSetDrained, Node: "a", Drained: i%2 == 0}))
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Apply blocked on a watcher that does not read")
	}
	s := <-slow
	if s.Index != n || s.Apps["web"] == nil {
		t.Fatalf("slow watcher got index %d, want the newest %d", s.Index, n)
	}
	select {
	case s := <-slow:
		t.Fatalf("a second value (index %d) was queued", s.Index)
	default:
	}
	// Each watcher owns its copy.
	s.Apps["web"].Spec.Args[0] = "changed"
	if got := (<-fast).Apps["web"].Spec.Args[0]; got == "changed" {
		t.Fatal("watchers share state")
	}

	stopSlow()
	stopSlow()
	if _, ok := <-slow; ok {
		t.Fatal("stopped watch channel not closed")
	}
	f.Apply(logEntry(t, n+1, Command{Type: CmdSetDrained, Node: "b", Drained: true}))
	if s := <-fast; s.Index != n+1 {
		t.Fatalf("fast watcher index %d", s.Index)
	}
	f.closeWatchers()
	if _, ok := <-fast; ok {
		t.Fatal("channel open after closeWatchers")
	}
	stopFast()
	late, stopLate := f.watch()
	if s, ok := <-late; !ok || s.Index != n+1 {
		t.Fatal("late watch did not get the last state")
	}
	if _, ok := <-late; ok {
		t.Fatal("late watch channel not closed")
	}
	stopLate()
}

// FuzzDecodeApply: no log entry makes decoding or applying panic, and a
// decodable entry re-encodes to the same command.
func FuzzDecodeApply(f *testing.F) {
	for _, c := range append(base[:2:2], ack("web", "b", 1, 3), Command{Type: CmdRemoveApp, Name: "web"}, Command{Type: CmdSetDrained, Node: "x", Drained: true}) {
		b, _ := encodeCommand(c)
		f.Add(b)
	}
	f.Add([]byte{ProtocolVersion, 2, '{', '"', 'n', 'a', 'm', 'e', '"', ':', '1', '}'})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeCommand(b)
		if err != nil {
			return
		}
		re, err := encodeCommand(c)
		if err != nil {
			t.Fatalf("decoded command does not encode: %v", err)
		}
		c2, err := decodeCommand(re)
		if err != nil {
			t.Fatalf("re-encoded command does not decode: %v", err)
		}
		if re2, _ := encodeCommand(c2); !bytes.Equal(re, re2) {
			t.Fatalf("re-encode round trip:\n%s\n%s", re, re2)
		}
		var s State
		for _, setup := range base {
			s.apply(setup, t0)
		}
		s.apply(c, t0)
	})
}

// TestNames: app names follow replicate.ValidName's rule (lower case), node
// names the node name rule (any case).
func TestNames(t *testing.T) {
	for name, want := range map[string]bool{
		"web": true, "a": true, "web-1.2_x": true, "0db": true, strings.Repeat("a", 63): true,
		strings.Repeat("a", 64): false, "Web": false, "-web": false, ".web": false, "": false,
		"a b": false, "a/b": false, "ü": false,
	} {
		if got := ValidAppName(name); got != want {
			t.Errorf("app name %q: %v, want %v", name, got, want)
		}
	}
	for name, want := range map[string]bool{
		"n1": true, "Node-1.lan_x": true, strings.Repeat("N", 63): true,
		strings.Repeat("N", 64): false, "_n": false, "": false, "a:b": false,
	} {
		if got := ValidNodeName(name); got != want {
			t.Errorf("node name %q: %v, want %v", name, got, want)
		}
	}
}

package tui

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"

	"doppel/node/api"
)

// These tests drive Model.Update directly with messages and run the
// commands it returns by hand: quick ones (requests to the fake) deliver
// their message, slow ones (ticks, a blocked event stream) are dropped.

// run executes cmd and every command it batches, collecting the messages
// of those that finish within wait.
func run(cmd tea.Cmd, wait time.Duration) []tea.Msg {
	if cmd == nil {
		return nil
	}
	ch := make(chan tea.Msg, 1)
	go func() { ch <- cmd() }()
	var msg tea.Msg
	select {
	case msg = <-ch:
	case <-time.After(wait):
		return nil
	}
	if b, ok := msg.(tea.BatchMsg); ok {
		var out []tea.Msg
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, c := range b {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ms := run(c, wait)
				mu.Lock()
				out = append(out, ms...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		return out
	}
	if msg == nil {
		return nil
	}
	return []tea.Msg{msg}
}

// settle feeds msg to the model, then the messages of its commands, until
// nothing quick is left.
func settle(t *testing.T, m *Model, msgs ...tea.Msg) {
	t.Helper()
	for i := 0; len(msgs) > 0; i++ {
		if i > 200 {
			t.Fatal("the model never settled")
		}
		msg := msgs[0]
		msgs = msgs[1:]
		_, cmd := m.Update(msg)
		msgs = append(msgs, run(cmd, 100*time.Millisecond)...)
	}
}

func press(s string) tea.KeyPressMsg {
	switch s {
	case "tab":
		return tea.KeyPressMsg{Code: tea.KeyTab}
	case "shift+tab":
		return tea.KeyPressMsg{Code: tea.KeyTab, Mod: tea.ModShift}
	case "enter":
		return tea.KeyPressMsg{Code: tea.KeyEnter}
	case "esc":
		return tea.KeyPressMsg{Code: tea.KeyEscape}
	case "down":
		return tea.KeyPressMsg{Code: tea.KeyDown}
	case "up":
		return tea.KeyPressMsg{Code: tea.KeyUp}
	case "ctrl+c":
		return tea.KeyPressMsg{Code: 'c', Mod: tea.ModCtrl}
	}
	r := []rune(s)[0]
	return tea.KeyPressMsg{Code: r, Text: s}
}

// started is a model connected to src, at 80×24, with everything loaded.
func started(t *testing.T, src *fakeSource, mod ...func(*Config)) *Model {
	t.Helper()
	cfg := testConfig(src)
	for _, f := range mod {
		f(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	settle(t, m, tea.WindowSizeMsg{Width: 80, Height: 24})
	settle(t, m, run(m.Init(), 200*time.Millisecond)...)
	// The event history arrives one event per command.
	for i := 0; i < 100 && m.lastSeq < uint64(len(src.history)); i++ {
		settle(t, m, run(waitEventCmd(m.stream, m.gen), time.Second)...)
	}
	if !m.connected {
		t.Fatalf("not connected: %v", m.lastErr)
	}
	return m
}

func plain(m *Model) string { return ansi.Strip(m.Render()) }

func TestConnectLoadsEverything(t *testing.T) {
	t.Parallel()
	src := fixture(t)
	m := started(t, src)
	if m.status.Node != "n1" || m.attachedNode() != "n1" {
		t.Errorf("attached to %q, want n1", m.attachedNode())
	}
	if m.selected != "kv" {
		t.Errorf("selected app %q, want kv (the first)", m.selected)
	}
	calls := strings.Join(src.Calls(), ",")
	for _, want := range []string{"Status", "Events", "Nodes", "Apps", "App kv"} {
		if !strings.Contains(calls, want) {
			t.Errorf("no %s request: %s", want, calls)
		}
	}
	if m.tree.graph == nil || m.tree.counts.procs != 5 {
		t.Errorf("resource graph not loaded: %+v", m.tree.counts)
	}
	s := plain(m)
	for _, want := range []string{"connected", "kv", "n2✓", "n3!3", "journal backlog 12"} {
		if !strings.Contains(s, want) {
			t.Errorf("screen lacks %q:\n%s", want, s)
		}
	}
}

func TestTabsAndPaneKeys(t *testing.T) {
	t.Parallel()
	m := started(t, fixture(t))
	if m.focus != paneApps {
		t.Fatalf("focus %d, want the Apps pane", m.focus)
	}
	settle(t, m, press("tab"))
	if m.focus != paneTree {
		t.Errorf("tab: focus %d, want Resources", m.focus)
	}
	settle(t, m, press("shift+tab"), press("shift+tab"))
	if m.focus != paneNodes {
		t.Errorf("shift+tab twice: focus %d, want Nodes", m.focus)
	}
	settle(t, m, press("5"))
	if m.focus != paneEvents {
		t.Errorf("5: focus %d, want Events", m.focus)
	}
	// j/k move the selection of the apps pane, and the selection drives
	// the other panes.
	settle(t, m, press("2"), press("j"))
	if m.selected != "web" || m.tree.app != "web" || m.phases.app != "web" {
		t.Errorf("after j: selected %q, tree %q, phases %q; want web", m.selected, m.tree.app, m.phases.app)
	}
	if !strings.Contains(plain(m), "web stopped") {
		t.Errorf("details of web not shown:\n%s", plain(m))
	}
	settle(t, m, press("k"))
	if m.selected != "kv" {
		t.Errorf("after k: selected %q, want kv", m.selected)
	}
}

func TestAppsSelectionSurvivesRefresh(t *testing.T) {
	t.Parallel()
	src := fixture(t)
	m := started(t, src)
	settle(t, m, press("j"))
	if m.selected != "web" {
		t.Fatalf("selected %q", m.selected)
	}
	// The list comes back in another order with a new app first.
	apps := append([]api.AppInfo{{Name: "aaa", State: api.AppStopped}}, src.apps[1], src.apps[0])
	settle(t, m, appsMsg{gen: m.gen, apps: apps, at: t0})
	if m.selected != "web" {
		t.Errorf("after refresh: selected %q, want web still", m.selected)
	}
}

func TestFilter(t *testing.T) {
	t.Parallel()
	m := started(t, fixture(t))
	settle(t, m, press("1"), press("/"), press("n"), press("3"))
	if !m.filtering {
		t.Fatal("/ did not open the filter")
	}
	v := m.nodes.visible()
	if len(v) != 1 || v[0].Name != "n3" {
		t.Errorf("filter n3: %d nodes visible", len(v))
	}
	settle(t, m, press("enter"))
	if m.filtering || m.filters[paneNodes] != "n3" {
		t.Errorf("enter: filtering %v, filter %q", m.filtering, m.filters[paneNodes])
	}
	if !strings.Contains(plain(m), "/n3") {
		t.Errorf("the pane title does not show the filter:\n%s", plain(m))
	}
	// Keys reach the pane again, and esc clears the filter.
	settle(t, m, press("esc"))
	if m.filters[paneNodes] != "" || len(m.nodes.visible()) != 3 {
		t.Errorf("esc: filter %q, %d visible", m.filters[paneNodes], len(m.nodes.visible()))
	}
}

func TestHelpToggle(t *testing.T) {
	t.Parallel()
	m := started(t, fixture(t))
	settle(t, m, press("?"))
	if !m.showHelp || !strings.Contains(plain(m), "Help") {
		t.Fatal("? did not show the help")
	}
	settle(t, m, press("j"))
	if m.showHelp {
		t.Error("a key did not close the help")
	}
	if m.selected != "kv" {
		t.Error("the key that closed the help reached the pane")
	}
}

func TestQuit(t *testing.T) {
	t.Parallel()
	for _, k := range []string{"q", "ctrl+c"} {
		m := started(t, fixture(t))
		_, cmd := m.Update(press(k))
		if cmd == nil {
			t.Fatalf("%s: no command", k)
		}
		if _, ok := cmd().(tea.QuitMsg); !ok {
			t.Errorf("%s did not quit", k)
		}
	}
}

func TestCheckpointAction(t *testing.T) {
	t.Parallel()
	src := fixture(t)
	m := started(t, src)
	settle(t, m, press("c"))
	if m.confirm == nil || !strings.Contains(m.confirm.question, "checkpoint kv on n1") {
		t.Fatalf("no confirmation asked: %+v", m.confirm)
	}
	if !strings.Contains(plain(m), "[y/N]") {
		t.Errorf("the confirmation is not on screen:\n%s", plain(m))
	}
	// n cancels: nothing is called.
	settle(t, m, press("n"))
	if m.confirm != nil || strings.Contains(strings.Join(src.Calls(), ","), "Checkpoint") {
		t.Fatalf("cancel: confirm %v, calls %v", m.confirm, src.Calls())
	}
	// y runs it; progress shows while it runs.
	settle(t, m, press("c"))
	_, cmd := m.Update(press("y"))
	if m.running == nil {
		t.Fatal("no action in progress after y")
	}
	if !strings.Contains(plain(m), "checkpoint kv…") {
		t.Errorf("no progress on screen:\n%s", plain(m))
	}
	settle(t, m, run(cmd, time.Second)...)
	if m.running != nil {
		t.Fatal("the action did not end")
	}
	if !strings.Contains(m.flash.text, "epoch #43") || m.flash.level != "ok" {
		t.Errorf("result %q (%s), want epoch #43 ok", m.flash.text, m.flash.level)
	}
}

func TestActionErrorShown(t *testing.T) {
	t.Parallel()
	src := fixture(t)
	src.fail["Checkpoint kv"] = errors.New("boom: CRIU said no")
	m := started(t, src)
	settle(t, m, press("c"), press("y"))
	if m.running != nil || m.flash.level != "bad" || !strings.Contains(m.flash.text, "CRIU said no") {
		t.Errorf("flash %q (%s)", m.flash.text, m.flash.level)
	}
	if !strings.Contains(plain(m), "checkpoint failed: boom") {
		t.Errorf("the error is not on screen:\n%s", plain(m))
	}
}

func TestActionRefusedWithReason(t *testing.T) {
	t.Parallel()
	m := started(t, fixture(t))
	settle(t, m, press("j"), press("c")) // web is stopped
	if m.confirm != nil {
		t.Fatal("checkpoint of a stopped app asked for confirmation")
	}
	if !strings.Contains(m.flash.text, "web is stopped") {
		t.Errorf("flash %q", m.flash.text)
	}
	settle(t, m, press("s"))
	if m.confirm != nil || !strings.Contains(m.flash.text, "already stopped") {
		t.Errorf("stop of a stopped app: confirm %v, flash %q", m.confirm, m.flash.text)
	}
}

func TestRestoreHereForcesOverDeadOP(t *testing.T) {
	t.Parallel()
	src := fixture(t)
	// kv's OP is n3, which is dead; this node (n1) holds a clone.
	src.setApp("kv", func(a *api.AppInfo) {
		a.OP, a.State = "n3", api.AppFailed
		a.Clones = []api.CloneInfo{{Node: "n1", State: api.CloneInSync, AckedEpoch: 42}}
	})
	src.nodes[2].State = api.NodeDead
	m := started(t, src)
	settle(t, m, press("r"))
	if m.confirm == nil {
		t.Fatalf("no confirmation: %q", m.flash.text)
	}
	q := m.confirm.question
	for _, want := range []string{"n3 is dead", "restore kv here on n1", "the clone n1 holds", "manual failover"} {
		if !strings.Contains(q, want) {
			t.Errorf("question %q lacks %q", q, want)
		}
	}
	_, cmd := m.Update(press("y"))
	msgs := run(cmd, time.Second)
	if got := strings.Join(src.Calls(), ","); !strings.Contains(got, "Restore kv 0 force=true") {
		t.Fatalf("calls %s", got)
	}
	settle(t, m, msgs...)
	// The daemon answered "restoring": the action waits for the app to run here.
	if m.running == nil || !m.running.waiting {
		t.Fatalf("not waiting for the restore to finish: %+v", m.running)
	}
	if !strings.Contains(plain(m), "waiting for kv to be running on n1") {
		t.Errorf("no progress:\n%s", plain(m))
	}
	src.setApp("kv", func(a *api.AppInfo) { a.State = api.AppRunning })
	settle(t, m, m.fetch("apps")())
	if m.running != nil || m.flash.level != "ok" || !strings.Contains(m.flash.text, "restored on n1") {
		t.Errorf("after the app runs: running %+v, flash %q", m.running, m.flash.text)
	}
}

func TestRestoreWhenStoppedDoesNotForce(t *testing.T) {
	t.Parallel()
	src := fixture(t)
	m := started(t, src)
	settle(t, m, press("j"), press("r"))
	if m.confirm == nil || !strings.Contains(m.confirm.question, "restore web here on n1") {
		t.Fatalf("confirm %+v, flash %q", m.confirm, m.flash.text)
	}
	settle(t, m, press("y"))
	if got := strings.Join(src.Calls(), ","); !strings.Contains(got, "Restore web 0 force=false") {
		t.Errorf("calls %s", got)
	}
}

// fakeDemo records the nodes it kills.
type fakeDemo struct {
	mu     sync.Mutex
	killed []string
}

func (d *fakeDemo) KillNode(ctx context.Context, node string) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.killed = append(d.killed, node)
	return node + " killed: daemon (pid 1) and kv (pid 2)", nil
}

func (d *fakeDemo) Hint() string { return "demo: x kills a node" }

func TestDemoKillAttachesToASurvivor(t *testing.T) {
	t.Parallel()
	n1, n2 := fixture(t), fixture(t)
	n2.status.Node = "n2"
	demo := &fakeDemo{}
	var dialed []string
	var mu sync.Mutex
	m := started(t, n1, func(c *Config) {
		c.Demo = demo
		c.Endpoints = []Endpoint{{Node: "n1", Socket: "/n1.sock"}, {Node: "n2", Socket: "/n2.sock"}, {Node: "n3", Socket: "/n3.sock"}}
		c.Dial = func(s string) Source {
			mu.Lock()
			defer mu.Unlock()
			dialed = append(dialed, s)
			if s == "/n2.sock" {
				return n2
			}
			return n1
		}
	})
	if !strings.Contains(plain(m), "demo: x kills a node") {
		t.Errorf("no demo hint:\n%s", plain(m))
	}
	settle(t, m, press("x"))
	if m.confirm == nil || !strings.Contains(m.confirm.question, "failure of n1") {
		t.Fatalf("confirm %+v, flash %q", m.confirm, m.flash.text)
	}
	settle(t, m, press("y"))
	if !reflect.DeepEqual(demo.killed, []string{"n1"}) {
		t.Errorf("killed %v", demo.killed)
	}
	// n2 holds a clone of kv: the dashboard attached to it.
	if m.attachedNode() != "n2" || !m.connected {
		t.Errorf("attached to %q (connected %v), want n2", m.attachedNode(), m.connected)
	}
	if !strings.Contains(m.flash.text, "attached to n2") {
		t.Errorf("flash %q", m.flash.text)
	}
	mu.Lock()
	defer mu.Unlock()
	if dialed[len(dialed)-1] != "/n2.sock" {
		t.Errorf("dialed %v", dialed)
	}
}

func TestKillNodeHiddenOutsideDemo(t *testing.T) {
	t.Parallel()
	m := started(t, fixture(t))
	settle(t, m, press("x"))
	if m.confirm != nil {
		t.Error("x asked to kill a node outside the demo")
	}
	if strings.Contains(plain(m), "kill node") {
		t.Error("the help shows the demo's key outside the demo")
	}
}

func TestAttachKey(t *testing.T) {
	t.Parallel()
	n1, n2 := fixture(t), fixture(t)
	n2.status.Node = "n2"
	m := started(t, n1, func(c *Config) {
		c.Endpoints = []Endpoint{{Node: "n1", Socket: "/n1.sock"}, {Node: "n2", Socket: "/n2.sock"}}
		c.Dial = func(s string) Source {
			if s == "/n2.sock" {
				return n2
			}
			return n1
		}
	})
	settle(t, m, press("1"), press("j"), press("a"))
	if m.attachedNode() != "n2" {
		t.Errorf("attached to %q, want n2", m.attachedNode())
	}
	// n3 has no known socket.
	settle(t, m, press("j"), press("a"))
	if m.attachedNode() != "n2" || !strings.Contains(m.flash.text, "no API socket known for n3") {
		t.Errorf("attached to %q, flash %q", m.attachedNode(), m.flash.text)
	}
}

func TestReconnectsWithBackoff(t *testing.T) {
	t.Parallel()
	src := fixture(t)
	m := started(t, src)
	gen := m.gen
	src.mu.Lock()
	src.down = true
	src.mu.Unlock()
	// The stream ends: the dashboard says so and schedules a reconnection.
	settle(t, m, streamEndMsg{gen: gen, err: errors.New("unexpected EOF")})
	if m.connected || m.gen == gen {
		t.Fatal("still connected after the stream ended")
	}
	s := plain(m)
	if !strings.Contains(s, "disconnected") || !strings.Contains(s, "reconnecting in 250ms (attempt 1)") {
		t.Errorf("no reconnection status:\n%s", s)
	}
	// Messages of the old connection are dropped.
	settle(t, m, nodesMsg{gen: gen, nodes: nil})
	if len(m.nodes.nodes) != 3 {
		t.Error("a stale answer replaced the node list")
	}
	// Each failed attempt doubles the wait, up to ReconnectMax.
	var waits []time.Duration
	for range 7 {
		settle(t, m, reconnectMsg{gen: m.gen})
		waits = append(waits, m.retryAt.Sub(t0))
	}
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second, 5 * time.Second}
	if !reflect.DeepEqual(waits, want) {
		t.Errorf("waits %v, want %v", waits, want)
	}
	// The daemon is back.
	src.mu.Lock()
	src.down = false
	src.mu.Unlock()
	settle(t, m, reconnectMsg{gen: m.gen})
	if !m.connected || m.attempt != 0 {
		t.Errorf("not reconnected: %v", m.lastErr)
	}
	if strings.Contains(plain(m), "disconnected") {
		t.Error("still says disconnected")
	}
}

func TestPollErrorNoDaemonReconnects(t *testing.T) {
	t.Parallel()
	src := fixture(t)
	m := started(t, src)
	settle(t, m, nodesMsg{gen: m.gen, err: &api.NoDaemonError{Socket: "/x"}})
	if m.connected {
		t.Error("a poll that found no daemon did not start a reconnection")
	}
}

func TestPollTicksCarryGeneration(t *testing.T) {
	t.Parallel()
	src := fixture(t)
	m := started(t, src)
	before := len(src.Calls())
	// A tick of an older generation is dropped and re-arms nothing.
	_, cmd := m.Update(nodesTickMsg{gen: m.gen - 1})
	if msgs := run(cmd, 50*time.Millisecond); len(msgs) != 0 {
		t.Errorf("stale tick produced %v", msgs)
	}
	if len(src.Calls()) != before {
		t.Errorf("stale tick made requests: %v", src.Calls()[before:])
	}
	// A current one polls nodes and status.
	settle(t, m, nodesTickMsg{gen: m.gen})
	got := strings.Join(src.Calls()[before:], ",")
	if !strings.Contains(got, "Nodes") || !strings.Contains(got, "Status") {
		t.Errorf("tick polled %s", got)
	}
}

func TestEventsDrivePanes(t *testing.T) {
	t.Parallel()
	src := fixture(t)
	m := started(t, src)
	before := len(src.Calls())
	seq := m.lastSeq
	ev := func(e api.Event) {
		seq++
		e.Seq, e.Time = seq, t0
		settle(t, m, eventMsg{gen: m.gen, ev: e})
	}
	// A new checkpoint in progress: PSB, then RM started.
	ev(api.Event{Kind: api.KindPhase, App: "kv", Epoch: 43, Phase: "PSB"})
	ev(api.Event{Kind: api.KindPhase, App: "kv", Epoch: 43, Phase: "PSB", End: true, DurationMs: 0.5})
	ev(api.Event{Kind: api.KindPhase, App: "kv", Epoch: 43, Phase: "RM"})
	if !m.phases.Animating() {
		t.Error("no animation while a phase runs")
	}
	settle(t, m, press("4"))
	if s := plain(m); !strings.Contains(s, "#43") || !strings.Contains(s, "RM…") {
		t.Errorf("the phase in progress is not shown:\n%s", s)
	}
	ev(api.Event{Kind: api.KindPhase, App: "kv", Epoch: 43, Phase: "RM", End: true, DurationMs: 7})
	ev(api.Event{Kind: api.KindPhase, App: "kv", Epoch: 43, Phase: "SRM"})
	ev(api.Event{Kind: api.KindPhase, App: "kv", Epoch: 43, Phase: "SRM", End: true, DurationMs: 2})
	ev(api.Event{Kind: api.KindPhase, App: "kv", Epoch: 43, Phase: "PRM"})
	ev(api.Event{Kind: api.KindPhase, App: "kv", Epoch: 43, Phase: "PRM", End: true, DurationMs: 90})
	ev(api.Event{Kind: api.KindEpoch, App: "kv", Epoch: 43, Fields: map[string]any{"pages_changed": 30.0}})
	if !m.phases.Animating() {
		t.Error("no animation while the transfers run")
	}
	if got := strings.Join(src.Calls()[before:], ","); !strings.Contains(got, "Epochs kv") || !strings.Contains(got, "Apps") {
		t.Errorf("an epoch event refreshed %s, want the apps and kv's epochs", got)
	}
	for _, c := range []string{"n2", "n3"} {
		ev(api.Event{Kind: api.KindPhase, App: "kv", Epoch: 43, Phase: "XFER", End: true, DurationMs: 10, Fields: map[string]any{"clone": c}})
		ev(api.Event{Kind: api.KindPhase, App: "kv", Epoch: 43, Phase: "ACK", End: true, DurationMs: 5, Fields: map[string]any{"clone": c}})
		ev(api.Event{Kind: api.KindAck, App: "kv", Epoch: 43, Node: c, Fields: map[string]any{"bytes": 2048.0, "clone": c}})
	}
	if m.phases.Animating() {
		t.Error("still animating after every clone acknowledged")
	}
	s := plain(m)
	if !strings.Contains(s, "XFER 10.0  ACK 5.0 ms") || !strings.Contains(s, "sent n2 2.0 KiB ✓ · n3 2.0 KiB ✓") {
		t.Errorf("epoch 43's details:\n%s", s)
	}
	// A member event refreshes the nodes and shows in the log.
	before = len(src.Calls())
	ev(api.Event{Kind: api.KindMember, Node: "n3", Message: "n3 is dead"})
	if got := strings.Join(src.Calls()[before:], ","); !strings.Contains(got, "Nodes") {
		t.Errorf("a member event refreshed %s", got)
	}
	settle(t, m, press("5"))
	if s := plain(m); !strings.Contains(s, "n3 is dead") {
		t.Errorf("the log lacks the death:\n%s", s)
	}
}

func TestReplayedEventsDropped(t *testing.T) {
	t.Parallel()
	src := fixture(t)
	m := started(t, src)
	n := len(m.events.log)
	// A new stream replays the history: nothing is added twice.
	for _, ev := range src.history {
		m.Update(eventMsg{gen: m.gen, ev: ev})
	}
	if len(m.events.log) != n {
		t.Errorf("log grew from %d to %d on a replay", n, len(m.events.log))
	}
	// A restarted daemon numbers from 1 again, with newer times: kept.
	m.Update(eventMsg{gen: m.gen, ev: api.Event{Seq: 1, Time: t0.Add(time.Minute), Kind: api.KindApp, App: "kv", Message: "kv started"}})
	if len(m.events.log) != n+1 {
		t.Errorf("the first event of a restarted daemon was dropped")
	}
}

func TestEventsPaneRoutineAndFollow(t *testing.T) {
	t.Parallel()
	m := started(t, fixture(t))
	settle(t, m, press("5"))
	if s := plain(m); strings.Contains(s, "acknowledged epoch") {
		t.Errorf("acks shown without v:\n%s", s)
	}
	settle(t, m, press("v"))
	if s := plain(m); !strings.Contains(s, "n2 acknowledged epoch 42") {
		t.Errorf("acks not shown with v:\n%s", s)
	}
	settle(t, m, press("k"))
	if m.events.follow {
		t.Error("still following after moving up")
	}
	settle(t, m, press("f"))
	if !m.events.follow {
		t.Error("f did not follow again")
	}
}

func TestTreeCollapseKeptAcrossRefresh(t *testing.T) {
	t.Parallel()
	src := fixture(t)
	m := started(t, src)
	settle(t, m, press("3"))
	// Row 0 is the findings, open; closed, the root process (bash)
	// follows.
	if m.tree.cursor != "#findings" {
		t.Fatalf("cursor on %q, want the findings", m.tree.cursor)
	}
	settle(t, m, press("enter"), press("j"))
	if m.tree.cursor != "proc:9713" {
		t.Fatalf("cursor on %q", m.tree.cursor)
	}
	settle(t, m, press("j"), press("enter")) // open the descriptors of bash
	if !m.tree.open["proc:9713#descriptors"] {
		t.Fatalf("descriptors not open: %v", m.tree.open)
	}
	if s := plain(m); !strings.Contains(s, "fd 0,1,2,10 device /dev/null") {
		t.Errorf("the descriptors are not listed:\n%s", s)
	}
	settle(t, m, press("k"), press("h")) // close bash
	if s := plain(m); strings.Contains(s, "9716 python3") {
		t.Errorf("the children of a closed process are shown:\n%s", s)
	}
	// A refresh of the graph keeps what is open and closed, and the cursor.
	settle(t, m, m.fetch("detail")())
	if m.tree.isOpen(&tnode{id: "proc:9713"}) || !m.tree.open["proc:9713#descriptors"] || m.tree.cursor != "proc:9713" {
		t.Errorf("refresh lost the state: open %v, cursor %q", m.tree.open, m.tree.cursor)
	}
	settle(t, m, press("l"))
	if s := plain(m); !strings.Contains(s, "9716 python3") {
		t.Errorf("l did not open bash:\n%s", s)
	}
}

func TestTreeContent(t *testing.T) {
	t.Parallel()
	m := started(t, fixture(t))
	settle(t, m, press("3"))
	// Everything open: each kind of group has its rows.
	var openAll func(ns []*tnode)
	openAll = func(ns []*tnode) {
		for _, n := range ns {
			m.tree.open[n.id] = true
			openAll(n.children)
		}
	}
	openAll(m.tree.roots)
	var b strings.Builder
	for _, r := range m.tree.rows() {
		b.WriteString(verdictText(r.n.level) + " " + r.n.text + " — " + r.n.reason + "\n")
	}
	all := b.String()
	for _, want := range []string{
		"✗ preflight findings (3)",
		"✗ pipe pipe:[2328219] — pipe end also held outside the tree by pid 9705 (bash) fd 251",
		"fd 4 tcp listen 127.0.0.1:47123",
		"fd 5 tcp established 127.0.0.1:47123 → 127.0.0.1:44900",
		"! file /tmp/tuifix/data/app.log",
		"anon-private:",
		"pipe → 9803 cat via pipe:2328442",
		"tcp ← 9801 python3 via tcp:2328924",
		"shares pipe:2328219 with outside pid 9705 bash (fd 251)",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("tree lacks %q:\n%s", want, all)
		}
	}
	// The filter keeps matching rows and their ancestors.
	m.tree.SetFilter("47123")
	rows := m.tree.rows()
	var texts []string
	for _, r := range rows {
		texts = append(texts, r.n.text)
	}
	got := strings.Join(texts, "|")
	if !strings.Contains(got, "9716 python3") || !strings.Contains(got, "sockets (2)") || strings.Contains(got, "9802 sleep") {
		t.Errorf("filter rows: %s", got)
	}
}

func TestTreeWithoutGraph(t *testing.T) {
	t.Parallel()
	m := started(t, fixture(t))
	settle(t, m, press("j"), press("3"))
	if s := plain(m); !strings.Contains(s, "no resource graph: web is stopped") {
		t.Errorf("screen:\n%s", s)
	}
}

func TestSmallTerminal(t *testing.T) {
	t.Parallel()
	m := started(t, fixture(t))
	settle(t, m, tea.WindowSizeMsg{Width: 50, Height: 12})
	s := plain(m)
	if !strings.Contains(s, "needs a terminal of at least 60×16") {
		t.Errorf("screen:\n%s", s)
	}
	checkSize(t, s, 50, 12)
}

func TestEveryLayoutFitsTheTerminal(t *testing.T) {
	t.Parallel()
	m := started(t, fixture(t))
	for _, size := range [][2]int{{60, 16}, {80, 24}, {100, 30}, {119, 40}, {120, 32}, {160, 50}, {250, 70}} {
		settle(t, m, tea.WindowSizeMsg{Width: size[0], Height: size[1]})
		for _, k := range []string{"1", "2", "3", "4", "5", "?", "x"} {
			settle(t, m, press(k))
			checkSize(t, plain(m), size[0], size[1])
		}
	}
}

func TestNoColor(t *testing.T) {
	t.Parallel()
	src := fixture(t)
	m := started(t, src)
	for _, k := range []string{"1", "2", "3", "4", "5"} {
		settle(t, m, press(k))
		s := m.Render()
		// SGR colour parameters: 30-37, 38;..., 90-97 and backgrounds.
		for _, seq := range []string{"[38;", "[48;", "[31m", "[32m", "[33m", ";38;", ";48;"} {
			if strings.Contains(s, seq) {
				t.Fatalf("pane %s: colour sequence %q without colours", k, seq)
			}
		}
	}
	// With colours, the same screens have some.
	mc := started(t, fixture(t), func(c *Config) { c.NoColor = false })
	if s := mc.Render(); !strings.Contains(s, "38;") {
		t.Error("no colour at all with colours on")
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	if _, err := New(Config{}); !errors.Is(err, ErrNoEndpoint) {
		t.Errorf("no endpoint: %v", err)
	}
	if _, err := New(Config{Endpoints: []Endpoint{{Node: "x"}}}); err == nil {
		t.Error("an endpoint without socket was accepted")
	}
	m, err := New(Config{Endpoints: []Endpoint{{Socket: "/s"}}})
	if err != nil {
		t.Fatal(err)
	}
	d := DefaultConfig("/s")
	if m.cfg.PollNodes != d.PollNodes || m.cfg.EventLog != d.EventLog || m.cfg.Logger == nil || m.cfg.Dial == nil {
		t.Errorf("defaults not filled: %+v", m.cfg)
	}
}

func TestHungDaemonCountsAsLost(t *testing.T) {
	t.Parallel()
	m := started(t, fixture(t))
	timeout := fmt.Errorf("GET /v1/nodes: %w", context.DeadlineExceeded)
	settle(t, m, nodesMsg{gen: m.gen, err: timeout})
	if !m.connected {
		t.Fatal("one timeout counted as a lost daemon")
	}
	settle(t, m, nodesMsg{gen: m.gen, err: timeout})
	if m.connected || !strings.Contains(m.lastErr.Error(), "does not answer") {
		t.Errorf("two timeouts in a row: connected %v, err %v", m.connected, m.lastErr)
	}
}

func TestPhasesOfAnAppElsewhere(t *testing.T) {
	t.Parallel()
	src := fixture(t)
	src.status.Node = "n2"
	m := started(t, src)
	settle(t, m, press("4"))
	if s := plain(m); !strings.Contains(s, "kv runs on n1, which publishes its phases") {
		t.Errorf("no note on where live phases come from:\n%s", s)
	}
}

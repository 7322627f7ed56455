package tui

import (
	"fmt"
	"strings"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"
	"github.com/charmbracelet/x/exp/golden"
	"github.com/charmbracelet/x/exp/teatest/v2"
)

// The golden files in testdata/ are the screens of the dashboard at fixed
// sizes, as plain text. After an intended change of the screens, rewrite
// them with: go test ./tui -run Golden -update

// probe asks the running program for its screen and whether check holds;
// the harness answers from the program's goroutine, so tests never touch
// the model concurrently.
type probe struct {
	check func(m *Model) bool
	reply chan probeAnswer
}

type probeAnswer struct {
	screen string
	ok     bool
}

// harness wraps the model for teatest and answers probes.
type harness struct{ m *Model }

func (h harness) Init() tea.Cmd { return h.m.Init() }

func (h harness) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	if p, ok := msg.(probe); ok {
		a := probeAnswer{screen: h.m.Render(), ok: true}
		if p.check != nil {
			a.ok = p.check(h.m)
		}
		p.reply <- a
		return h, nil
	}
	_, cmd := h.m.Update(msg)
	if h.m.quitting {
		return h, tea.Quit
	}
	return h, cmd
}

func (h harness) View() tea.View { return h.m.View() }

// program runs the dashboard on src in a teatest program of w×h cells.
func program(t *testing.T, cfg Config, w, h int) *teatest.TestModel {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tm := teatest.NewTestModel(t, harness{m}, teatest.WithInitialTermSize(w, h))
	t.Cleanup(func() {
		_ = tm.Quit()
		tm.WaitFinished(t, teatest.WithFinalTimeout(5*time.Second))
		m.Close()
	})
	return tm
}

// ask sends a probe and returns the answer.
func ask(t *testing.T, tm *teatest.TestModel, check func(*Model) bool) probeAnswer {
	t.Helper()
	reply := make(chan probeAnswer, 1)
	tm.Send(probe{check: check, reply: reply})
	select {
	case a := <-reply:
		a.screen = ansi.Strip(a.screen)
		return a
	case <-time.After(5 * time.Second):
		t.Fatal("the program did not answer a probe within 5s")
		return probeAnswer{}
	}
}

// waitScreen polls the screen until ok accepts it.
func waitScreen(t *testing.T, tm *teatest.TestModel, what string, ok func(string) bool) string {
	t.Helper()
	return waitModel(t, tm, what, nil, ok)
}

// waitModel polls until check accepts the model and ok the screen.
func waitModel(t *testing.T, tm *teatest.TestModel, what string, check func(*Model) bool, ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var a probeAnswer
	for time.Now().Before(deadline) {
		a = ask(t, tm, check)
		if a.ok && (ok == nil || ok(a.screen)) {
			return a.screen
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("never saw %s; last screen:\n%s", what, a.screen)
	return ""
}

// keys types keys into the program.
func keys(tm *teatest.TestModel, ks ...string) {
	for _, k := range ks {
		switch k {
		case "tab":
			tm.Send(tea.KeyPressMsg{Code: tea.KeyTab})
		case "enter":
			tm.Send(tea.KeyPressMsg{Code: tea.KeyEnter})
		case "esc":
			tm.Send(tea.KeyPressMsg{Code: tea.KeyEscape})
		case "down":
			tm.Send(tea.KeyPressMsg{Code: tea.KeyDown})
		default:
			tm.Type(k)
		}
	}
}

// loaded says whether the model shows the whole fixture: every event of
// the history received, nodes, apps, the graph and the epochs of kv.
func loaded(src *fakeSource) func(*Model) bool {
	src.mu.Lock()
	last := src.history[len(src.history)-1].Seq
	src.mu.Unlock()
	return func(m *Model) bool {
		return m.connected && m.lastSeq == last && len(m.nodes.nodes) > 0 && len(m.apps.apps) > 0 &&
			m.tree.graph != nil && m.phases.hist["kv"] != nil && m.phases.hist["kv"].byEpoch[40] != nil &&
			m.phases.hist["kv"].byEpoch[40].info != nil && !m.inflight["apps"] && !m.inflight["nodes"]
	}
}

// TestGolden checks every pane at 80×24 (one pane at a time) and 120×40
// (all panes, the named one focused) against testdata/TestGolden/*.golden.
func TestGolden(t *testing.T) {
	panes := []struct {
		name string
		key  string
		want string // text that shows the pane is filled
	}{
		{"nodes", "1", "n3"},
		{"apps", "2", "clone n3"},
		{"resources", "3", "preflight findings"},
		{"checkpoints", "4", "#42"},
		{"events", "5", "promoted"},
	}
	for _, size := range []struct{ w, h int }{{80, 24}, {120, 40}} {
		for _, p := range panes {
			t.Run(fmt.Sprintf("%dx%d/%s", size.w, size.h, p.name), func(t *testing.T) {
				src := fixture(t)
				tm := program(t, testConfig(src), size.w, size.h)
				waitModel(t, tm, "the fixture", loaded(src), nil)
				keys(tm, p.key)
				s := waitScreen(t, tm, p.name, func(s string) bool { return strings.Contains(s, p.want) })
				checkSize(t, s, size.w, size.h)
				golden.RequireEqual(t, []byte(s))
			})
		}
	}
}

// TestGoldenHelp checks the full help screen at 80×24.
func TestGoldenHelp(t *testing.T) {
	src := fixture(t)
	tm := program(t, testConfig(src), 80, 24)
	waitModel(t, tm, "the fixture", loaded(src), nil)
	keys(tm, "?")
	s := waitScreen(t, tm, "the help", func(s string) bool { return strings.Contains(s, "Help") })
	checkSize(t, s, 80, 24)
	golden.RequireEqual(t, []byte(s))
	keys(tm, "x")
	waitScreen(t, tm, "the panes again", func(s string) bool { return !strings.Contains(s, "any key closes") })
}

// checkSize asserts that a screen is exactly w×h cells.
func checkSize(t *testing.T, s string, w, h int) {
	t.Helper()
	lines := strings.Split(s, "\n")
	if len(lines) != h {
		t.Errorf("screen has %d lines, want %d", len(lines), h)
	}
	for i, l := range lines {
		if got := ansi.StringWidth(l); got != w {
			t.Errorf("line %d is %d cells wide, want %d: %q", i+1, got, w, l)
		}
	}
}

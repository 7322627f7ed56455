package tui

import (
	"fmt"
	"strings"

	"charm.land/bubbles/v2/key"
	tea "charm.land/bubbletea/v2"

	"doppel/node/api"
)

// eventsPane is the scrolling log of the cluster's events: joins,
// suspicions, deaths, promotions, relocations, app changes and errors
// (epochs and acknowledgements too with v). It follows the newest event
// until the operator scrolls up.
type eventsPane struct {
	env     *env
	w, h    int
	log     []api.Event
	verbose bool
	filter  string
	cursor  int  // index in the visible list
	follow  bool // the cursor stays on the newest event
	off     int
}

func newEventsPane(e *env) *eventsPane { return &eventsPane{env: e, follow: true} }

func (p *eventsPane) Title() string {
	t := fmt.Sprintf("Events %d", len(p.visible()))
	if !p.follow {
		t += " · paused (f follows)"
	}
	return t
}

func (p *eventsPane) SetSize(w, h int) { p.w, p.h = w, h }

func (p *eventsPane) SetFilter(f string) {
	p.filter = f
	p.follow = true
}

func (p *eventsPane) Keys() []key.Binding {
	return []key.Binding{p.env.keys.Verbose, p.env.keys.Follow}
}

// routine events are hidden unless verbose: epochs and acknowledgements
// come every interval, member updates (load, memory) every few seconds.
func routine(ev api.Event) bool {
	switch ev.Kind {
	case api.KindEpoch, api.KindAck, api.KindPhase:
		return true
	case api.KindMember:
		return strings.HasSuffix(ev.Message, " is update")
	}
	return false
}

// memberVerbs rewrites the daemon's "NODE is KIND" member messages.
var memberVerbs = map[string]string{
	" is join": " joined", " is leave": " left", " is update": " updated its metadata",
	" is suspect": " is suspect", " is dead": " is dead",
}

func (p *eventsPane) visible() []api.Event {
	var out []api.Event
	for _, ev := range p.log {
		if ev.Kind == api.KindPhase || (routine(ev) && !p.verbose) {
			continue
		}
		if matches(p.text(ev), p.filter) {
			out = append(out, ev)
		}
	}
	return out
}

func (p *eventsPane) Update(msg tea.Msg) tea.Cmd {
	switch msg := msg.(type) {
	case eventMsg:
		p.log = append(p.log, msg.ev)
		if len(p.log) > p.env.cfg.EventLog {
			drop := len(p.log) - p.env.cfg.EventLog
			p.log = append([]api.Event(nil), p.log[drop:]...)
			if !p.follow {
				p.cursor = max(p.cursor-drop, 0)
			}
		}
	case tea.KeyPressMsg:
		km := p.env.keys
		n := len(p.visible())
		switch {
		case key.Matches(msg, km.Verbose):
			p.verbose = !p.verbose
			p.follow = true
		case key.Matches(msg, km.Follow):
			p.follow = true
		default:
			if p.follow {
				p.cursor = n - 1
			}
			if listNav(msg, km, &p.cursor, n, p.h) {
				p.follow = p.cursor >= n-1
			}
		}
	}
	return nil
}

// text is an event as one line, without time: its kind, then the node
// and app it concerns unless its message names them.
func (p *eventsPane) text(ev api.Event) string {
	var b strings.Builder
	b.WriteString(fmt.Sprintf("%-9s", ev.Kind))
	msg := ev.Message
	if ev.Kind == api.KindMember {
		for from, to := range memberVerbs {
			if strings.HasSuffix(msg, from) {
				msg = strings.TrimSuffix(msg, from) + to
			}
		}
	}
	if msg == "" && ev.Epoch > 0 {
		msg = fmt.Sprintf("epoch %d", ev.Epoch)
	}
	var who []string
	if ev.Node != "" && !strings.Contains(msg, ev.Node) {
		who = append(who, ev.Node)
	}
	if ev.App != "" && !strings.Contains(msg, ev.App) {
		who = append(who, ev.App)
	}
	if len(who) > 0 {
		b.WriteString(" [" + strings.Join(who, " ") + "]")
	}
	if msg != "" {
		b.WriteString(" " + msg)
	}
	return b.String()
}

func (p *eventsPane) kindStyle(kind, s string) string {
	st := p.env.styles
	switch kind {
	case api.KindError:
		return st.Bad.Render(s)
	case api.KindMember, api.KindPromotion, api.KindRelocation:
		return st.Warn.Render(s)
	case api.KindApp:
		return st.Info.Render(s)
	}
	return st.Dim.Render(s)
}

func (p *eventsPane) View() string {
	st := p.env.styles
	v := p.visible()
	if p.follow || p.cursor >= len(v) {
		p.cursor = len(v) - 1
	}
	var lines []string
	if len(v) == 0 {
		msg := "no event yet"
		if p.filter != "" {
			msg = "no event matches /" + p.filter
		}
		lines = append(lines, st.Dim.Render(msg))
	}
	p.off = scrollWindow(max(p.cursor, 0), p.off, p.h, len(v))
	for i := p.off; i < len(v) && i < p.off+p.h; i++ {
		ev := v[i]
		ts := ev.Time.Local().Format("15:04:05")
		line := ts + " " + p.text(ev)
		if i == p.cursor && !p.follow {
			lines = append(lines, st.Selected.Render(fit(line, p.w)))
			continue
		}
		lines = append(lines, st.Dim.Render(ts)+" "+p.kindStyle(ev.Kind, p.text(ev)))
	}
	return strings.Join(block(lines, p.w, p.h), "\n")
}

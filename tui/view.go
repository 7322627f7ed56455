package tui

import (
	"fmt"
	"strings"
	"time"

	"charm.land/bubbles/v2/key"
	tea "charm.land/bubbletea/v2"

	"doppel/node/api"
)

// flashFor is how long a message stays in the status line (errors stay
// until the next message).
const flashFor = 10 * time.Second

// Sizes of the layouts.
const (
	minWidth, minHeight   = 60, 16
	gridWidth, gridHeight = 120, 32
)

// rect is where a pane is drawn, frame included.
type rect struct{ x, y, w, h int }

// grid says whether every pane fits on screen at once; otherwise one pane
// shows at a time, chosen by tabs.
func (m *Model) grid() bool { return m.width >= gridWidth && m.height >= gridHeight }

// rects lays the panes out in the body (everything but the header, the
// status line and the help line; and the tabs in the narrow layout).
func (m *Model) rects() [numPanes]rect {
	var r [numPanes]rect
	w := m.width
	if !m.grid() {
		h := m.height - 4
		for i := range r {
			r[i] = rect{0, 0, w, h}
		}
		return r
	}
	h := m.height - 3
	top := clamp(h/3, 7, 12)
	half := w / 2
	left := w * 45 / 100
	bottom := h - top
	ph := clamp(bottom*55/100, 8, bottom-5)
	r[paneNodes] = rect{0, 0, half, top}
	r[paneApps] = rect{half, 0, w - half, top}
	r[paneTree] = rect{0, top, left, bottom}
	r[panePhases] = rect{left, top, w - left, ph}
	r[paneEvents] = rect{left, top + ph, w - left, bottom - ph}
	return r
}

// layout gives each pane its content size.
func (m *Model) layout() {
	m.help.SetWidth(m.width)
	m.filter.SetWidth(max(m.width-4, 10))
	for i, r := range m.rects() {
		m.panes[i].SetSize(max(r.w-2, 0), max(r.h-2, 0))
	}
}

// View implements tea.Model.
func (m *Model) View() tea.View {
	v := tea.NewView(m.Render())
	v.AltScreen = true
	v.WindowTitle = "doppel"
	return v
}

// Render is the whole screen as text, exactly width×height cells.
func (m *Model) Render() string {
	if m.width == 0 || m.height == 0 {
		return ""
	}
	if m.width < minWidth || m.height < minHeight {
		msg := fmt.Sprintf("doppel needs a terminal of at least %d×%d (this one is %d×%d)", minWidth, minHeight, m.width, m.height)
		return strings.Join(block([]string{msg}, m.width, m.height), "\n")
	}
	lines := []string{m.header()}
	if !m.grid() {
		lines = append(lines, m.tabs())
	}
	lines = append(lines, m.body()...)
	lines = append(lines, m.statusLine(), m.helpLine())
	return strings.Join(block(lines, m.width, m.height), "\n")
}

func (m *Model) paneTitle(i paneID) string {
	t := m.panes[i].Title()
	if f := m.filters[i]; f != "" {
		t += " · /" + f
	}
	return t
}

// body draws the panes (or the full help).
func (m *Model) body() []string {
	rs := m.rects()
	if m.showHelp {
		h := rs[0].h
		if m.grid() {
			h = m.height - 3
		}
		hm := m.help
		hm.ShowAll = true
		content := strings.Join(append([]string{m.styles.Bold.Render("Keys"), ""}, strings.Split(hm.View(m.helpKeys()), "\n")...), "\n")
		content += "\n\n" + m.styles.Dim.Render(legendText())
		return strings.Split(frame("Help · any key closes", content, m.width, h, true, m.styles), "\n")
	}
	if !m.grid() {
		r := rs[m.focus]
		return strings.Split(frame(m.paneTitle(m.focus), m.panes[m.focus].View(), r.w, r.h, true, m.styles), "\n")
	}
	canvas := make([][]string, m.height-3)
	for i := range canvas {
		canvas[i] = nil
	}
	for i := range numPanes {
		r := rs[i]
		box := strings.Split(frame(m.paneTitle(i), m.panes[i].View(), r.w, r.h, i == m.focus, m.styles), "\n")
		for j, l := range box {
			if r.y+j < len(canvas) {
				canvas[r.y+j] = append(canvas[r.y+j], l)
			}
		}
	}
	out := make([]string, len(canvas))
	for i, parts := range canvas {
		out[i] = strings.Join(parts, "")
	}
	return out
}

// legendText explains the glyphs.
func legendText() string {
	return strings.Join([]string{
		glyphLeader + " raft leader   " + glyphSelf + " the node attached to   " + glyphOpen + " " + glyphClosed + " open/closed",
		glyphOK + " ok, in sync   " + glyphWarn + " warning, lagging   " + glyphBlocker + " blocker, failed   … syncing",
		"▓ PSB barrier   ▒ RM resource graph   ░ SRM system resources",
		"█ PRM memory    = XFER transfer       - ACK acknowledgement",
	}, "\n")
}

// header is the top line: the node attached to and the cluster's state;
// the connection state on the right.
func (m *Model) header() string {
	st := m.styles
	node := m.attachedNode()
	if node == "" {
		node = m.cfg.Endpoints[m.ep].Socket
	}
	left := st.Header.Render("doppel") + " · " + glyphSelf + " " + node
	if m.status.Node != "" {
		s := m.status
		leader := dash(s.Leader)
		left += " · leader " + leader
		if s.Quorum {
			left += " · quorum " + st.OK.Render(glyphOK)
		} else {
			q := "quorum " + glyphBlocker
			if s.QuorumReason != "" {
				q += " (" + s.QuorumReason + ")"
			}
			left += " · " + st.Bad.Render(q)
		}
		left += fmt.Sprintf(" · %d node(s) alive · %d app(s)", s.Members, s.Apps)
	}
	var right string
	if m.connected {
		right = st.OK.Render("connected")
	} else if m.lastErr != nil {
		right = st.Bad.Render("disconnected")
	} else {
		right = st.Info.Render("connecting…")
	}
	return spread(left, right, m.width)
}

// tabs names the panes of the narrow layout, the focused one marked.
func (m *Model) tabs() string {
	var parts []string
	for i := range numPanes {
		t := fmt.Sprintf(" %d %s ", i+1, paneNames[i])
		if i == m.focus {
			parts = append(parts, m.styles.TabOn.Render("["+strings.TrimSpace(t)+"]"))
		} else {
			parts = append(parts, m.styles.TabOff.Render(t))
		}
	}
	return strings.Join(parts, " ")
}

// spinner is a frame of the progress indicator.
func (m *Model) spinner() string {
	frames := []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}
	return frames[m.frame%len(frames)]
}

// statusLine is the confirmation question, the filter being typed, the
// action in progress, the connection trouble or the last message.
func (m *Model) statusLine() string {
	st := m.styles
	now := m.cfg.Now()
	switch {
	case m.confirm != nil:
		return st.Prompt.Render(fit(m.confirm.question+" [y/N]", m.width))
	case m.filtering:
		return m.filter.View()
	case m.running != nil:
		r := m.running
		el := now.Sub(r.started).Round(100 * time.Millisecond)
		text := fmt.Sprintf("%s %s %s… %s", m.spinner(), r.name, r.app, el)
		if r.waiting {
			text = fmt.Sprintf("%s %s · waiting for %s to be %s", m.spinner(), r.result.text, r.result.waitApp, r.result.waitState)
			if r.result.waitNode != "" {
				text += " on " + r.result.waitNode
			}
			text += fmt.Sprintf("… %s", el)
		}
		return st.Info.Render(fit(text, m.width))
	case !m.connected && m.lastErr != nil:
		wait := m.retryAt.Sub(now)
		text := fmt.Sprintf("%s daemon unreachable, reconnecting", glyphBlocker)
		if wait > 0 {
			text += fmt.Sprintf(" in %s", wait.Round(10*time.Millisecond))
		} else {
			text += " " + m.spinner()
		}
		text += fmt.Sprintf(" (attempt %d): %v", m.attempt, m.lastErr)
		return st.Bad.Render(fit(text, m.width))
	case m.flash.text != "" && (m.flash.level == "bad" || now.Sub(m.flash.at) < flashFor):
		return st.level(m.flash.level).Render(fit(m.flash.text, m.width))
	case m.cfg.Demo != nil:
		return st.Dim.Render(fit(m.cfg.Demo.Hint(), m.width))
	}
	return st.Dim.Render(fit(m.idleHint(), m.width))
}

// idleHint suggests what to do with the selection.
func (m *Model) idleHint() string {
	a, ok := m.apps.Selected()
	if !ok {
		return "tab: next pane · ?: help"
	}
	switch {
	case a.State == api.AppRunning:
		return fmt.Sprintf("%s: c checkpoint now · s stop · r restore here", a.Name)
	case a.OP == "":
		return fmt.Sprintf("%s is stopped: r restores it here from the newest epoch this node holds", a.Name)
	}
	return fmt.Sprintf("%s is %s on %s: r restores it here", a.Name, a.State, a.OP)
}

// helpKeys is the key map for the help line at this moment.
func (m *Model) helpKeys() helpKeys {
	var acts []key.Binding
	for _, a := range m.actions {
		if a.key.Enabled() {
			acts = append(acts, a.key)
		}
	}
	pk := m.panes[m.focus].Keys()
	if m.focus == paneNodes && m.keys.Attach.Enabled() {
		pk = append(pk, m.keys.Attach)
	}
	return helpKeys{km: m.keys, pane: pk, actions: acts}
}

func (m *Model) helpLine() string {
	if m.confirm != nil {
		return m.help.ShortHelpView([]key.Binding{m.keys.Confirm, m.keys.Cancel})
	}
	if m.filtering {
		return m.styles.Dim.Render("type to filter · enter keeps it · esc clears it")
	}
	return m.help.View(m.helpKeys())
}

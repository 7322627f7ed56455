package tui

import (
	"strings"

	"charm.land/bubbles/v2/key"
	tea "charm.land/bubbletea/v2"
)

// pane is one part of the dashboard. The root model routes messages to
// it: data messages to every pane, keys to the focused one only.
type pane interface {
	// Update handles a message; panes keep their state behind a pointer.
	Update(msg tea.Msg) tea.Cmd
	// View is the pane's content, exactly the size given to SetSize.
	View() string
	// SetSize sets the content size in cells (the frame is drawn around
	// it by the root model).
	SetSize(w, h int)
	// Title is shown in the pane's frame.
	Title() string
	// Keys are the pane's own bindings, for the help.
	Keys() []key.Binding
	// SetFilter narrows what the pane lists to rows containing f.
	SetFilter(f string)
}

// paneID names the panes, in tab order.
type paneID int

const (
	paneNodes paneID = iota
	paneApps
	paneTree
	panePhases
	paneEvents
	numPanes
)

var paneNames = [numPanes]string{"Nodes", "Apps", "Resources", "Checkpoints", "Events"}

// env is what every pane shares, read-only after construction.
type env struct {
	styles Styles
	keys   KeyMap
	cfg    Config
}

// frame draws a box of w×h cells around content (w-2 × h-2), with the
// title in the top line. The focused pane has a heavy frame.
func frame(title, content string, w, h int, focused bool, st Styles) string {
	if w < 4 || h < 2 {
		return strings.Join(block(nil, max(w, 0), max(h, 0)), "\n")
	}
	tl, tr, bl, br, hz, vt := "╭", "╮", "╰", "╯", "─", "│"
	bs, ts := st.Border, st.Title
	if focused {
		tl, tr, bl, br, hz, vt = "┏", "┓", "┗", "┛", "━", "┃"
		bs, ts = st.FocBorder, st.FocTitle
	}
	inner := w - 2
	t := " " + title + " "
	if width(t) > inner-2 {
		t = fit(t, max(inner-2, 0))
	}
	top := bs.Render(tl+hz) + ts.Render(t) + bs.Render(strings.Repeat(hz, max(inner-1-width(t), 0))+tr)
	lines := []string{top}
	body := strings.Split(content, "\n")
	for _, l := range block(body, inner, h-2) {
		lines = append(lines, bs.Render(vt)+l+bs.Render(vt))
	}
	lines = append(lines, bs.Render(bl+strings.Repeat(hz, inner)+br))
	return strings.Join(lines, "\n")
}

// listNav moves a cursor over n rows of a list shown h rows at a time; it
// reports whether the key was a navigation key.
func listNav(msg tea.KeyPressMsg, km KeyMap, cursor *int, n, h int) bool {
	switch {
	case key.Matches(msg, km.Up):
		*cursor--
	case key.Matches(msg, km.Down):
		*cursor++
	case key.Matches(msg, km.Top):
		*cursor = 0
	case key.Matches(msg, km.Bottom):
		*cursor = n - 1
	case key.Matches(msg, km.PageUp):
		*cursor -= max(h-1, 1)
	case key.Matches(msg, km.PageDown):
		*cursor += max(h-1, 1)
	default:
		return false
	}
	*cursor = clamp(*cursor, 0, n-1)
	return true
}

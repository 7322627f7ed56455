package tui

import "charm.land/bubbles/v2/key"

// KeyMap is every key binding of the dashboard, in one place. Panes read
// the bindings they use from it; bubbles/help renders it.
type KeyMap struct {
	Up, Down, Left, Right key.Binding
	Top, Bottom           key.Binding
	PageUp, PageDown      key.Binding
	Toggle                key.Binding // expand or collapse a tree row
	NextPane, PrevPane    key.Binding
	Pane                  key.Binding // 1-5: jump to a pane
	Filter                key.Binding
	ClearFilter           key.Binding
	Help                  key.Binding
	Quit                  key.Binding

	// Actions on the selected app or node; each one asks for confirmation.
	Checkpoint key.Binding
	Stop       key.Binding
	Restore    key.Binding
	Kill       key.Binding // demo only: simulate a node failure
	Relocate   key.Binding
	Failover   key.Binding
	Drain      key.Binding
	Undrain    key.Binding
	Attach     key.Binding // attach to the selected node (demo: any node)
	Confirm    key.Binding
	Cancel     key.Binding

	// Pane-specific toggles.
	Verbose key.Binding // events: show epochs and acks too
	Follow  key.Binding // events: jump to the newest and follow
}

// DefaultKeyMap has k9s/htop habits: arrows and hjkl, tab between panes,
// / to filter, ? for help, q to quit.
func DefaultKeyMap() KeyMap {
	return KeyMap{
		Up:          key.NewBinding(key.WithKeys("up", "k"), key.WithHelp("↑/k", "up")),
		Down:        key.NewBinding(key.WithKeys("down", "j"), key.WithHelp("↓/j", "down")),
		Left:        key.NewBinding(key.WithKeys("left", "h"), key.WithHelp("←/h", "collapse")),
		Right:       key.NewBinding(key.WithKeys("right", "l"), key.WithHelp("→/l", "expand")),
		Top:         key.NewBinding(key.WithKeys("home", "g"), key.WithHelp("g/home", "top")),
		Bottom:      key.NewBinding(key.WithKeys("end", "G"), key.WithHelp("G/end", "bottom")),
		PageUp:      key.NewBinding(key.WithKeys("pgup", "ctrl+b"), key.WithHelp("pgup", "page up")),
		PageDown:    key.NewBinding(key.WithKeys("pgdown", "ctrl+f"), key.WithHelp("pgdn", "page down")),
		Toggle:      key.NewBinding(key.WithKeys("enter", "space"), key.WithHelp("enter", "expand/collapse")),
		NextPane:    key.NewBinding(key.WithKeys("tab"), key.WithHelp("tab", "next pane")),
		PrevPane:    key.NewBinding(key.WithKeys("shift+tab"), key.WithHelp("shift+tab", "previous pane")),
		Pane:        key.NewBinding(key.WithKeys("1", "2", "3", "4", "5"), key.WithHelp("1-5", "go to pane")),
		Filter:      key.NewBinding(key.WithKeys("/"), key.WithHelp("/", "filter")),
		ClearFilter: key.NewBinding(key.WithKeys("esc"), key.WithHelp("esc", "clear filter")),
		Help:        key.NewBinding(key.WithKeys("?"), key.WithHelp("?", "help")),
		Quit:        key.NewBinding(key.WithKeys("q", "ctrl+c"), key.WithHelp("q", "quit")),

		Checkpoint: key.NewBinding(key.WithKeys("c"), key.WithHelp("c", "checkpoint now")),
		Stop:       key.NewBinding(key.WithKeys("s"), key.WithHelp("s", "stop app")),
		Restore:    key.NewBinding(key.WithKeys("r"), key.WithHelp("r", "restore here")),
		Kill:       key.NewBinding(key.WithKeys("x"), key.WithHelp("x", "kill node (demo)")),
		Relocate:   key.NewBinding(key.WithKeys("m"), key.WithHelp("m", "move app to the selected node")),
		Failover:   key.NewBinding(key.WithKeys("F"), key.WithHelp("F", "fail over to a clone")),
		Drain:      key.NewBinding(key.WithKeys("d"), key.WithHelp("d", "drain node")),
		Undrain:    key.NewBinding(key.WithKeys("u"), key.WithHelp("u", "undrain node")),
		Attach:     key.NewBinding(key.WithKeys("a"), key.WithHelp("a", "attach to node")),
		Confirm:    key.NewBinding(key.WithKeys("y", "Y"), key.WithHelp("y", "confirm")),
		Cancel:     key.NewBinding(key.WithKeys("n", "N", "esc"), key.WithHelp("n/esc", "cancel")),

		Verbose: key.NewBinding(key.WithKeys("v"), key.WithHelp("v", "epochs/acks in log")),
		Follow:  key.NewBinding(key.WithKeys("f"), key.WithHelp("f", "follow newest")),
	}
}

// helpKeys is the KeyMap as bubbles/help sees it at one moment: the
// global bindings plus those of the focused pane and the actions that
// apply.
type helpKeys struct {
	km      KeyMap
	pane    []key.Binding
	actions []key.Binding
}

// ShortHelp implements help.KeyMap.
func (h helpKeys) ShortHelp() []key.Binding {
	out := []key.Binding{h.km.NextPane}
	out = append(out, h.actions...)
	out = append(out, h.pane...)
	return append(out, h.km.Filter, h.km.Help, h.km.Quit)
}

// FullHelp implements help.KeyMap.
func (h helpKeys) FullHelp() [][]key.Binding {
	nav := []key.Binding{h.km.Up, h.km.Down, h.km.Left, h.km.Right, h.km.Top, h.km.Bottom, h.km.PageUp, h.km.PageDown}
	panes := []key.Binding{h.km.NextPane, h.km.PrevPane, h.km.Pane, h.km.Toggle, h.km.Filter, h.km.ClearFilter, h.km.Help, h.km.Quit}
	acts := append([]key.Binding{}, h.actions...)
	acts = append(acts, h.km.Confirm, h.km.Cancel)
	return [][]key.Binding{nav, panes, acts, h.pane}
}

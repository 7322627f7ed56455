package tui

import (
	"fmt"
	"sort"
	"strings"

	"charm.land/bubbles/v2/key"
	tea "charm.land/bubbletea/v2"

	"doppel/node/api"
)

// nodesPane lists the cluster's members: name (★ raft leader, ● the node
// attached to), role, state, load, memory, apps hosted and clones held.
type nodesPane struct {
	env     *env
	w, h    int
	nodes   []api.NodeInfo
	err     error
	filter  string
	cursor  int
	off     int
	focused string // name under the cursor, kept across refreshes
}

func newNodesPane(e *env) *nodesPane { return &nodesPane{env: e} }

var nodeColumns = []column{
	{title: "NODE", width: 8, flex: true},
	{title: "ROLE", width: 7, prio: 5},
	{title: "STATE", width: 15},
	{title: "LOAD", width: 5, right: true, prio: 2},
	{title: "MEM FREE", width: 9, right: true, prio: 3},
	{title: "APPS", width: 8, prio: 1},
	{title: "CLONES", width: 8, prio: 1},
}

func (p *nodesPane) Title() string {
	alive := 0
	for _, n := range p.nodes {
		if n.State == api.NodeAlive {
			alive++
		}
	}
	return fmt.Sprintf("Nodes %d/%d alive", alive, len(p.nodes))
}

func (p *nodesPane) SetSize(w, h int) { p.w, p.h = w, h }

func (p *nodesPane) SetFilter(f string) {
	p.filter = f
	p.cursor = 0
	p.follow()
}

func (p *nodesPane) Keys() []key.Binding {
	return []key.Binding{p.env.keys.Up, p.env.keys.Down}
}

// visible is the node list after the filter.
func (p *nodesPane) visible() []api.NodeInfo {
	var out []api.NodeInfo
	for _, n := range p.nodes {
		if matches(strings.Join(p.cells(n), " "), p.filter) {
			out = append(out, n)
		}
	}
	return out
}

// Selected is the node under the cursor.
func (p *nodesPane) Selected() (api.NodeInfo, bool) {
	v := p.visible()
	if p.cursor < 0 || p.cursor >= len(v) {
		return api.NodeInfo{}, false
	}
	return v[p.cursor], true
}

// Nodes is the last list received.
func (p *nodesPane) Nodes() []api.NodeInfo { return p.nodes }

// follow puts the cursor back on the node it was on.
func (p *nodesPane) follow() {
	v := p.visible()
	for i, n := range v {
		if n.Name == p.focused {
			p.cursor = i
			return
		}
	}
	p.cursor = clamp(p.cursor, 0, len(v)-1)
	if p.cursor < len(v) {
		p.focused = v[p.cursor].Name
	}
}

func (p *nodesPane) Update(msg tea.Msg) tea.Cmd {
	switch msg := msg.(type) {
	case nodesMsg:
		if msg.err != nil {
			p.err = msg.err
			return nil
		}
		p.err = nil
		p.nodes = append([]api.NodeInfo(nil), msg.nodes...)
		sort.SliceStable(p.nodes, func(i, j int) bool { return p.nodes[i].Name < p.nodes[j].Name })
		p.follow()
	case attachedMsg:
		p.nodes, p.err = nil, nil
	case tea.KeyPressMsg:
		v := p.visible()
		if listNav(msg, p.env.keys, &p.cursor, len(v), p.h-1) && p.cursor < len(v) {
			p.focused = v[p.cursor].Name
		}
	}
	return nil
}

func (p *nodesPane) cells(n api.NodeInfo) []string {
	name := n.Name
	if n.Leader {
		name += " " + glyphLeader
	}
	if n.Self {
		name += " " + glyphSelf
	}
	state := n.State
	if n.Drained {
		state += ",drained"
	}
	mem := "-"
	if n.MemTotal > 0 {
		mem = fmt.Sprintf("%s/%s", compactBytes(int64(n.MemFree)), compactBytes(int64(n.MemTotal)))
	}
	return []string{
		name, n.Role, state, fmt.Sprintf("%.2f", n.Load), mem,
		dash(strings.Join(n.Apps, ",")), dash(strings.Join(n.Clones, ",")),
	}
}

func (p *nodesPane) stateStyle(state string, s string) string {
	st := p.env.styles
	switch state {
	case api.NodeAlive:
		return st.OK.Render(s)
	case api.NodeSuspect:
		return st.Warn.Render(s)
	case api.NodeDead:
		return st.Bad.Render(s)
	}
	return st.Dim.Render(s)
}

func (p *nodesPane) View() string {
	st := p.env.styles
	keep, widths := layoutColumns(nodeColumns, p.w)
	lines := []string{tableHeader(nodeColumns, keep, widths, st.ColHead)}
	v := p.visible()
	switch {
	case p.err != nil && len(p.nodes) == 0:
		lines = append(lines, st.Bad.Render(p.err.Error()))
	case len(p.nodes) == 0:
		lines = append(lines, st.Dim.Render("waiting for the daemon…"))
	case len(v) == 0:
		lines = append(lines, st.Dim.Render("no node matches /"+p.filter))
	}
	rows := p.h - 1
	p.off = scrollWindow(p.cursor, p.off, rows, len(v))
	for i := p.off; i < len(v) && i < p.off+rows; i++ {
		n := v[i]
		var row string
		if i == p.cursor {
			row = st.Selected.Render(fit(tableRow(p.cells(n), nodeColumns, keep, widths), p.w))
		} else {
			row = styledRow(p.cells(n), nodeColumns, keep, widths, func(col int, cell string) string {
				if col == 2 {
					return p.stateStyle(n.State, cell)
				}
				return cell
			})
		}
		lines = append(lines, row)
	}
	return strings.Join(block(lines, p.w, p.h), "\n")
}

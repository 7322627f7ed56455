package tui

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"charm.land/bubbles/v2/key"
	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"

	"doppel/introspect"
)

// treePane shows the resource graph of the selected app as a tree:
// processes (parent to child), each with its descriptors, sockets, memory,
// IPC, files written and dependencies, with verdict markers. Rows are
// collapsible; what is open or closed is remembered by graph node ID, so
// refreshes (the app forks, opens, closes) keep the view.
type treePane struct {
	env    *env
	w, h   int
	app    string
	graph  *introspect.Graph
	at     time.Time // when the graph was fetched
	node   string    // the node the app runs on (the one that scanned)
	state  string    // the app's state, when there is no graph
	err    error
	roots  []*tnode
	open   map[string]bool // explicit choices by row ID
	cursor string          // row ID under the cursor
	off    int
	filter string
	counts struct{ procs, resources, warn, blocker int }
}

// tnode is one row of the tree before flattening.
type tnode struct {
	id       string
	text     string
	level    introspect.Level // verdict, "" for none
	reason   string
	group    bool // a group of a process (closed by default)
	children []*tnode
}

// trow is a visible row.
type trow struct {
	n     *tnode
	depth int
	open  bool
}

func newTreePane(e *env) *treePane { return &treePane{env: e, open: map[string]bool{}} }

func (p *treePane) Title() string {
	if p.app == "" {
		return "Resources"
	}
	if p.node != "" {
		return fmt.Sprintf("Resources · %s on %s", p.app, p.node)
	}
	return "Resources · " + p.app
}

func (p *treePane) SetSize(w, h int) { p.w, p.h = w, h }

func (p *treePane) SetFilter(f string) { p.filter = f }

func (p *treePane) Keys() []key.Binding {
	return []key.Binding{p.env.keys.Toggle, p.env.keys.Left, p.env.keys.Right}
}

// HasGraph says whether a graph is shown (it is worth refreshing).
func (p *treePane) HasGraph() bool { return p.graph != nil }

func (p *treePane) Update(msg tea.Msg) tea.Cmd {
	switch msg := msg.(type) {
	case selectAppMsg:
		if msg.app != p.app {
			p.app, p.graph, p.roots, p.err, p.node, p.state = msg.app, nil, nil, nil, "", ""
			p.cursor, p.off = "", 0
		}
	case attachedMsg:
		p.graph, p.roots, p.err = nil, nil, nil
	case detailMsg:
		if msg.app != p.app {
			return nil
		}
		if msg.err != nil {
			p.err = msg.err
			return nil
		}
		p.err = nil
		p.node, p.state, p.at = msg.detail.OP, msg.detail.State, msg.at
		if len(msg.detail.Graph) == 0 {
			p.graph, p.roots = nil, nil
			return nil
		}
		var g introspect.Graph
		if err := json.Unmarshal(msg.detail.Graph, &g); err != nil {
			p.err = fmt.Errorf("resource graph of %s: %w", p.app, err)
			return nil
		}
		g.BuildIndex()
		p.graph = &g
		p.roots = p.build(&g)
		if p.cursor == "" && len(p.roots) > 0 {
			p.cursor = p.roots[0].id
		}
	case tea.KeyPressMsg:
		p.key(msg)
	}
	return nil
}

func (p *treePane) isOpen(n *tnode) bool {
	if v, ok := p.open[n.id]; ok {
		return v
	}
	return !n.group
}

// rows flattens the tree: open rows show their children; with a filter,
// everything is open and only matching rows and their ancestors show.
func (p *treePane) rows() []trow {
	var out []trow
	var walk func(ns []*tnode, depth int) bool
	walk = func(ns []*tnode, depth int) bool {
		any := false
		for _, n := range ns {
			if p.filter != "" {
				mark := len(out)
				out = append(out, trow{n: n, depth: depth, open: true})
				sub := walk(n.children, depth+1)
				if !sub && !matches(n.text+" "+n.reason, p.filter) {
					out = out[:mark]
					continue
				}
				any = true
				continue
			}
			open := p.isOpen(n)
			out = append(out, trow{n: n, depth: depth, open: open})
			any = true
			if open {
				walk(n.children, depth+1)
			}
		}
		return any
	}
	walk(p.roots, 0)
	return out
}

func (p *treePane) key(msg tea.KeyPressMsg) {
	rows := p.rows()
	if len(rows) == 0 {
		return
	}
	i := 0
	for j, r := range rows {
		if r.n.id == p.cursor {
			i = j
		}
	}
	km := p.env.keys
	cur := rows[i]
	switch {
	case key.Matches(msg, km.Toggle):
		if len(cur.n.children) > 0 {
			p.open[cur.n.id] = !cur.open
		}
	case key.Matches(msg, km.Right):
		if len(cur.n.children) > 0 && !cur.open {
			p.open[cur.n.id] = true
		} else if cur.open && len(cur.n.children) > 0 && i+1 < len(rows) {
			i++
		}
	case key.Matches(msg, km.Left):
		if cur.open && len(cur.n.children) > 0 && p.filter == "" {
			p.open[cur.n.id] = false
		} else {
			for j := i - 1; j >= 0; j-- {
				if rows[j].depth < cur.depth {
					i = j
					break
				}
			}
		}
	default:
		listNav(msg, km, &i, len(rows), p.h-1)
	}
	rows = p.rows()
	i = clamp(i, 0, len(rows)-1)
	p.cursor = rows[i].n.id
}

func (p *treePane) marker(l introspect.Level) string {
	st := p.env.styles
	switch l {
	case introspect.LevelBlocker:
		return st.Bad.Render(glyphBlocker)
	case introspect.LevelWarn:
		return st.Warn.Render(glyphWarn)
	case introspect.LevelOK:
		return st.OK.Render(glyphOK)
	}
	return " "
}

func (p *treePane) View() string {
	st := p.env.styles
	var lines []string
	switch {
	case p.app == "":
		lines = append(lines, st.Dim.Render("no app selected"))
	case p.err != nil:
		lines = append(lines, st.Bad.Render(p.err.Error()))
	case p.graph == nil && p.state == "":
		lines = append(lines, st.Dim.Render("loading the resource graph of "+p.app+"…"))
	case p.graph == nil:
		lines = append(lines, st.Dim.Render(fmt.Sprintf("no resource graph: %s is %s (a graph is read where the app runs)", p.app, p.state)))
	}
	if p.graph == nil {
		return strings.Join(block(lines, p.w, p.h), "\n")
	}
	c := p.counts
	sum := fmt.Sprintf("%d process(es) · %d resource(s) · %s %d %s %d · scanned %s",
		c.procs, c.resources, glyphBlocker, c.blocker, glyphWarn, c.warn, p.graph.Time.Local().Format("15:04:05"))
	if p.graph.Partial {
		sum += " · partial: " + strconv.Itoa(len(p.graph.Problems)) + " problem(s)"
	}
	lines = append(lines, st.Dim.Render(sum))
	rows := p.rows()
	ci := 0
	for j, r := range rows {
		if r.n.id == p.cursor {
			ci = j
		}
	}
	if len(rows) > 0 {
		p.cursor = rows[ci].n.id
	}
	// The row under the cursor, in full, at the bottom: rows are cut at
	// the pane's width.
	var foot []string
	if len(rows) > 0 && p.h >= 8 {
		r := rows[ci].n
		full := r.text
		if id := graphID(r.id); id != "" {
			full = id + ": " + full
		}
		if r.reason != "" {
			full += " — " + r.reason
		}
		foot = strings.Split(ansi.Wrap(full, p.w, " /,"), "\n")
		if len(foot) > 2 {
			foot = foot[:2]
			foot[1] = fit(foot[1]+" …", p.w)
		}
		for i := range foot {
			foot[i] = st.Dim.Render(foot[i])
		}
	}
	h := p.h - 1 - len(foot)
	p.off = scrollWindow(ci, p.off, h, len(rows))
	for j := p.off; j < len(rows) && j < p.off+h; j++ {
		r := rows[j]
		fold := " "
		if len(r.n.children) > 0 {
			fold = glyphClosed
			if r.open {
				fold = glyphOpen
			}
		}
		text := r.n.text
		if r.n.reason != "" && r.n.level.Rank() > 0 {
			text += " — " + r.n.reason
		}
		line := strings.Repeat("  ", r.depth) + fold + " " + p.marker(r.n.level) + " " + text
		if j == ci {
			line = st.Selected.Render(fit(strings.Repeat("  ", r.depth)+fold+" "+verdictText(r.n.level)+" "+text, p.w))
		}
		lines = append(lines, line)
	}
	lines = block(lines, p.w, p.h-len(foot))
	lines = append(lines, foot...)
	return strings.Join(block(lines, p.w, p.h), "\n")
}

// graphID is the graph node a row stands for ("" for groups).
func graphID(rowID string) string {
	if strings.Contains(rowID, "#") {
		return ""
	}
	if i := strings.LastIndex(rowID, "|"); i >= 0 {
		return rowID[i+1:]
	}
	return rowID
}

// verdictText is the marker without style (inside a reversed row).
func verdictText(l introspect.Level) string {
	switch l {
	case introspect.LevelBlocker:
		return glyphBlocker
	case introspect.LevelWarn:
		return glyphWarn
	case introspect.LevelOK:
		return glyphOK
	}
	return " "
}

// worst is the most severe of levels.
func worst(levels ...introspect.Level) introspect.Level {
	var w introspect.Level
	for _, l := range levels {
		if w == "" || l.Rank() > w.Rank() {
			w = l
		}
	}
	return w
}

// socketKinds are the resource kinds listed under "sockets".
var socketKinds = map[introspect.NodeKind]bool{
	introspect.KindTCP: true, introspect.KindUDP: true, introspect.KindUnix: true,
	introspect.KindRawSocket: true, introspect.KindNetlink: true, introspect.KindPacket: true,
	introspect.KindSocket: true,
}

// depKinds are the edges between processes (and to the outside) listed
// under "dependencies".
var depKinds = map[introspect.EdgeKind]bool{
	introspect.EdgePipe: true, introspect.EdgeSocketpair: true, introspect.EdgeUnix: true,
	introspect.EdgeTCP: true, introspect.EdgeSharedMemory: true, introspect.EdgeSysVShm: true,
	introspect.EdgeShares: true, introspect.EdgeExternal: true,
}

// build turns a graph into the tree of rows.
func (p *treePane) build(g *introspect.Graph) []*tnode {
	p.counts = struct{ procs, resources, warn, blocker int }{}
	for _, n := range g.Nodes {
		if n.Kind == introspect.KindProcess {
			p.counts.procs++
		} else {
			p.counts.resources++
		}
		switch n.Verdict.Level {
		case introspect.LevelWarn:
			p.counts.warn++
		case introspect.LevelBlocker:
			p.counts.blocker++
		}
	}
	children := map[string][]string{}
	hasParent := map[string]bool{}
	byFrom := map[string][]introspect.Edge{}
	byTo := map[string][]introspect.Edge{}
	for _, e := range g.Edges {
		if e.Kind == introspect.EdgeChild {
			children[e.From] = append(children[e.From], e.To)
			hasParent[e.To] = true
			continue
		}
		byFrom[e.From] = append(byFrom[e.From], e)
		byTo[e.To] = append(byTo[e.To], e)
	}
	var procNode func(n *introspect.Node, seen map[string]bool) *tnode
	procNode = func(n *introspect.Node, seen map[string]bool) *tnode {
		seen[n.ID] = true
		t := &tnode{id: n.ID, level: n.Verdict.Level, reason: n.Verdict.Reason}
		pr := n.Process
		pid := 0
		if pr != nil {
			pid = pr.PID
			t.text = fmt.Sprintf("%d %s", pr.PID, pr.Comm)
			if len(pr.NSPID) > 1 {
				t.text += fmt.Sprintf(" (ns pid %d)", pr.NSPID[len(pr.NSPID)-1])
			}
			t.text += fmt.Sprintf(" · %s · rss %s · %d fd(s) · %d thread(s)", pr.State, compactBytes(int64(pr.RSS)), pr.FDCount, pr.ThreadCount)
		} else {
			t.text = n.Label
		}
		groups := p.groups(g, n, pid, byFrom[n.ID], byTo[n.ID])
		for _, gr := range groups {
			t.level = worst(t.level, gr.level)
		}
		t.children = append(t.children, groups...)
		for _, cid := range children[n.ID] {
			if c := g.Node(cid); c != nil && !seen[cid] {
				ct := procNode(c, seen)
				t.children = append(t.children, ct)
			}
		}
		return t
	}
	// The findings come first: they say whether the tree can be
	// checkpointed at all.
	roots := []*tnode{p.findings(g)}
	seen := map[string]bool{}
	for _, n := range g.Nodes {
		if n.Kind == introspect.KindProcess && !hasParent[n.ID] && !seen[n.ID] {
			roots = append(roots, procNode(n, seen))
		}
	}
	return roots
}

// fdsOf lists the descriptors of pid on a resource: "fd 3,4".
func fdsOf(n *introspect.Node, pid int) string {
	var fds []string
	for _, h := range n.Holders {
		if h.PID == pid {
			fds = append(fds, strconv.Itoa(h.FD))
		}
	}
	if len(fds) == 0 {
		return "fd ?"
	}
	return "fd " + strings.Join(fds, ",")
}

// resourceText describes a resource in one line.
func resourceText(n *introspect.Node) string {
	switch {
	case n.Socket != nil:
		s := n.Socket
		t := string(n.Kind)
		if s.State != "" {
			t += " " + s.State
		}
		if s.Local != "" {
			t += " " + s.Local
		}
		if s.Remote != "" {
			t += " → " + s.Remote
		}
		if s.RecvQueue > 0 || s.SendQueue > 0 {
			t += fmt.Sprintf(" (queues %d/%d)", s.RecvQueue, s.SendQueue)
		}
		return t
	case n.File != nil:
		t := string(n.Kind) + " " + n.File.Path
		if n.File.Deleted {
			t += " (deleted)"
		}
		return t
	case n.IPC != nil:
		t := fmt.Sprintf("%s %d", n.Kind, n.IPC.ID)
		if n.IPC.Size > 0 {
			t += " " + compactBytes(int64(n.IPC.Size))
		}
		if n.IPC.Attached > 0 {
			t += fmt.Sprintf(" attached %d", n.IPC.Attached)
		}
		return t
	case n.Peer != nil:
		return "peer " + n.Peer.Protocol + " " + n.Peer.Address
	}
	if n.Label != "" && n.Label != n.ID {
		return string(n.Kind) + " " + n.Label
	}
	return n.ID
}

// groups are the sections under one process.
func (p *treePane) groups(g *introspect.Graph, proc *introspect.Node, pid int, from, to []introspect.Edge) []*tnode {
	var fds, socks, mem, ipc, writes, deps []*tnode
	leaf := func(id, text string, v introspect.Verdict) *tnode {
		return &tnode{id: id, text: text, level: v.Level, reason: v.Reason}
	}
	for _, e := range from {
		r := g.Node(e.To)
		switch e.Kind {
		case introspect.EdgeHolds:
			if r == nil {
				continue
			}
			item := leaf(proc.ID+"|"+r.ID, fdsOf(r, pid)+" "+resourceText(r), r.Verdict)
			if socketKinds[r.Kind] {
				socks = append(socks, item)
			} else {
				fds = append(fds, item)
			}
			for _, o := range r.Outside {
				deps = append(deps, leaf(proc.ID+"|outside|"+r.ID+"|"+strconv.Itoa(o.PID),
					fmt.Sprintf("shares %s with outside pid %d %s (fd %d)", r.ID, o.PID, o.Comm, o.FD), r.Verdict))
			}
		case introspect.EdgeMaps:
			if r != nil {
				mem = append(mem, leaf(proc.ID+"|maps|"+r.ID, "maps "+resourceText(r), r.Verdict))
			}
		case introspect.EdgeOwns:
			if r != nil {
				ipc = append(ipc, leaf(proc.ID+"|owns|"+r.ID, resourceText(r), r.Verdict))
			}
		case introspect.EdgeWrites:
			if r != nil {
				t := resourceText(r)
				if r.File != nil && r.File.DataPath != "" {
					t += " (data path " + r.File.DataPath + ")"
				}
				writes = append(writes, leaf(proc.ID+"|writes|"+r.ID, t, r.Verdict))
			}
		case introspect.EdgeService:
			// The listening socket is already under sockets.
		default:
			if depKinds[e.Kind] {
				deps = append(deps, leaf(proc.ID+"|"+e.Key(), depText(g, e, true), viaVerdict(g, e)))
			}
		}
	}
	for _, e := range to {
		if depKinds[e.Kind] {
			deps = append(deps, leaf(proc.ID+"|in|"+e.Key(), depText(g, e, false), viaVerdict(g, e)))
		}
	}
	if pr := proc.Process; pr != nil {
		for _, s := range pr.MapSummary {
			mem = append(mem, leaf(proc.ID+"|mem|"+string(s.Kind),
				fmt.Sprintf("%s: %d mapping(s), %s", s.Kind, s.Count, compactBytes(int64(s.Size))), introspect.Verdict{}))
		}
	}
	var out []*tnode
	add := func(name string, items []*tnode) {
		if len(items) == 0 {
			return
		}
		sort.SliceStable(items, func(i, j int) bool { return items[i].level.Rank() > items[j].level.Rank() })
		gr := &tnode{id: proc.ID + "#" + name, group: true, children: items}
		for _, it := range items {
			gr.level = worst(gr.level, it.level)
		}
		gr.text = fmt.Sprintf("%s (%d)", name, len(items))
		out = append(out, gr)
	}
	add("descriptors", fds)
	add("sockets", socks)
	add("memory", mem)
	add("ipc", ipc)
	add("files written", writes)
	add("dependencies", deps)
	return out
}

// depText describes a dependency edge from the side of one process.
func depText(g *introspect.Graph, e introspect.Edge, outgoing bool) string {
	other := e.To
	arrow := "→"
	if !outgoing {
		other, arrow = e.From, "←"
	}
	name := other
	if n := g.Node(other); n != nil {
		if n.Process != nil {
			name = fmt.Sprintf("%d %s", n.Process.PID, n.Process.Comm)
		} else {
			name = resourceText(n)
		}
	}
	t := fmt.Sprintf("%s %s %s", e.Kind, arrow, name)
	if e.Via != "" {
		t += " via " + e.Via
	}
	return t
}

// viaVerdict is the verdict of the resource an edge goes through.
func viaVerdict(g *introspect.Graph, e introspect.Edge) introspect.Verdict {
	for _, id := range []string{e.Via, e.To} {
		if n := g.Node(id); n != nil && n.Kind != introspect.KindProcess {
			return n.Verdict
		}
	}
	return introspect.Verdict{Level: introspect.LevelOK}
}

// findings lists every warning and blocker of the graph, worst first.
func (p *treePane) findings(g *introspect.Graph) *tnode {
	var items []*tnode
	for _, n := range g.Nodes {
		if n.Verdict.Level.Rank() == 0 {
			continue
		}
		text := n.ID
		if n.Kind != introspect.KindProcess {
			text = resourceText(n)
		}
		items = append(items, &tnode{id: "findings|" + n.ID, text: text, level: n.Verdict.Level, reason: n.Verdict.Reason})
	}
	if len(items) == 0 {
		return &tnode{id: "#findings", text: "preflight: no warning, no blocker", level: introspect.LevelOK}
	}
	sort.SliceStable(items, func(i, j int) bool { return items[i].level.Rank() > items[j].level.Rank() })
	f := &tnode{id: "#findings", text: fmt.Sprintf("preflight findings (%d)", len(items)), children: items}
	for _, it := range items {
		f.level = worst(f.level, it.level)
	}
	return f
}

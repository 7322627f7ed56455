package introspect

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
)

// WriteJSON writes the graph as indented JSON (the format documented in
// the package doc).
func (g *Graph) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(g); err != nil {
		return fmt.Errorf("encode graph: %w", err)
	}
	return nil
}

// processEdgeKinds are the edges drawn between two processes.
var processEdgeKinds = map[EdgeKind]bool{
	EdgePipe: true, EdgeSocketpair: true, EdgeUnix: true, EdgeTCP: true,
	EdgeSharedMemory: true, EdgeSysVShm: true, EdgeShares: true,
}

// WriteText writes the graph as a plain-text tree for a terminal: each
// process with its resources and its children, then the dependencies
// between processes and outside the tree, then the preflight findings.
func (g *Graph) WriteText(w io.Writer) error {
	bw := bufio.NewWriter(w)
	procs := g.Processes()
	resources := 0
	for _, n := range g.Nodes {
		switch n.Kind {
		case KindProcess, KindPeer, KindOutsideProcess:
		default:
			resources++
		}
	}
	fmt.Fprintf(bw, "tree of pid %d (%s): %d processes, %d resources, %d edges, scanned in %s\n",
		g.Root, g.Scope, len(procs), resources, len(g.Edges), g.Duration.Round(10*time.Microsecond))
	if g.Partial {
		fmt.Fprintf(bw, "PARTIAL: %d part(s) could not be read\n", len(g.Problems))
	}

	children := map[string][]string{}
	held := map[string][]Edge{}
	for _, e := range g.Edges {
		switch e.Kind {
		case EdgeChild:
			children[e.From] = append(children[e.From], e.To)
		case EdgeHolds, EdgeMaps, EdgeOwns, EdgeService, EdgeExternal:
			held[e.From] = append(held[e.From], e)
		}
	}
	for _, c := range children {
		sort.Slice(c, func(i, j int) bool { return pidOf(c[i]) < pidOf(c[j]) })
	}
	var walk func(id, indent string, last, top bool)
	walk = func(id, indent string, last, top bool) {
		n := g.Node(id)
		if n == nil {
			return
		}
		branch, next := "├─ ", indent+"│  "
		if last {
			branch, next = "└─ ", indent+"   "
		}
		if top {
			branch, next = "", ""
		}
		fmt.Fprintf(bw, "%s%s%s\n", indent, branch, processLine(n))
		items := held[id]
		sort.SliceStable(items, func(i, j int) bool { return edgeOrder(items[i]) < edgeOrder(items[j]) })
		kids := children[id]
		for i, e := range items {
			b := "├─ "
			if i == len(items)-1 && len(kids) == 0 {
				b = "└─ "
			}
			fmt.Fprintf(bw, "%s%s%s\n", next, b, resourceLine(g, e))
		}
		for i, k := range kids {
			walk(k, next, i == len(kids)-1, false)
		}
	}
	walk(ProcessID(g.Root), "", true, true)
	// Processes not reached from the root (ScopePIDNamespace members).
	for _, p := range procs {
		if p.Process.PID == g.Root {
			continue
		}
		if pp := g.Node(ProcessID(p.Process.PPID)); pp == nil || pp.Kind != KindProcess {
			walk(p.ID, "", true, true)
		}
	}

	var deps []Edge
	for _, e := range g.Edges {
		if processEdgeKinds[e.Kind] || e.Kind == EdgeExternal || e.Kind == EdgeOutside || e.Kind == EdgeWrites {
			deps = append(deps, e)
		}
	}
	if len(deps) > 0 {
		fmt.Fprintf(bw, "\ndependencies:\n")
		for _, e := range deps {
			fmt.Fprintf(bw, "  %-13s %s -> %s", e.Kind, g.shortName(e.From), g.shortName(e.To))
			if e.Via != "" && e.Kind != EdgeExternal {
				fmt.Fprintf(bw, " via %s", e.Via)
			}
			fmt.Fprintf(bw, ": %s\n", e.Reason)
		}
	}
	if fs := g.Preflight(); len(fs) > 0 {
		fmt.Fprintf(bw, "\npreflight:\n")
		for _, f := range fs {
			node := f.Node
			if node == "" {
				node = "(scan)"
			}
			fmt.Fprintf(bw, "  %-7s %s: %s\n", strings.ToUpper(string(f.Level)), node, f.Reason)
		}
	} else {
		fmt.Fprintf(bw, "\npreflight: no findings\n")
	}
	return bw.Flush()
}

func pidOf(id string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(id, "proc:"))
	return n
}

// edgeOrder sorts the lines under a process: descriptors by number, then
// mappings and the rest.
func edgeOrder(e Edge) int {
	switch e.Kind {
	case EdgeHolds:
		r := strings.TrimPrefix(e.Reason, "fd ")
		if i := strings.IndexAny(r, " ,"); i >= 0 {
			r = r[:i]
		}
		n, _ := strconv.Atoi(r)
		return n
	case EdgeService:
		return 1 << 20
	case EdgeExternal:
		return 1<<20 + 1
	case EdgeMaps:
		return 1<<20 + 2
	}
	return 1<<20 + 3
}

func processLine(n *Node) string {
	p := n.Process
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s", p.PID, p.Comm)
	if len(p.NSPID) > 1 {
		fmt.Fprintf(&b, " [ns pid %d]", p.NSPID[len(p.NSPID)-1])
	}
	fmt.Fprintf(&b, " %s  threads %d  fds %d  cpu %s  rss %s", p.State, p.ThreadCount, p.FDCount,
		p.CPUTime.Round(time.Millisecond), humanBytes(p.RSS))
	if p.PSS > 0 {
		fmt.Fprintf(&b, "  pss %s", humanBytes(p.PSS))
	}
	if len(p.Mappings) > 0 {
		fmt.Fprintf(&b, "  maps %d", len(p.Mappings))
	}
	if len(p.Cmdline) > 0 {
		cmd := strings.Join(p.Cmdline, " ")
		if len(cmd) > 60 {
			cmd = cmd[:57] + "..."
		}
		fmt.Fprintf(&b, "  `%s`", cmd)
	}
	b.WriteString(verdictSuffix(n.Verdict))
	if len(p.Unreadable) > 0 {
		fmt.Fprintf(&b, "  UNREADABLE: %s", strings.Join(p.Unreadable, "; "))
	}
	return b.String()
}

func resourceLine(g *Graph, e Edge) string {
	n := g.Node(e.To)
	label := e.To
	var v Verdict
	if n != nil {
		label = n.Label
		if !strings.HasPrefix(label, string(n.Kind)) {
			label = string(n.Kind) + " " + label
		}
		v = n.Verdict
	}
	switch e.Kind {
	case EdgeHolds:
		return e.Reason + "  " + label + verdictSuffix(v)
	case EdgeService:
		return "service: " + e.Reason
	case EdgeExternal:
		return "external: " + e.Reason
	case EdgeMaps:
		return "maps " + label + " " + strings.TrimPrefix(e.Reason, "mapped ") + verdictSuffix(v)
	}
	return string(e.Kind) + " " + label + ": " + e.Reason + verdictSuffix(v)
}

func verdictSuffix(v Verdict) string {
	if v.Level.Rank() == 0 {
		return ""
	}
	return "  [" + strings.ToUpper(string(v.Level)) + ": " + v.Reason + "]"
}

// shortName is a node's label for the dependency list.
func (g *Graph) shortName(id string) string {
	n := g.Node(id)
	if n == nil {
		return id
	}
	if n.Kind == KindProcess {
		return n.Label
	}
	return n.ID
}

func humanBytes(b uint64) string {
	const unit = 1024
	if b < unit {
		return strconv.FormatUint(b, 10) + "B"
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

// WriteDOT writes the graph in Graphviz DOT: processes as boxes, resources
// as ellipses filled by verdict (orange warn, red blocker), edges labelled
// with their kind.
func (g *Graph) WriteDOT(w io.Writer) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "digraph %s {\n", dotQuote("tree "+strconv.Itoa(g.Root)))
	fmt.Fprintf(bw, "  rankdir=LR;\n  node [fontname=\"monospace\" fontsize=10];\n  edge [fontname=\"monospace\" fontsize=8];\n")
	for _, n := range g.Nodes {
		attrs := []string{"label=" + dotQuote(n.Label)}
		switch n.Kind {
		case KindProcess:
			attrs = append(attrs, "shape=box")
		case KindOutsideProcess:
			attrs = append(attrs, "shape=box", "style=dashed")
		case KindPeer:
			attrs = append(attrs, "shape=diamond", "style=dashed")
		default:
			attrs = append(attrs, "shape=ellipse")
		}
		switch n.Verdict.Level {
		case LevelWarn:
			attrs = append(attrs, "style=filled", "fillcolor=orange", "tooltip="+dotQuote(n.Verdict.Reason))
		case LevelBlocker:
			attrs = append(attrs, "style=filled", "fillcolor=red", "tooltip="+dotQuote(n.Verdict.Reason))
		}
		fmt.Fprintf(bw, "  %s [%s];\n", dotQuote(n.ID), strings.Join(attrs, " "))
	}
	for _, e := range g.Edges {
		attrs := []string{"label=" + dotQuote(string(e.Kind)), "tooltip=" + dotQuote(e.Reason)}
		switch {
		case e.Kind == EdgeChild:
			attrs = append(attrs, "style=bold")
		case processEdgeKinds[e.Kind]:
			attrs = append(attrs, "color=blue")
		case e.Kind == EdgeExternal || e.Kind == EdgeOutside:
			attrs = append(attrs, "style=dashed")
		case e.Kind == EdgeHolds || e.Kind == EdgeMaps:
			attrs = append(attrs, "color=gray")
		}
		fmt.Fprintf(bw, "  %s -> %s [%s];\n", dotQuote(e.From), dotQuote(e.To), strings.Join(attrs, " "))
	}
	fmt.Fprintf(bw, "}\n")
	return bw.Flush()
}

// dotQuote makes a DOT double-quoted string.
func dotQuote(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		default:
			if r < 0x20 {
				b.WriteString(fmt.Sprintf("\\\\x%02x", r))
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}

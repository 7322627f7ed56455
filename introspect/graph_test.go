package introspect

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

// sampleGraph builds a small graph by hand: a parent and a child joined by
// a pipe, a file, and one blocker.
func sampleGraph() *Graph {
	g := &Graph{Root: 10, Scope: ScopeTree, Time: time.Unix(0, 0), Duration: 3 * time.Millisecond}
	g.Nodes = []*Node{
		{ID: "proc:10", Kind: KindProcess, Label: "10 app", Verdict: Verdict{Level: LevelOK},
			Process: &Process{PID: 10, NSPID: []int{10, 1}, SID: 10, Comm: "app", State: "S", CPUTime: time.Second, RSS: 4 << 20,
				Threads: []Thread{{TID: 10, Comm: "app", State: "S"}}, ThreadCount: 1}},
		{ID: "proc:11", Kind: KindProcess, Label: "11 worker", Verdict: Verdict{Level: LevelBlocker, Reason: "traced by pid 99 (ptrace): CRIU cannot seize a traced task"},
			Process: &Process{PID: 11, PPID: 10, Comm: "worker", State: "t", TracerPID: 99, ThreadCount: 1}},
		{ID: "file:/var/log/app.log", Kind: KindFile, Label: "/var/log/app.log", Verdict: Verdict{Level: LevelWarn, Reason: "opened for write outside the data paths: its content is not replicated"},
			File:    &FileInfo{Path: "/var/log/app.log", Type: "regular", Written: true},
			Holders: []Holder{{PID: 10, FD: 3, Access: "w", Pos: 100}}},
		{ID: "pipe:500", Kind: KindPipe, Label: "pipe:[500]", Verdict: Verdict{Level: LevelOK},
			Holders: []Holder{{PID: 10, FD: 4, Access: "w"}, {PID: 11, FD: 0, Access: "r"}}},
	}
	g.Edges = []Edge{
		{From: "proc:10", To: "proc:11", Kind: EdgeChild, Reason: "parent of 11"},
		{From: "proc:10", To: "file:/var/log/app.log", Kind: EdgeHolds, Reason: "fd 3 (w)"},
		{From: "proc:10", To: "file:/var/log/app.log", Kind: EdgeWrites, Reason: "fd 3 open for writing"},
		{From: "proc:10", To: "pipe:500", Kind: EdgeHolds, Reason: "fd 4 (w)"},
		{From: "proc:11", To: "pipe:500", Kind: EdgeHolds, Reason: "fd 0 (r)"},
		{From: "proc:10", To: "proc:11", Kind: EdgePipe, Via: "pipe:500", Reason: "10 writes pipe:[500] (fd 4 (w)), 11 reads it (fd 0 (r))"},
	}
	return g
}

func TestPreflightAndCheck(t *testing.T) {
	g := sampleGraph()
	g.Problems = []Problem{{Node: "proc:11", What: "fds", Err: "permission denied"}}
	fs := g.Preflight()
	if len(fs) != 3 {
		t.Fatalf("findings %v", fs)
	}
	if fs[0].Level != LevelBlocker || fs[0].Node != "proc:11" || fs[0].Label != "11 worker" {
		t.Errorf("first finding %v, want the blocker", fs[0])
	}
	if fs[1].Level != LevelWarn || fs[2].Level != LevelWarn || !strings.Contains(fs[1].Reason+fs[2].Reason, "unreadable fds") {
		t.Errorf("warnings %v %v", fs[1], fs[2])
	}
	err := g.Check()
	var be *BlockedError
	if !errors.Is(err, ErrBlocked) || !errors.As(err, &be) || len(be.Blockers) != 1 || !strings.Contains(err.Error(), "proc:11") {
		t.Errorf("Check = %v", err)
	}
	g.Nodes[1].Verdict = Verdict{Level: LevelOK}
	if err := g.Check(); err != nil {
		t.Errorf("Check without blockers = %v", err)
	}
}

func TestVerdictRaise(t *testing.T) {
	v := Verdict{Level: LevelOK}
	v.raise(LevelWarn, "a")
	v.raise(LevelOK, "ignored")
	v.raise(LevelWarn, "b")
	v.raise(LevelWarn, "a")
	if v.Level != LevelWarn || v.Reason != "a; b" {
		t.Errorf("after warns: %+v", v)
	}
	v.raise(LevelBlocker, "c")
	if v.Level != LevelBlocker || v.Reason != "c" {
		t.Errorf("after blocker: %+v", v)
	}
}

func TestDiff(t *testing.T) {
	old := sampleGraph()
	if ch := Diff(old, sampleGraph()); len(ch) != 0 {
		t.Errorf("identical graphs differ: %+v", ch)
	}
	// Counters do not make a change.
	next := sampleGraph()
	next.Nodes[0].Process.CPUTime = 5 * time.Second
	next.Nodes[0].Process.RSS = 1
	next.Nodes[0].Process.State = "R"
	next.Nodes[2].Holders[0].Pos = 9999
	if ch := Diff(old, next); len(ch) != 0 {
		t.Errorf("counters reported as changes: %+v", ch)
	}
	// A new descriptor, a closed pipe, an exec.
	next.Nodes[0].Process.Comm = "app2"
	next.Nodes = append(next.Nodes[:3], &Node{ID: "file:/tmp/new", Kind: KindFile, Label: "/tmp/new", Holders: []Holder{{PID: 10, FD: 5}}})
	next.Edges = append(next.Edges[:3], Edge{From: "proc:10", To: "file:/tmp/new", Kind: EdgeHolds, Reason: "fd 5 (r)"})
	ch := Diff(old, next)
	got := map[string]bool{}
	for _, c := range ch {
		switch {
		case c.Node != nil:
			got[string(c.Op)+" "+c.Node.ID] = true
		case c.Edge != nil:
			got[string(c.Op)+" "+string(c.Edge.Kind)+" "+c.Edge.To] = true
		}
	}
	for _, w := range []string{
		"changed proc:10", "added file:/tmp/new", "removed pipe:500",
		"added holds file:/tmp/new", "removed holds pipe:500", "removed pipe proc:11",
	} {
		if !got[w] {
			t.Errorf("diff lacks %q; got %v", w, got)
		}
	}
	if len(ch) != 7 { // both holds edges of the pipe are removed
		t.Errorf("diff has %d changes: %v", len(ch), got)
	}
	all := Diff(nil, old)
	if len(all) != len(old.Nodes)+len(old.Edges) {
		t.Errorf("Diff(nil, g) = %d changes", len(all))
	}
	for _, c := range Diff(old, nil) {
		if c.Op != OpRemoved {
			t.Errorf("Diff(g, nil) has %s", c.Op)
		}
	}
}

func TestWriteText(t *testing.T) {
	var b bytes.Buffer
	if err := sampleGraph().WriteText(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"tree of pid 10 (tree): 2 processes, 2 resources, 6 edges",
		"10 app [ns pid 1] S  threads 1  fds 0  cpu 1s  rss 4.0MiB",
		"├─ fd 3 (w)  file /var/log/app.log  [WARN: opened for write outside the data paths",
		"└─ 11 worker t",
		"[BLOCKER: traced by pid 99",
		"   └─ fd 0 (r)  pipe:[500]",
		"pipe          10 app -> 11 worker via pipe:500",
		"writes        10 app -> file:/var/log/app.log: fd 3 open for writing",
		"preflight:\n  BLOCKER proc:11: traced",
		"  WARN    file:/var/log/app.log: opened for write",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text output lacks %q:\n%s", want, out)
		}
	}
}

func TestWriteDOT(t *testing.T) {
	g := sampleGraph()
	g.Nodes[2].Label = `odd "name" \ here`
	var b bytes.Buffer
	if err := g.WriteDOT(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"digraph \"tree 10\" {",
		`"proc:10" [label="10 app" shape=box];`,
		`"proc:11" [label="11 worker" shape=box style=filled fillcolor=red`,
		`label="odd \"name\" \\ here"`,
		`"proc:10" -> "proc:11" [label="pipe"`,
		"}\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("DOT output lacks %q:\n%s", want, out)
		}
	}
}

// TestShellJobLiftsOnlyTheSessionBlocker: with Config.ShellJob (a dump
// with --shell-job, as adoption takes) a root that is not a session leader
// is no blocker, while another blocker of the same process still is.
func TestShellJobLiftsOnlyTheSessionBlocker(t *testing.T) {
	judge := func(shellJob bool, tracer int) Verdict {
		s := &scanner{cfg: DefaultConfig(), g: &Graph{Root: 10}}
		s.cfg.ShellJob = shellJob
		n := &Node{ID: ProcessID(10), Kind: KindProcess, Process: &Process{PID: 10, SID: 3, TracerPID: tracer, NSPID: []int{10, 1}}}
		s.judgeProcess(n)
		return n.Verdict
	}
	if v := judge(false, 0); v.Level != LevelBlocker || !strings.Contains(v.Reason, "session leader") {
		t.Errorf("without ShellJob: %+v, want the session blocker", v)
	}
	if v := judge(true, 0); v.Level == LevelBlocker {
		t.Errorf("with ShellJob: %+v, want no blocker", v)
	}
	if v := judge(true, 7); v.Level != LevelBlocker || !strings.Contains(v.Reason, "traced by pid 7") || strings.Contains(v.Reason, "session leader") {
		t.Errorf("traced, with ShellJob: %+v, want the ptrace blocker only", v)
	}
}

// TestSessionZeroIsABlocker: a process whose session has no leader in its
// PID namespace (sid 0 in /proc) cannot be dumped, --shell-job or not, root
// or not.
func TestSessionZeroIsABlocker(t *testing.T) {
	for _, shellJob := range []bool{false, true} {
		for _, pid := range []int{10, 11} {
			s := &scanner{cfg: DefaultConfig(), g: &Graph{Root: 10}}
			s.cfg.ShellJob = shellJob
			n := &Node{ID: ProcessID(pid), Kind: KindProcess, Process: &Process{PID: pid, SID: 0, NSPID: []int{pid}}}
			s.judgeProcess(n)
			if n.Verdict.Level != LevelBlocker || !strings.Contains(n.Verdict.Reason, "sid 0") || !strings.Contains(n.Verdict.Reason, "setsid") {
				t.Errorf("pid %d (root 10), ShellJob %v: %+v, want the sid 0 blocker", pid, shellJob, n.Verdict)
			}
		}
	}
}

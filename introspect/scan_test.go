package introspect

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

type appInfo struct {
	TCPPort    int    `json:"tcp_port"`
	UDPPort    int    `json:"udp_port"`
	UnixName   string `json:"unix_name"`
	ShmID      int    `json:"shm_id"`
	MemfdInode uint64 `json:"memfd_inode"`
	PipeInode  uint64 `json:"pipe_inode"`
	DataFile   string `json:"data_file"`
	Scratch    string `json:"scratch_file"`
	ExtLocal   string `json:"ext_local"`
}

// startFullApp starts the app role with an external TCP peer served by the
// test process.
func startFullApp(t *testing.T, o appOpts) (*appProc, appInfo, string, net.Listener) {
	t.Helper()
	ext, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ext.Close() })
	go func() {
		for {
			c, err := ext.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	dir := t.TempDir()
	unixName := fmt.Sprintf("doppel-appsim-%d-%d", os.Getpid(), time.Now().UnixNano())
	a := startApp(t, o, "app", ext.Addr().String(), dir, unixName)
	var info appInfo
	if err := json.Unmarshal(a.ready, &info); err != nil {
		t.Fatalf("ready line %s: %v", a.ready, err)
	}
	return a, info, dir, ext
}

// procByRole finds the process whose second argument is role.
func procByRole(t *testing.T, g *Graph, role string) *Node {
	t.Helper()
	ns := findNodes(g, func(n *Node) bool {
		return n.Kind == KindProcess && len(n.Process.Cmdline) > 1 && n.Process.Cmdline[1] == role
	})
	if len(ns) != 1 {
		dumpGraph(t, g)
		t.Fatalf("want one %q process, found %d", role, len(ns))
	}
	return ns[0]
}

func TestScanApp(t *testing.T) {
	needRoot(t)
	a, info, dir, ext := startFullApp(t, appOpts{pidns: true, setsid: true})
	cfg := DefaultConfig()
	cfg.DataPaths = []string{filepath.Join(dir, "data")}
	g, err := Scan(context.Background(), a.pid, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if testing.Verbose() {
		dumpGraph(t, g)
	}
	if g.Partial {
		t.Errorf("graph is partial: %+v", g.Problems)
	}

	root := g.Node(ProcessID(a.pid))
	if root == nil {
		t.Fatalf("no root node")
	}
	writer, reader := procByRole(t, g, "writer"), procByRole(t, g, "reader")
	if n := len(g.Processes()); n != 3 {
		t.Errorf("processes: got %d, want 3", n)
	}
	rootID, wID, rID := root.ID, writer.ID, reader.ID

	t.Run("processes", func(t *testing.T) {
		p := root.Process
		if len(p.NSPID) != 2 || p.NSPID[0] != a.pid || p.NSPID[1] != 1 {
			t.Errorf("root NSpid = %v, want [%d 1]", p.NSPID, a.pid)
		}
		if p.SID != a.pid {
			t.Errorf("root sid %d, want %d", p.SID, a.pid)
		}
		if root.Verdict.Level != LevelOK {
			t.Errorf("root verdict %+v, want ok", root.Verdict)
		}
		if len(p.Threads) == 0 || p.Threads[0].TID != a.pid {
			t.Errorf("threads %+v", p.Threads)
		}
		if p.RSS == 0 || p.PSS == 0 || p.Exe != appsimPath || p.Namespaces["pid"] == 0 || len(p.Cgroups) == 0 {
			t.Errorf("process details missing: rss %d pss %d exe %q ns %v cgroups %v", p.RSS, p.PSS, p.Exe, p.Namespaces, p.Cgroups)
		}
		kinds := map[MapKind]bool{}
		for _, m := range p.Mappings {
			kinds[m.Kind] = true
		}
		for _, k := range []MapKind{MapAnonPrivate, MapFilePrivate, MapStack, MapVDSO, MapSysVShm, MapMemfd} {
			if !kinds[k] {
				t.Errorf("root has no %s mapping", k)
			}
		}
		for _, c := range []string{wID, rID} {
			if !hasEdge(g, EdgeChild, rootID, c, "") {
				t.Errorf("no child edge %s -> %s", rootID, c)
			}
		}
	})

	t.Run("pipe", func(t *testing.T) {
		id := "pipe:" + strconv.FormatUint(info.PipeInode, 10)
		n := g.Node(id)
		if n == nil || n.Kind != KindPipe {
			t.Fatalf("pipe node %s: %+v", id, n)
		}
		if !hasEdge(g, EdgePipe, wID, rID, id) {
			t.Errorf("no pipe edge writer -> reader via %s", id)
		}
		if n.Verdict.Level != LevelOK {
			t.Errorf("pipe verdict %+v", n.Verdict)
		}
	})

	t.Run("socketpair", func(t *testing.T) {
		var found *Edge
		for i, e := range g.Edges {
			if e.Kind == EdgeSocketpair && ((e.From == rootID && e.To == wID) || (e.From == wID && e.To == rootID)) {
				found = &g.Edges[i]
			}
		}
		if found == nil {
			t.Fatalf("no socketpair edge between root and writer")
		}
		sk := g.Node(found.Via)
		if sk == nil || sk.Kind != KindUnix || sk.Socket.State != "established" || sk.Socket.PeerInode == 0 || sk.Verdict.Level != LevelOK {
			t.Errorf("socketpair socket %+v", sk)
		}
	})

	t.Run("unix", func(t *testing.T) {
		ls := findNodes(g, func(n *Node) bool {
			return n.Kind == KindUnix && n.Socket.State == "listen" && n.Socket.Local == "@"+info.UnixName
		})
		if len(ls) != 1 {
			t.Fatalf("unix listener @%s: found %d", info.UnixName, len(ls))
		}
		if !hasEdge(g, EdgeService, rootID, ls[0].ID, "") {
			t.Errorf("no service edge to the unix listener")
		}
		if !hasEdge(g, EdgeUnix, rID, rootID, "") {
			t.Errorf("no unix edge reader -> root")
		}
	})

	t.Run("memfd", func(t *testing.T) {
		id := "memfd:" + strconv.FormatUint(info.MemfdInode, 10)
		n := g.Node(id)
		if n == nil || n.Kind != KindMemfd {
			t.Fatalf("memfd node %s: %+v", id, n)
		}
		pids := map[int]bool{}
		for _, m := range n.Mappers {
			pids[m.PID] = true
		}
		if !pids[root.Process.PID] || !pids[writer.Process.PID] {
			t.Errorf("memfd mappers %+v, want root and writer", n.Mappers)
		}
		if len(n.Holders) == 0 || n.Holders[0].PID != root.Process.PID {
			t.Errorf("memfd holders %+v, want root", n.Holders)
		}
		if !hasEdge(g, EdgeSharedMemory, rootID, wID, id) && !hasEdge(g, EdgeSharedMemory, wID, rootID, id) {
			t.Errorf("no shared-memory edge between root and writer via %s", id)
		}
		if n.Verdict.Level != LevelOK {
			t.Errorf("memfd verdict %+v", n.Verdict)
		}
	})

	t.Run("sysv-shm", func(t *testing.T) {
		id := "sysv-shm:" + strconv.Itoa(info.ShmID)
		n := g.Node(id)
		if n == nil || n.Kind != KindSysVShm || n.IPC == nil {
			t.Fatalf("sysv shm node %s: %+v", id, n)
		}
		if n.IPC.Size != 1<<20 || n.IPC.Attached != 2 || !n.IPC.Removed {
			t.Errorf("shm info %+v, want size 1MiB, 2 attached, removed", n.IPC)
		}
		if !hasEdge(g, EdgeSysVShm, rootID, rID, id) && !hasEdge(g, EdgeSysVShm, rID, rootID, id) {
			t.Errorf("no sysv-shm edge between root and reader")
		}
		// The app shares the host IPC namespace.
		if n.Verdict.Level != LevelWarn || !strings.Contains(n.Verdict.Reason, "IPC namespace") {
			t.Errorf("shm verdict %+v, want warn about the IPC namespace", n.Verdict)
		}
	})

	t.Run("files", func(t *testing.T) {
		data := g.Node("file:" + info.DataFile)
		if data == nil || data.Kind != KindFile || !data.File.Written || data.File.DataPath == "" {
			t.Fatalf("data file node %+v", data)
		}
		if data.Verdict.Level != LevelOK {
			t.Errorf("data file verdict %+v, want ok", data.Verdict)
		}
		if !hasEdge(g, EdgeWrites, rootID, data.ID, "") {
			t.Errorf("no writes edge to %s", data.ID)
		}
		if h := data.Holders[0]; h.Access != "w" || h.Pos == 0 || h.Flags&syscall.O_APPEND == 0 {
			t.Errorf("data file holder %+v", h)
		}
		scratch := g.Node("file:" + info.Scratch)
		if scratch == nil || scratch.Verdict.Level != LevelWarn || !strings.Contains(scratch.Verdict.Reason, "outside the data paths") {
			t.Errorf("scratch file %+v, want warn outside data paths", scratch)
		}
		null := g.Node("file:/dev/null")
		if null == nil || null.Kind != KindDevice || null.Verdict.Level != LevelOK {
			t.Errorf("/dev/null %+v", null)
		}
	})

	t.Run("tcp", func(t *testing.T) {
		ls := findNodes(g, func(n *Node) bool {
			return n.Kind == KindTCP && n.Socket.State == "listen" && portOf(n.Socket.Local) == strconv.Itoa(info.TCPPort)
		})
		if len(ls) != 1 {
			t.Fatalf("tcp listener on %d: found %d", info.TCPPort, len(ls))
		}
		if !hasEdge(g, EdgeService, rootID, ls[0].ID, "") || ls[0].Verdict.Level != LevelOK {
			t.Errorf("listener %+v without service edge or not ok", ls[0])
		}
		if !hasEdge(g, EdgeTCP, wID, rootID, "") {
			t.Errorf("no tcp edge writer -> root")
		}
		for _, e := range g.Edges {
			if e.Kind == EdgeTCP {
				if n := g.Node(e.Via); n == nil || n.Verdict.Level != LevelOK || n.Socket.State != "established" {
					t.Errorf("loopback connection socket %+v", n)
				}
			}
		}
	})

	t.Run("external", func(t *testing.T) {
		peer := "peer:tcp:" + ext.Addr().String()
		if n := g.Node(peer); n == nil || n.Kind != KindPeer {
			t.Fatalf("no peer node %s", peer)
		}
		var via string
		for _, e := range g.Edges {
			if e.Kind == EdgeExternal && e.From == rootID && e.To == peer {
				via = e.Via
			}
		}
		sk := g.Node(via)
		if sk == nil || sk.Verdict.Level != LevelWarn || !strings.Contains(sk.Verdict.Reason, "same local address") || sk.Socket.Local != info.ExtLocal {
			t.Errorf("external socket %+v, want warn needing the same address", sk)
		}
	})

	t.Run("other kinds", func(t *testing.T) {
		for _, k := range []NodeKind{KindUDP, KindEventfd, KindTimerfd, KindSignalfd, KindInotify, KindEpoll} {
			ns := findNodes(g, func(n *Node) bool { return n.Kind == k && len(n.Holders) > 0 && n.Holders[0].PID == a.pid })
			if len(ns) == 0 {
				t.Errorf("root holds no %s", k)
				continue
			}
			if ns[0].Verdict.Level != LevelOK {
				t.Errorf("%s verdict %+v", k, ns[0].Verdict)
			}
		}
		udp := findNodes(g, func(n *Node) bool { return n.Kind == KindUDP && portOf(n.Socket.Local) == strconv.Itoa(info.UDPPort) })
		if len(udp) != 1 {
			t.Errorf("udp socket on port %d: found %d", info.UDPPort, len(udp))
		}
		ino := findNodes(g, func(n *Node) bool { return n.Kind == KindInotify && n.Info["watches"] == "1" })
		if len(ino) != 1 {
			t.Errorf("inotify with one watch: found %d", len(ino))
		}
	})

	t.Run("outside", func(t *testing.T) {
		// stdin and stdout are pipes whose other end this test holds.
		var stdin *Node
		for _, n := range g.Nodes {
			if n.Kind == KindPipe {
				for _, h := range n.Holders {
					if h.PID == a.pid && h.FD == 0 {
						stdin = n
					}
				}
			}
		}
		if stdin == nil {
			t.Fatalf("root's stdin pipe not found")
		}
		if len(stdin.Outside) == 0 || stdin.Outside[0].PID != os.Getpid() || stdin.Outside[0].Access != "w" {
			t.Errorf("stdin outside holders %+v, want this test (pid %d) writing", stdin.Outside, os.Getpid())
		}
		if stdin.Verdict.Level != LevelWarn || !strings.Contains(stdin.Verdict.Reason, "--inherit-fd") {
			t.Errorf("stdin verdict %+v", stdin.Verdict)
		}
		if !hasEdge(g, EdgeOutside, "xproc:"+strconv.Itoa(os.Getpid()), stdin.ID, "") {
			t.Errorf("no outside edge from this test to the stdin pipe")
		}
	})

	t.Run("preflight", func(t *testing.T) {
		if err := g.Check(); err != nil {
			t.Errorf("Check: %v", err)
		}
		fs := g.Preflight()
		if len(fs) == 0 {
			t.Fatal("no findings")
		}
		for i := 1; i < len(fs); i++ {
			if fs[i].Level.Rank() > fs[i-1].Level.Rank() {
				t.Errorf("findings not worst-first: %v before %v", fs[i-1], fs[i])
			}
		}
	})

	t.Run("json", func(t *testing.T) {
		var buf bytes.Buffer
		if err := g.WriteJSON(&buf); err != nil {
			t.Fatal(err)
		}
		var back Graph
		if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
			t.Fatal(err)
		}
		if len(back.Nodes) != len(g.Nodes) || len(back.Edges) != len(g.Edges) || back.Root != g.Root {
			t.Errorf("round trip changed the graph")
		}
		var raw map[string]any
		_ = json.Unmarshal(buf.Bytes(), &raw)
		for _, k := range []string{"root", "scope", "time", "partial", "nodes", "edges"} {
			if _, ok := raw[k]; !ok {
				t.Errorf("JSON lacks %q", k)
			}
		}
		if back.Node(rootID) == nil {
			t.Errorf("decoded graph cannot look up %s", rootID)
		}
	})

	t.Run("text and dot", func(t *testing.T) {
		var txt, dot bytes.Buffer
		if err := g.WriteText(&txt); err != nil {
			t.Fatal(err)
		}
		if err := g.WriteDOT(&dot); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			fmt.Sprintf("%d appsim [ns pid 1]", a.pid), "pipe:[" + strconv.FormatUint(info.PipeInode, 10) + "]",
			"socketpair", "service: tcp listens on", "external: tcp", "preflight:", "WARN",
		} {
			if !strings.Contains(txt.String(), want) {
				t.Errorf("text output lacks %q", want)
			}
		}
		if !strings.HasPrefix(dot.String(), "digraph ") || !strings.Contains(dot.String(), `"`+rootID+`" -> "`+wID+`"`) {
			t.Errorf("DOT output malformed:\n%.400s", dot.String())
		}
		if dotBin, err := exec.LookPath("dot"); err == nil {
			c := exec.Command(dotBin, "-Tsvg", "-o", os.DevNull)
			c.Stdin = &dot
			if out, err := c.CombinedOutput(); err != nil {
				t.Errorf("graphviz rejects the DOT output: %v: %s", err, out)
			}
		}
	})
}

// TestScanOwnIPCNamespace checks that SysV IPC is read inside the app's
// own IPC namespace and judged ok there.
func TestScanOwnIPCNamespace(t *testing.T) {
	needRoot(t)
	a, info, _, _ := startFullApp(t, appOpts{pidns: true, ipcns: true, setsid: true})
	g, err := Scan(context.Background(), a.pid, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	n := g.Node("sysv-shm:" + strconv.Itoa(info.ShmID))
	if n == nil || n.IPC == nil || n.IPC.Size != 1<<20 {
		dumpGraph(t, g)
		t.Fatalf("shm in own IPC namespace: %+v", n)
	}
	if n.Verdict.Level != LevelOK {
		t.Errorf("shm verdict %+v, want ok in the app's own IPC namespace", n.Verdict)
	}
	if n.IPC.IPCNS != g.Node(ProcessID(a.pid)).Process.Namespaces["ipc"] {
		t.Errorf("shm ipcns %d, want the app's", n.IPC.IPCNS)
	}
}

type blockersInfo struct {
	IOUring   bool `json:"io_uring"`
	TracedPID int  `json:"traced_pid"`
}

func TestScanBlockers(t *testing.T) {
	needRoot(t)
	// One end of a socketpair and the write end of a pipe go to the app;
	// this test keeps the other socket and the same pipe end.
	sp, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs := os.NewFile(uintptr(sp[0]), "sp0"), os.NewFile(uintptr(sp[1]), "sp1")
	defer mine.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	a := startApp(t, appOpts{pidns: true, extra: []*os.File{theirs, pw}}, "blockers")
	theirs.Close()
	var info blockersInfo
	if err := json.Unmarshal(a.ready, &info); err != nil {
		t.Fatal(err)
	}
	g, err := Scan(context.Background(), a.pid, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if testing.Verbose() {
		dumpGraph(t, g)
	}
	blockerOf := func(pred func(n *Node) bool) *Node {
		ns := findNodes(g, pred)
		if len(ns) == 0 {
			return nil
		}
		return ns[0]
	}
	want := map[string]*Node{
		"device /dev/loop-control": blockerOf(func(n *Node) bool { return n.ID == "file:/dev/loop-control" }),
		"unix peer outside": blockerOf(func(n *Node) bool {
			return n.Kind == KindUnix && len(n.Holders) > 0 && n.Holders[0].PID == a.pid && n.Holders[0].FD == 3
		}),
		"pipe shared outside": blockerOf(func(n *Node) bool {
			return n.Kind == KindPipe && len(n.Holders) > 0 && n.Holders[0].FD == 4
		}),
		"root not session leader": g.Node(ProcessID(a.pid)),
	}
	if info.IOUring {
		want["io_uring"] = blockerOf(func(n *Node) bool { return n.Kind == KindIOUring })
	} else {
		t.Log("io_uring_setup failed in appsim; the io_uring rule is not exercised on this kernel")
	}
	traced := findNodes(g, func(n *Node) bool {
		return n.Kind == KindProcess && len(n.Process.NSPID) > 1 && n.Process.NSPID[len(n.Process.NSPID)-1] == info.TracedPID
	})
	if len(traced) == 1 {
		want["traced process"] = traced[0]
	} else {
		t.Errorf("traced child (ns pid %d) not found", info.TracedPID)
	}
	for what, n := range want {
		if n == nil {
			t.Errorf("%s: node not found", what)
			continue
		}
		if n.Verdict.Level != LevelBlocker {
			t.Errorf("%s: %s verdict %+v, want blocker", what, n.ID, n.Verdict)
		}
	}
	err = g.Check()
	var be *BlockedError
	if !errors.Is(err, ErrBlocked) || !errors.As(err, &be) {
		t.Fatalf("Check = %v, want a BlockedError", err)
	}
	named := map[string]bool{}
	for _, f := range be.Blockers {
		named[f.Node] = true
	}
	for what, n := range want {
		if n != nil && !named[n.ID] {
			t.Errorf("Check does not name %s (%s)", n.ID, what)
		}
	}
}

func TestScanBadInput(t *testing.T) {
	needRoot(t)
	t.Run("no such pid", func(t *testing.T) {
		c := exec.Command("true")
		if err := c.Run(); err != nil {
			t.Fatal(err)
		}
		for _, pid := range []int{c.Process.Pid, 0, -5} {
			g, err := Scan(context.Background(), pid, DefaultConfig())
			if !errors.Is(err, ErrNoProcess) || g != nil {
				t.Errorf("Scan(%d) = %v, %v; want ErrNoProcess", pid, g, err)
			}
		}
	})
	t.Run("processes exiting during the scan", func(t *testing.T) {
		c := exec.Command("sh", "-c", "while :; do /bin/true; done")
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			_ = c.Wait()
		})
		sc := NewScanner(DefaultConfig())
		defer sc.Close()
		deadline := time.Now().Add(20 * time.Second)
		for scans := 0; ; scans++ {
			g, err := sc.Scan(context.Background(), c.Process.Pid)
			if err != nil {
				t.Fatalf("scan %d: %v", scans, err)
			}
			if g.Node(ProcessID(c.Process.Pid)) == nil {
				t.Fatalf("scan %d lost the root", scans)
			}
			vanished := false
			for _, p := range g.Problems {
				if p.Vanished {
					vanished = true
					if !g.Partial || p.Node == "" {
						t.Errorf("vanished problem %+v in a graph with partial=%v", p, g.Partial)
					}
				}
			}
			if vanished {
				t.Logf("a child vanished during scan %d: %+v", scans, g.Problems)
				reported := false
				for _, f := range g.Preflight() {
					reported = reported || strings.Contains(f.Reason, "exited during the scan")
				}
				if !reported {
					t.Errorf("preflight does not report the vanished process: %v", g.Preflight())
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no scan in %d saw a child exit mid-scan", scans)
			}
		}
	})
}

const nonRootEnv = "INTROSPECT_NONROOT_SCAN_PID"

// nonRootScan runs inside the unprivileged re-exec of TestScanNonRoot: it
// scans the pid in the environment and prints the graph as JSON.
func nonRootScan() int {
	pid, _ := strconv.Atoi(os.Getenv(nonRootEnv))
	g, err := Scan(context.Background(), pid, DefaultConfig())
	if err != nil {
		fmt.Fprintln(os.Stderr, "scan:", err)
		return 1
	}
	var buf bytes.Buffer
	_ = g.WriteJSON(&buf)
	fmt.Printf("GRAPH %s\n", bytes.ReplaceAll(buf.Bytes(), []byte("\n"), nil))
	return 0
}

func TestScanNonRoot(t *testing.T) {
	needRoot(t) // to become an unprivileged user
	a := startApp(t, appOpts{pidns: true, setsid: true}, "blockers")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "introspect.test")
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	c := exec.Command(bin)
	c.Env = append(os.Environ(), nonRootEnv+"="+strconv.Itoa(a.pid))
	c.Dir = dir
	c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("unprivileged scan: %v\n%s", err, out)
	}
	var g Graph
	found := false
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "GRAPH ") {
			if err := json.Unmarshal([]byte(strings.TrimPrefix(l, "GRAPH ")), &g); err != nil {
				t.Fatal(err)
			}
			found = true
		}
	}
	if !found {
		t.Fatalf("no graph in output:\n%s", out)
	}
	if testing.Verbose() {
		dumpGraph(t, &g)
	}
	if !g.Partial {
		t.Errorf("unprivileged scan of a root process is not marked partial")
	}
	root := g.Node(ProcessID(a.pid))
	if root == nil {
		t.Fatalf("root process missing from the unprivileged graph")
	}
	if !containsPrefix(root.Process.Unreadable, "fds: permission denied") {
		t.Errorf("root unreadable = %v, want fds: permission denied", root.Process.Unreadable)
	}
	probs := map[string]bool{}
	for _, p := range g.Problems {
		if p.Node == root.ID {
			probs[p.What] = true
		}
	}
	if !probs["fds"] {
		t.Errorf("problems %+v lack the unreadable fds of the root", g.Problems)
	}
	var warned bool
	for _, f := range g.Preflight() {
		if f.Node == root.ID && strings.Contains(f.Reason, "unreadable fds") {
			warned = true
		}
	}
	if !warned {
		t.Errorf("preflight does not warn about the unreadable fds")
	}
}

func containsPrefix(list []string, p string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// TestCheckpointConfigSameFindings checks that the freeze-window
// configuration judges a tree exactly as the full one does.
func TestCheckpointConfigSameFindings(t *testing.T) {
	needRoot(t)
	app, _, _, _ := startFullApp(t, appOpts{pidns: true, setsid: true})
	bl := startApp(t, appOpts{pidns: true}, "blockers")
	for _, pid := range []int{app.pid, bl.pid} {
		full, err := Scan(context.Background(), pid, DefaultConfig())
		if err != nil {
			t.Fatal(err)
		}
		fast, err := Scan(context.Background(), pid, CheckpointConfig())
		if err != nil {
			t.Fatal(err)
		}
		fmtFindings := func(fs []Finding) string {
			var b strings.Builder
			for _, f := range fs {
				fmt.Fprintf(&b, "%s %s %s\n", f.Level, f.Node, f.Reason)
			}
			return b.String()
		}
		if a, b := fmtFindings(full.Preflight()), fmtFindings(fast.Preflight()); a != b {
			t.Errorf("pid %d: findings differ\nDefaultConfig:\n%s\nCheckpointConfig:\n%s", pid, a, b)
		}
		if len(full.Nodes) != len(fast.Nodes) {
			t.Errorf("pid %d: %d nodes with DefaultConfig, %d with CheckpointConfig", pid, len(full.Nodes), len(fast.Nodes))
		}
		// The pipe edges rest on the open mode of the ends, which
		// CheckpointConfig reads only where they matter.
		pipeEdges := func(g *Graph) string {
			var b strings.Builder
			for _, e := range g.Edges {
				if e.Kind == EdgePipe || e.Kind == EdgeOutside {
					fmt.Fprintf(&b, "%s %s->%s %s\n", e.Kind, e.From, e.To, e.Reason)
				}
			}
			return b.String()
		}
		if a, b := pipeEdges(full), pipeEdges(fast); a != b || a == "" && pid == app.pid {
			t.Errorf("pid %d: pipe edges differ (or none)\nDefaultConfig:\n%s\nCheckpointConfig:\n%s", pid, a, b)
		}
		if p := fast.Node(ProcessID(pid)).Process; len(p.Threads) != 0 || p.ThreadCount == 0 || p.PSS != 0 {
			t.Errorf("CheckpointConfig read details it should skip: %d threads listed, count %d, pss %d", len(p.Threads), p.ThreadCount, p.PSS)
		}
	}
}

// TestScanPIDNamespaceScope checks that ScopePIDNamespace adds a process
// that entered the app's PID namespace from outside its tree.
func TestScanPIDNamespaceScope(t *testing.T) {
	needRoot(t)
	a, _, _, _ := startFullApp(t, appOpts{pidns: true, setsid: true})
	nsFile, err := os.Open(fmt.Sprintf("/proc/%d/ns/pid", a.pid))
	if err != nil {
		t.Fatal(err)
	}
	defer nsFile.Close()
	started := make(chan *exec.Cmd, 1)
	errc := make(chan error, 1)
	go func() {
		// This thread joins the namespace for its children and is then
		// thrown away: the goroutine ends with the thread still locked.
		runtime.LockOSThread()
		if err := unix.Setns(int(nsFile.Fd()), unix.CLONE_NEWPID); err != nil {
			errc <- err
			return
		}
		c := exec.Command("sleep", "60")
		if err := c.Start(); err != nil {
			errc <- err
			return
		}
		started <- c
	}()
	var c *exec.Cmd
	select {
	case err := <-errc:
		t.Fatalf("enter the PID namespace: %v", err)
	case c = <-started:
	}
	t.Cleanup(func() {
		_ = c.Process.Kill()
		_ = c.Wait()
	})
	// The app's tree may change between two scans (its children come and
	// go): the two scopes are compared over scans between which the tree
	// stayed the same size.
	cfg := DefaultConfig()
	cfg.Scope = ScopePIDNamespace
	var tree, ns *Graph
	for attempt := 0; ; attempt++ {
		var err error
		if tree, err = Scan(context.Background(), a.pid, DefaultConfig()); err != nil {
			t.Fatal(err)
		}
		if ns, err = Scan(context.Background(), a.pid, cfg); err != nil {
			t.Fatal(err)
		}
		after, err := Scan(context.Background(), a.pid, DefaultConfig())
		if err != nil {
			t.Fatal(err)
		}
		if len(after.Processes()) == len(tree.Processes()) || attempt == 20 {
			break
		}
	}
	if tree.Node(ProcessID(c.Process.Pid)) != nil {
		t.Errorf("scope tree includes pid %d, which is not a descendant", c.Process.Pid)
	}
	n := ns.Node(ProcessID(c.Process.Pid))
	if n == nil {
		t.Fatalf("scope pidns lacks pid %d", c.Process.Pid)
	}
	if p := n.Process; len(p.NSPID) != 2 || p.Comm != "sleep" {
		t.Errorf("entered process %+v", p)
	}
	if ns.Scope != ScopePIDNamespace || len(ns.Processes()) != len(tree.Processes())+1 {
		t.Errorf("scope %s: %d processes, tree has %d", ns.Scope, len(ns.Processes()), len(tree.Processes()))
	}
	var txt bytes.Buffer
	_ = ns.WriteText(&txt)
	if !strings.Contains(txt.String(), strconv.Itoa(c.Process.Pid)+" sleep") {
		t.Errorf("text output lacks the entered process:\n%s", txt.String())
	}
}

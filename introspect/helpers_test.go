package introspect

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// appsimPath is the test program built by TestMain.
var appsimPath string

func TestMain(m *testing.M) {
	if os.Getenv(nonRootEnv) != "" {
		// Re-executed as an unprivileged user by TestScanNonRoot.
		os.Exit(nonRootScan())
	}
	// Descriptors this process inherited (from a shell or a CI runner)
	// must not leak into the test applications, where they would show up
	// as resources shared with the outside.
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		for _, e := range ents {
			if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
				syscall.CloseOnExec(fd)
			}
		}
	}
	dir, err := os.MkdirTemp("", "introspect-appsim-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "temp dir:", err)
		os.Exit(2)
	}
	appsimPath = filepath.Join(dir, "appsim")
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	build := exec.Command(goBin, "build", "-o", appsimPath, "./testdata/appsim")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build appsim:", err)
		os.RemoveAll(dir)
		os.Exit(2)
	}
	_ = os.Chmod(dir, 0o755) // the unprivileged re-exec reads it too
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// needRoot skips when not root outside CI, and fails in CI.
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("this test needs root (CI runs as root)")
	}
	t.Skip("needs root: run `sudo go test ./introspect/...`")
}

// appProc is a running appsim.
type appProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	pid   int
	ready json.RawMessage
}

type appOpts struct {
	pidns, ipcns bool
	setsid       bool
	extra        []*os.File
	env          []string
}

// startApp starts appsim with args and waits for its ready line. The
// process (and, through its PID namespace or process group, its children)
// is killed when the test ends, whatever the outcome.
func startApp(t testing.TB, o appOpts, args ...string) *appProc {
	t.Helper()
	cmd := exec.Command(appsimPath, args...)
	// Not os.Stderr itself: sharing this process's stderr would make the
	// app's fd 2 a pipe end held outside its tree.
	cmd.Stderr = stderrCopy{}
	cmd.ExtraFiles = o.extra
	cmd.Env = append(os.Environ(), o.env...)
	attr := &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if o.setsid {
		attr.Setsid = true
	} else {
		attr.Setpgid = true
	}
	if o.pidns {
		attr.Cloneflags |= syscall.CLONE_NEWPID
	}
	if o.ipcns {
		attr.Cloneflags |= syscall.CLONE_NEWIPC
	}
	cmd.SysProcAttr = attr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start appsim %v: %v", args, err)
	}
	a := &appProc{cmd: cmd, stdin: stdin, lines: make(chan string, 64), pid: cmd.Process.Pid}
	var once sync.Once
	t.Cleanup(func() {
		once.Do(func() {
			stdin.Close()
			_ = syscall.Kill(-a.pid, syscall.SIGKILL) // process group or session
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
	})
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			a.lines <- sc.Text()
		}
		close(a.lines)
	}()
	line := a.waitLine(t, "ready ", 60*time.Second)
	a.ready = json.RawMessage(strings.TrimPrefix(line, "ready "))
	return a
}

// waitLine returns the next stdout line starting with prefix.
func (a *appProc) waitLine(t testing.TB, prefix string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-a.lines:
			if !ok {
				t.Fatalf("appsim exited before printing %q", prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-deadline:
			t.Fatalf("appsim did not print %q within %v", prefix, timeout)
		}
	}
}

func (a *appProc) send(t testing.TB, line string) {
	t.Helper()
	if _, err := fmt.Fprintln(a.stdin, line); err != nil {
		t.Fatalf("write to appsim: %v", err)
	}
}

// findNodes returns the nodes matching pred.
func findNodes(g *Graph, pred func(n *Node) bool) []*Node {
	var out []*Node
	for _, n := range g.Nodes {
		if pred(n) {
			out = append(out, n)
		}
	}
	return out
}

// hasEdge reports whether an edge of kind from -> to exists (via "" matches
// any).
func hasEdge(g *Graph, kind EdgeKind, from, to, via string) bool {
	for _, e := range g.Edges {
		if e.Kind == kind && e.From == from && e.To == to && (via == "" || e.Via == via) {
			return true
		}
	}
	return false
}

func dumpGraph(t testing.TB, g *Graph) {
	t.Helper()
	var b strings.Builder
	_ = g.WriteText(&b)
	t.Logf("graph:\n%s", b.String())
}

// stderrCopy forwards an app's stderr to the test's through a pipe.
type stderrCopy struct{}

func (stderrCopy) Write(p []byte) (int, error) { return os.Stderr.Write(p) }

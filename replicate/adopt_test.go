package replicate

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"doppel/introspect"
)

var (
	adoptAppOnce sync.Once
	adoptAppPath string
	adoptAppErr  error
)

// hostApp is the adoption test program running in the host PID namespace.
type hostApp struct {
	cmd   *exec.Cmd
	pid   int
	child int
	nonce string
	data  string // the file the child appends to
	out   string // stdout
	done  chan struct{}
}

// hostAppOptions say how startHostAppWith starts the test program.
type hostAppOptions struct {
	// shell runs the tree as a job of a session whose leader (standing for
	// a login shell) is outside it, so its root is no session leader;
	// otherwise the root leads a session of its own, as a daemon does.
	shell bool
	// change, when set, is applied to the command before it starts.
	change func(*exec.Cmd)
}

// startHostApp builds (once) and starts testdata/adoptapp as a child of
// the test, outside any doppel namespace, in a session of its own, with its
// output in files, and waits for it to be ready. Whatever is left of it is
// killed at the end.
func startHostApp(t *testing.T) *hostApp {
	t.Helper()
	return startHostAppWith(t, hostAppOptions{})
}

// startHostAppWith is startHostApp with options.
//
// A session of its own is not a detail: CRIU cannot dump a process whose
// session has no leader in its PID namespace (sid 0), which is what a
// child of the test inherits where the test runs under a PID 1 that never
// called setsid.
func startHostAppWith(t *testing.T, o hostAppOptions) *hostApp {
	t.Helper()
	adoptAppOnce.Do(func() {
		dir, err := os.MkdirTemp("", "doppel-adoptapp-")
		if err != nil {
			adoptAppErr = err
			return
		}
		adoptAppPath = filepath.Join(dir, "adoptapp")
		out, err := exec.Command("go", "build", "-o", adoptAppPath, "./testdata/adoptapp").CombinedOutput()
		if err != nil {
			adoptAppErr = fmt.Errorf("go build ./testdata/adoptapp: %v\n%s", err, out)
		}
	})
	if adoptAppErr != nil {
		t.Fatal(adoptAppErr)
	}
	dir := t.TempDir()
	a := &hostApp{data: filepath.Join(dir, "data", "counter.log"), out: filepath.Join(dir, "out.log"), done: make(chan struct{})}
	if err := os.Mkdir(filepath.Dir(a.data), 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := os.OpenFile(a.out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	// Descriptors the test inherited (from a shell, go test) would be
	// shared with processes outside the tree: a blocker for adoption.
	_ = unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC)
	a.cmd = exec.Command(adoptAppPath)
	a.cmd.Dir = dir
	a.cmd.Env = append(os.Environ(), "APP_DATA="+a.data)
	a.cmd.Stdout, a.cmd.Stderr = out, out
	if o.shell {
		// The "shell" makes the session; the tree gets a process group.
		a.cmd.Env = append(a.cmd.Env, "ADOPTAPP_SHELL=1")
	} else {
		// A session of its own, so that no signal of the test's reaches it.
		a.cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true}
	}
	if o.change != nil {
		o.change(a.cmd)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = a.cmd.Wait(); close(a.done) }()
	t.Cleanup(func() {
		_ = unix.Kill(a.child, unix.SIGKILL)
		_ = unix.Kill(a.pid, unix.SIGKILL)
		_ = a.cmd.Process.Kill()
	})
	deadline := time.Now().Add(10 * time.Second)
	for a.nonce == "" {
		b, _ := os.ReadFile(a.out)
		if n, _ := fmt.Sscanf(string(b), "ready pid=%d child=%d nonce=%s", &a.pid, &a.child, &a.nonce); n != 3 {
			a.nonce = ""
			if time.Now().After(deadline) {
				t.Fatalf("adoptapp not ready: %q", b)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if o.shell {
		// The shell hands the output over once the job runs.
		for shellHolds(a.cmd.Process.Pid, a.out) {
			if time.Now().After(deadline) {
				t.Fatalf("the session leader %d still holds %s", a.cmd.Process.Pid, a.out)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if sid, _ := unix.Getsid(a.pid); sid != a.cmd.Process.Pid {
			t.Fatalf("adoptapp %d is in session %d, want its shell's %d", a.pid, sid, a.cmd.Process.Pid)
		}
	} else if a.pid != a.cmd.Process.Pid {
		t.Fatalf("adoptapp says it is pid %d, started as %d", a.pid, a.cmd.Process.Pid)
	}
	// The dump kills the child too; as an orphan it comes to this process
	// (a child subreaper), which must reap it to free its PID.
	go reapOrphan(a.child)
	return a
}

// shellHolds says whether pid has path open.
func shellHolds(pid int, path string) bool {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return false
	}
	for _, e := range ents {
		if p, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); p == path {
			return true
		}
	}
	return false
}

// reapOrphan reaps pid once it has become this process's child and ended.
func reapOrphan(pid int) {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		var ws unix.WaitStatus
		p, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if p == pid || err != nil && !errors.Is(err, unix.ECHILD) && !errors.Is(err, unix.EINTR) {
			return
		}
		if errors.Is(err, unix.ECHILD) && !pidTaken(pid) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// counters returns the counters in the app's data file, checking that
// every line has the app's nonce and that they count up without a gap.
func (a *hostApp) counters(t *testing.T) []int {
	t.Helper()
	b, err := os.ReadFile(a.data)
	if errors.Is(err, os.ErrNotExist) {
		return nil // the child has yet to open it
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for i, l := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if l == "" {
			continue
		}
		f := strings.Fields(l)
		if len(f) != 2 || f[0] != a.nonce {
			t.Fatalf("data line %d %q: want nonce %s", i+1, l, a.nonce)
		}
		n, err := strconv.Atoi(f[1])
		if err != nil {
			t.Fatalf("data line %d %q: %v", i+1, l, err)
		}
		if n != len(out)+1 {
			t.Fatalf("data line %d is counter %d: the counter did not continue (want %d)", i+1, n, len(out)+1)
		}
		out = append(out, n)
	}
	return out
}

// waitCounter waits until the data file holds at least n counters.
func (a *hostApp) waitCounter(t *testing.T, n int) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c := a.counters(t)
		if len(c) >= n {
			return len(c)
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(a.out)
			t.Fatalf("counter stuck at %d, want %d; app output:\n%s", len(c), n, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nsPid returns pid's PID in the innermost namespace it belongs to.
func nsPid(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f, ok := strings.CutPrefix(l, "NSpid:"); ok {
			fs := strings.Fields(f)
			n, _ := strconv.Atoi(fs[len(fs)-1])
			return n
		}
	}
	t.Fatalf("no NSpid for %d", pid)
	return 0
}

// TestAdoptThenCheckpointKillRestore: a tree started in the host PID
// namespace is adopted: it runs on in a PID namespace of its own under the
// init, with its old PIDs and its state; then an epoch of it is restored
// after a kill, and another one is exported and imported by a second
// engine, each time continuing from the epoch. The tree is once a daemon
// (its root leads its session) and once a job started from a shell (its
// root does not, and CRIU takes it as a shell job).
func TestAdoptThenCheckpointKillRestore(t *testing.T) {
	requireE2E(t)
	t.Run("own session", func(t *testing.T) { adoptCheckpointKillRestore(t, hostAppOptions{}) })
	t.Run("shell job", func(t *testing.T) { adoptCheckpointKillRestore(t, hostAppOptions{shell: true}) })
}

func adoptCheckpointKillRestore(t *testing.T, o hostAppOptions) {
	e := newEngine(t, t.TempDir(), nil)
	a := startHostAppWith(t, o)
	before := a.waitCounter(t, 5)
	name := uniqueName("adopt")
	killAppAtEnd(t, name)

	start := time.Now()
	st, err := e.Adopt(t.Context(), AdoptOptions{Pid: a.pid, Name: name, DataPaths: []string{filepath.Dir(a.data)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("adopted pid %d in %v: init %d", a.pid, time.Since(start), st.Pid)
	select {
	case <-a.done:
	case <-time.After(5 * time.Second):
		t.Fatalf("the original process %d still runs in the host PID namespace", a.pid)
	}
	if pidTaken(a.child) && nsOf(a.child, "pid") == nsOf(os.Getpid(), "pid") && procStart(a.child) != 0 {
		// The PID may have been reused by an unrelated process; the
		// child's own start time tells.
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", a.child)); strings.Contains(string(b), "adoptapp") {
			t.Fatalf("the original child %d still runs in the host PID namespace", a.child)
		}
	}
	host := nsOf(os.Getpid(), "pid")
	initNS := nsOf(st.Pid, "pid")
	if initNS == "" || initNS == host {
		t.Fatalf("init %d is in PID namespace %q, the host's is %q", st.Pid, initNS, host)
	}
	if got := nsPid(t, st.Pid); got != 1 {
		t.Fatalf("init is PID %d in its namespace, want 1", got)
	}
	tree := treePids(st.Pid, nil)
	if len(tree) != 3 {
		t.Fatalf("tree under the init: %v, want init, app and its child", tree)
	}
	root := tree[1]
	if nsOf(root, "pid") != initNS {
		t.Fatalf("adopted root %d is in PID namespace %s, the init's is %s", root, nsOf(root, "pid"), initNS)
	}
	if got := nsPid(t, root); got != a.pid {
		t.Fatalf("adopted root has PID %d in its namespace, want its old PID %d", got, a.pid)
	}
	for _, kind := range []string{"mnt", "uts", "time"} {
		if nsOf(root, kind) != nsOf(os.Getpid(), kind) {
			t.Errorf("adopted root is in %s namespace %s, the host's is %s", kind, nsOf(root, kind), nsOf(os.Getpid(), kind))
		}
	}
	if st.Stdout != a.out {
		t.Errorf("app stdout %s, want the process's own %s", st.Stdout, a.out)
	}
	after := a.waitCounter(t, before+10)
	t.Logf("counter %d before adoption, %d after", before, after)

	// Epochs of the adopted app are taken of its whole namespace.
	ep, err := e.Checkpoint(t.Context(), name, CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	atEpoch := a.waitCounter(t, 0)
	a.waitCounter(t, atEpoch+5)
	if err := e.Stop(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.Restore(t.Context(), name, RestoreOptions{Epoch: ep.Manifest.Epoch}); err != nil {
		t.Fatal(err)
	}
	// The data file went back to the epoch; the counter goes on from there.
	n := a.waitCounter(t, atEpoch+10)
	t.Logf("epoch %d restored: counter %d", ep.Manifest.Epoch, n)

	// Exported, and imported by another engine, it resumes there.
	ep, err = e.Checkpoint(t.Context(), name, CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	atEpoch = a.waitCounter(t, 0)
	var archive bytes.Buffer
	if _, err := e.Export(t.Context(), name, ep.Manifest.Epoch, &archive, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.Stop(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	e2 := newEngine(t, t.TempDir(), nil)
	if _, _, err := e2.Import(t.Context(), &archive, ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e2.Restore(t.Context(), name, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	n = a.waitCounter(t, atEpoch+10)
	t.Logf("epoch %d exported and imported: counter %d", ep.Manifest.Epoch, n)
	if err := e2.Stop(t.Context(), name); err != nil {
		t.Fatal(err)
	}
}

func TestAdoptFailurePutsTreeBack(t *testing.T) {
	requireE2E(t)
	e := newEngine(t, t.TempDir(), nil)
	e.adoptFault = func(step string) error { return fmt.Errorf("injected failure at %s", step) }
	a := startHostApp(t)
	before := a.waitCounter(t, 5)
	cgroup, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", a.pid))
	if err != nil {
		t.Fatal(err)
	}
	name := uniqueName("adoptfail")
	killAppAtEnd(t, name)

	_, err = e.Adopt(t.Context(), AdoptOptions{Pid: a.pid, Name: name})
	if err == nil || !strings.Contains(err.Error(), "injected failure") || !strings.Contains(err.Error(), "put back") {
		t.Fatalf("Adopt: %v, want the injected failure and the tree put back", err)
	}
	t.Log(err)
	if !alive(a.pid) {
		t.Fatalf("pid %d does not run after the failed adoption", a.pid)
	}
	if got, want := nsOf(a.pid, "pid"), nsOf(os.Getpid(), "pid"); got != want {
		t.Fatalf("pid %d is in PID namespace %s, want the host's %s", a.pid, got, want)
	}
	if got, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", a.pid)); string(got) != string(cgroup) {
		t.Errorf("put back in cgroup %q, it was in %q", got, cgroup)
	}
	n := a.waitCounter(t, before+10)
	t.Logf("counter %d before, %d after the put-back", before, n)
	if _, err := e.App(name); err == nil {
		t.Errorf("app %s registered after a failed adoption", name)
	}
}

func TestAdoptRefuses(t *testing.T) {
	requireE2E(t)
	e := newEngine(t, t.TempDir(), nil)
	managed := startApp(t, e, "managed", appOpts{})
	for _, tc := range []struct {
		pid  int
		want string
	}{
		{managed.st.Pid, "runs in another PID namespace"},
		{1, "pid 1 is the system's init"},
		{os.Getpid(), "doppel itself"},
		{os.Getppid(), "doppel itself or one of its ancestors"},
		{1 << 22, "no process"},
	} {
		_, err := e.Adopt(t.Context(), AdoptOptions{Pid: tc.pid, Name: "x"})
		if !errors.Is(err, ErrCannotAdopt) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Adopt(%d): %v, want %q", tc.pid, err, tc.want)
		}
	}
}

// TestAdoptBlockedRunsOn: a tree that preflight refuses (a pipe shared with
// a process outside it) is not dumped and keeps running.
func TestAdoptBlockedRunsOn(t *testing.T) {
	requireE2E(t)
	e := newEngine(t, t.TempDir(), nil)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	a := startHostAppWith(t, hostAppOptions{change: func(cmd *exec.Cmd) { cmd.ExtraFiles = []*os.File{w} }})
	before := a.waitCounter(t, 5)
	_, err = e.Adopt(t.Context(), AdoptOptions{Pid: a.pid, Name: uniqueName("blocked")})
	if !errors.Is(err, introspect.ErrBlocked) || !strings.Contains(err.Error(), "outside the tree") {
		t.Fatalf("Adopt: %v, want a blocker naming the pipe held outside the tree", err)
	}
	t.Log(err)
	if got, want := nsOf(a.pid, "pid"), nsOf(os.Getpid(), "pid"); !alive(a.pid) || got != want {
		t.Fatalf("pid %d: alive %v, PID namespace %s, want the host's %s", a.pid, alive(a.pid), got, want)
	}
	a.waitCounter(t, before+5)

	// Where the test itself has no session leader in its PID namespace
	// (run by a PID 1 that never called setsid), a tree that did not call
	// setsid either cannot be dumped: preflight says so first.
	if sid, _ := unix.Getsid(0); sid == 0 {
		a := startHostAppWith(t, hostAppOptions{change: func(cmd *exec.Cmd) { cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true} }})
		_, err = e.Adopt(t.Context(), AdoptOptions{Pid: a.pid, Name: uniqueName("nosession")})
		if !errors.Is(err, introspect.ErrBlocked) || !strings.Contains(err.Error(), "sid 0") {
			t.Fatalf("Adopt of a tree in session 0: %v, want the sid 0 blocker", err)
		}
		t.Log(err)
		a.waitCounter(t, 5)
	}
}

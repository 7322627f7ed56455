package shim

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary plays three parts: the init (as the doppel binary does
// with its hidden subcommand), the application under it (selected by
// roleEnv), and the test itself.
const roleEnv = "DOPPEL_SHIM_TEST_ROLE"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == Subcommand {
		os.Exit(Main(os.Args[2:]))
	}
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(runRole(role))
	}
	os.Exit(m.Run())
}

// runRole runs one of the test applications.
func runRole(role string) int {
	switch role {
	case "identity":
		// Where am I in the namespace?
		fmt.Printf("pid=%d ppid=%d sid=%d godebug=%s\n", os.Getpid(), os.Getppid(), mustSid(), os.Getenv("GODEBUG"))
		return 0
	case "exit":
		code, _ := strconv.Atoi(os.Getenv("EXIT_CODE"))
		return code
	case "selfkill":
		_ = unix.Kill(os.Getpid(), unix.SIGKILL)
		time.Sleep(time.Hour)
		return 1
	case "signals":
		// Report every forwarded signal; exit 42 on SIGTERM.
		c := make(chan os.Signal, 8)
		signal.Notify(c, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGUSR1, unix.SIGUSR2)
		fmt.Println("ready")
		for s := range c {
			fmt.Printf("got %d\n", s.(syscall.Signal))
			if s == unix.SIGTERM {
				return 42
			}
		}
	case "orphans":
		// Double-fork a grandchild that outlives its parent: it is
		// reparented to the init and must be reaped there.
		self, _ := os.Executable()
		pid, err := syscall.ForkExec(self, []string{self}, &syscall.ProcAttr{
			Env:   withRole("forker"),
			Files: []uintptr{0, 1, 2},
		})
		if err != nil {
			fmt.Println("fork:", err)
			return 1
		}
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(pid, &ws, 0, nil)
		fmt.Println("forked")
		for { // stay alive: only the init can reap the orphan
			time.Sleep(time.Hour)
		}
	case "forker":
		self, _ := os.Executable()
		_, err := syscall.ForkExec(self, []string{self}, &syscall.ProcAttr{
			Env:   withRole("orphan"),
			Files: []uintptr{0, 1, 2},
		})
		if err != nil {
			return 1
		}
		return 0
	case "orphan":
		fmt.Printf("orphan %d exiting\n", os.Getpid())
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown role", role)
	return 99
}

// withRole returns the environment with the test role replaced.
func withRole(role string) []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, roleEnv+"=")
	})
	return append(env, roleEnv+"="+role)
}

// childrenOf returns the children of pid (host PIDs) with their state
// letter, from /proc/*/stat.
func childrenOf(t *testing.T, pid int) map[int]string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out[n] = f[0]
		}
	}
	return out
}

func mustSid() int {
	sid, err := unix.Getsid(0)
	if err != nil {
		return -1
	}
	return sid
}

// requireRoot skips without root unless running in CI, where the project
// always runs its tests as root and a skip would hide a failure.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("needs root (CLONE_NEWPID); CI runs tests as root")
	}
	t.Skip("needs root for CLONE_NEWPID: run with sudo (or scripts/test.sh)")
}

func testExe(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// startRole starts the test binary in the given role under the init and
// returns the process and a reader of the application's stdout. The tree
// is killed and reaped when the test ends, whatever happened.
func startRole(t *testing.T, role string, extraEnv ...string) (*Process, *bufio.Reader) {
	t.Helper()
	requireRoot(t)
	exe := testExe(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), roleEnv+"="+role)
	env = append(env, extraEnv...)
	p, err := Start(context.Background(), StartOptions{
		Exe:    exe,
		Args:   []string{exe},
		Env:    env,
		Stdout: w,
		Stderr: w,
	})
	w.Close()
	if err != nil {
		r.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.Kill()
		_, _ = p.Wait()
		r.Close()
	})
	return p, bufio.NewReader(r)
}

// readLine reads one line with a deadline.
func readLine(t *testing.T, br *bufio.Reader, d time.Duration) string {
	t.Helper()
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := br.ReadString('\n')
		ch <- res{strings.TrimSpace(s), err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("read app output: %v (got %q)", r.err, r.s)
		}
		return r.s
	case <-time.After(d):
		t.Fatalf("no output from app within %v", d)
		return ""
	}
}

// waitExit waits for the init with a deadline and returns its exit code.
func waitExit(t *testing.T, p *Process, d time.Duration) int {
	t.Helper()
	type res struct {
		st  *os.ProcessState
		err error
	}
	ch := make(chan res, 1)
	go func() {
		st, err := p.Wait()
		ch <- res{st, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("wait: %v", r.err)
		}
		return r.st.ExitCode()
	case <-time.After(d):
		t.Fatalf("init did not exit within %v", d)
		return -1
	}
}

func TestStartNewPIDNamespaceAndSession(t *testing.T) {
	p, out := startRole(t, "identity")
	line := readLine(t, out, 10*time.Second)
	// The init's runtime threads take the first IDs of the namespace, so
	// the application's PID is small but not necessarily 2.
	var pid, ppid, sid int
	var godebug string
	if _, err := fmt.Sscanf(line, "pid=%d ppid=%d sid=%d godebug=%s", &pid, &ppid, &sid, &godebug); err != nil {
		t.Fatalf("app reports %q: %v", line, err)
	}
	if pid <= 1 || pid > 64 || ppid != 1 || sid != 1 || godebug != "multipathtcp=0" {
		t.Fatalf("app reports %q, want a small pid, parent 1 (the init), session 1, GODEBUG=multipathtcp=0", line)
	}
	if code := waitExit(t, p, 10*time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	if p.Pid == 2 || p.Pid == os.Getpid() {
		t.Fatalf("host pid %d looks like a namespace pid", p.Pid)
	}
}

func TestExitStatusPropagates(t *testing.T) {
	p, _ := startRole(t, "exit", "EXIT_CODE=7")
	if code := waitExit(t, p, 10*time.Second); code != 7 {
		t.Fatalf("exit code %d, want 7", code)
	}
	p, _ = startRole(t, "selfkill")
	if code := waitExit(t, p, 10*time.Second); code != 128+int(unix.SIGKILL) {
		t.Fatalf("exit code %d, want %d", code, 128+int(unix.SIGKILL))
	}
}

func TestSignalsForwarded(t *testing.T) {
	p, out := startRole(t, "signals")
	if got := readLine(t, out, 10*time.Second); got != "ready" {
		t.Fatalf("got %q, want ready", got)
	}
	for _, s := range []syscall.Signal{unix.SIGUSR1, unix.SIGUSR2, unix.SIGHUP, unix.SIGINT} {
		if err := p.Signal(s); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("got %d", s)
		if got := readLine(t, out, 10*time.Second); got != want {
			t.Fatalf("after %v: app says %q, want %q", s, got, want)
		}
	}
	// SIGTERM from outside the namespace: the init must not ignore it.
	if err := p.Signal(unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if got, want := readLine(t, out, 10*time.Second), fmt.Sprintf("got %d", unix.SIGTERM); got != want {
		t.Fatalf("app says %q, want %q", got, want)
	}
	if code := waitExit(t, p, 10*time.Second); code != 42 {
		t.Fatalf("exit code %d, want the app's 42", code)
	}
}

func TestInitReapsOrphans(t *testing.T) {
	p, out := startRole(t, "orphans")
	// The orphan and the forker print in either order.
	seen := map[string]bool{}
	for len(seen) < 2 {
		l := readLine(t, out, 10*time.Second)
		switch {
		case l == "forked":
			seen["forked"] = true
		case strings.HasPrefix(l, "orphan ") && strings.HasSuffix(l, " exiting"):
			seen["orphan"] = true
		default:
			t.Fatalf("unexpected output %q", l)
		}
	}
	// Once the orphan has exited, the init's only child must be the app;
	// an unreaped orphan would stay listed as a zombie child forever.
	deadline := time.Now().Add(10 * time.Second)
	var last map[int]string
	for time.Now().Before(deadline) {
		last = childrenOf(t, p.Pid)
		if len(last) == 1 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(last) != 1 {
		t.Fatalf("init children %v: orphan not reaped", last)
	}
	var app int
	for pid, state := range last {
		if state == "Z" {
			t.Fatalf("remaining child %d is a zombie", pid)
		}
		app = pid
	}
	// Killing the init takes down the app with it.
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	waitExit(t, p, 10*time.Second)
	deadline = time.Now().Add(10 * time.Second)
	for unix.Kill(app, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("app %d survived its init", app)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMainUsageAndNotFound(t *testing.T) {
	exe := testExe(t)
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{Subcommand}, ExitUsage},
		{[]string{Subcommand, "--"}, ExitUsage},
		{[]string{Subcommand, "--", "/nonexistent/doppel-test-command"}, ExitNotFound},
		{[]string{Subcommand, "doppel-test-command-not-on-path"}, ExitNotFound},
		{[]string{Subcommand, "--", "/dev/null"}, ExitCannotExec},
		{[]string{Subcommand, "--", "/bin/sh", "-c", "exit 5"}, 5},
	} {
		cmd := exec.Command(exe, tc.args...)
		err := cmd.Run()
		code := cmd.ProcessState.ExitCode()
		if code != tc.want {
			t.Errorf("%v: exit %d (%v), want %d", tc.args, code, err, tc.want)
		}
	}
}

func TestStartRejectsBadOptions(t *testing.T) {
	ctx := context.Background()
	if _, err := Start(ctx, StartOptions{Exe: "/bin/true"}); err != ErrNoCommand {
		t.Fatalf("no args: %v, want ErrNoCommand", err)
	}
	if _, err := Start(ctx, StartOptions{Args: []string{"true"}}); err == nil {
		t.Fatal("no exe: want error")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Start(cctx, StartOptions{Exe: "/bin/true", Args: []string{"true"}}); err != context.Canceled {
		t.Fatalf("canceled: %v", err)
	}
}

func TestWithoutMPTCP(t *testing.T) {
	for _, tc := range []struct {
		in, want []string
	}{
		{nil, []string{"GODEBUG=multipathtcp=0"}},
		{[]string{"A=1"}, []string{"A=1", "GODEBUG=multipathtcp=0"}},
		{[]string{"GODEBUG="}, []string{"GODEBUG=multipathtcp=0"}},
		{[]string{"GODEBUG=x=1"}, []string{"GODEBUG=x=1,multipathtcp=0"}},
		{[]string{"GODEBUG=multipathtcp=1"}, []string{"GODEBUG=multipathtcp=1"}},
		{[]string{"GODEBUG=a=1", "B=2", "GODEBUG=c=3"}, []string{"GODEBUG=a=1", "B=2", "GODEBUG=c=3,multipathtcp=0"}},
	} {
		in := slices.Clone(tc.in)
		got := WithoutMPTCP(in)
		if !slices.Equal(got, tc.want) {
			t.Errorf("WithoutMPTCP(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if !slices.Equal(in, tc.in) {
			t.Errorf("WithoutMPTCP modified its input: %q", in)
		}
	}
}

func TestAttach(t *testing.T) {
	if _, err := Attach(0); err == nil {
		t.Fatal("Attach(0) accepted")
	}
	// A child the caller did not start through Start, as CRIU's restore
	// leaves one.
	pid, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", "exit 3"}, &syscall.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := Attach(pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill(); _, _ = p.Wait() })
	if code := waitExit(t, p, 10*time.Second); code != 3 {
		t.Fatalf("exit %d, want 3", code)
	}
	// Wait is idempotent.
	if st, err := p.Wait(); err != nil || st.ExitCode() != 3 {
		t.Fatalf("second Wait: %v %v", st, err)
	}
}

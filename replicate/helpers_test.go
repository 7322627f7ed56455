package replicate

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"doppel/replicate/criu"
	"doppel/replicate/freezer"
	"doppel/replicate/shim"
)

// roleEnv makes the test binary run a helper role instead of the tests
// (see runRole).
const roleEnv = "DOPPEL_REPLICATE_TEST_ROLE"

func TestMain(m *testing.M) {
	// The engine starts apps under /proc/self/exe as their init.
	if len(os.Args) > 1 && os.Args[1] == shim.Subcommand {
		os.Exit(shim.Main(os.Args[2:]))
	}
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(runRole(role))
	}
	if os.Geteuid() == 0 {
		// Restored trees are children of this process; their orphans
		// should be too, not of a PID 1 that reaps late.
		_ = criu.SetChildSubreaper()
	}
	code := m.Run()
	if testAppDir != "" {
		os.RemoveAll(testAppDir)
	}
	os.Exit(code)
}

// runRole runs a helper role of the test binary and returns its exit code.
func runRole(role string) int {
	switch role {
	case "checkpoint-and-die":
		// Checkpoint an app and die (SIGKILL) while it is frozen.
		cfg := DefaultConfig()
		cfg.StateDir = os.Getenv("DOPPEL_TEST_STATE")
		e, err := New(cfg, slog.New(slog.NewTextHandler(os.Stderr, nil)))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		_, err = e.Checkpoint(context.Background(), os.Getenv("DOPPEL_TEST_APP"), CheckpointOptions{
			Observer: func(ev Event) {
				if ev.Phase == SRM && !ev.End {
					_ = unix.Kill(os.Getpid(), unix.SIGKILL)
				}
			},
		})
		fmt.Fprintln(os.Stderr, "checkpoint returned:", err)
		return 3
	}
	fmt.Fprintln(os.Stderr, "unknown role", role)
	return 2
}

// skipOrFail skips a test whose prerequisite is missing, except in CI,
// where the project installs every prerequisite and a skip would hide a
// failure.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("prerequisite missing in CI: "+format, args...)
	}
	t.Skipf(format, args...)
}

var (
	testAppOnce sync.Once
	testAppDir  string
	testAppPath string
	testAppErr  error
)

// requireE2E skips (outside CI) unless the host can run the engine end to
// end: root, CRIU, a cgroup freezer, and the test app built.
func requireE2E(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test with CRIU; skipped with -short")
	}
	if os.Geteuid() != 0 {
		skipOrFail(t, "end-to-end tests need root: run with sudo or scripts/test.sh")
	}
	p, err := criu.Locate("", "")
	if err != nil {
		skipOrFail(t, "%v (install with: sudo scripts/get-criu.sh)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := criu.BinaryVersion(ctx, p)
	if err != nil {
		skipOrFail(t, "criu %s: %v (install with: sudo scripts/get-criu.sh)", p, err)
	}
	if v.Less(criu.MinVersion) {
		skipOrFail(t, "criu %s is %v, need %v (install with: sudo scripts/get-criu.sh)", p, v, criu.MinVersion)
	}
	if _, err := os.Stat("/sys/fs/cgroup"); err != nil {
		skipOrFail(t, "no cgroup file system: %v", err)
	}
	testAppOnce.Do(func() {
		testAppDir, testAppErr = os.MkdirTemp("", "doppel-replicate-app-")
		if testAppErr != nil {
			return
		}
		testAppPath = filepath.Join(testAppDir, "app")
		out, err := exec.Command("go", "build", "-o", testAppPath, "./testdata/app").CombinedOutput()
		if err != nil {
			testAppErr = fmt.Errorf("go build ./testdata/app: %v\n%s", err, out)
		}
	})
	if testAppErr != nil {
		t.Fatal(testAppErr)
	}
}

// logBuffer collects an engine's log lines for assertions and for the
// report of a failed test.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// testEngine is an Engine with its log.
type testEngine struct {
	*Engine
	logs *logBuffer
}

// newEngine opens an engine on stateDir; change adjusts the configuration.
// The engine is closed when the test ends; a failed test prints its log.
func newEngine(t testing.TB, stateDir string, change func(*Config)) *testEngine {
	t.Helper()
	cfg := DefaultConfig()
	cfg.StateDir = stateDir
	if change != nil {
		change(&cfg)
	}
	logs := &logBuffer{}
	e, err := New(cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = e.Close()
		if t.Failed() {
			t.Logf("engine log (%s):\n%s", stateDir, logs)
		}
	})
	return &testEngine{Engine: e, logs: logs}
}

// uniqueName returns an app name not used by another test run: apps of
// the same name share a freezer cgroup.
func uniqueName(base string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return base + "-" + hex.EncodeToString(b[:])
}

// appOpts describes a test app.
type appOpts struct {
	bufMB    int           // APP_BUF_MB
	shm      bool          // APP_SHM
	tick     time.Duration // APP_TICK
	dataDir  string        // declared data path; the app appends to ticks.log there when tick > 0
	extraEnv []string
}

// testApp is a running test app.
type testApp struct {
	name  string
	shm   bool // the app has the shared memory segment and its worker
	st    *AppState
	port  int
	nonce string
	data  string // the data file, "" without one
}

// startApp runs the test app under e and waits until it is ready. When
// the test ends, whatever runs of the app is killed and its cgroup
// removed, whichever engine started or restored it last.
func startApp(t testing.TB, e *testEngine, base string, o appOpts) *testApp {
	t.Helper()
	a := &testApp{name: uniqueName(base), shm: o.shm}
	env := append(os.Environ(), "APP_BUF_MB="+strconv.Itoa(o.bufMB))
	if o.shm {
		env = append(env, "APP_SHM=1")
	}
	if o.tick > 0 {
		env = append(env, "APP_TICK="+o.tick.String())
	}
	spec := Spec{Name: a.name, Args: []string{testAppPath}, Dir: t.TempDir(), Env: append(env, o.extraEnv...)}
	if o.dataDir != "" {
		spec.DataPaths = []string{o.dataDir}
		a.data = filepath.Join(o.dataDir, "ticks.log")
		spec.Env = append(spec.Env, "APP_DATA="+a.data)
	}
	killAppAtEnd(t, a.name)
	st, err := e.Run(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	a.st = st
	a.port, a.nonce = waitReady(t, st)
	return a
}

// killAppAtEnd kills, when the test ends, every process in any freezer
// cgroup of the app (each engine has its own parent: an app that moved
// between engines has one under each), and removes those cgroups.
func killAppAtEnd(t testing.TB, name string) {
	t.Cleanup(func() {
		def := freezer.DefaultConfig()
		var dirs []string
		for _, base := range []string{filepath.Join(def.Root, "freezer"), def.Root} {
			for _, pat := range []string{filepath.Join(base, def.Parent, name), filepath.Join(base, def.Parent, "*", name)} {
				m, _ := filepath.Glob(pat)
				dirs = append(dirs, m...)
			}
		}
		for _, dir := range dirs {
			rel, err := filepath.Rel(def.Root, filepath.Dir(dir))
			if err != nil {
				continue
			}
			cfg := def
			cfg.Parent = strings.TrimPrefix(rel, "freezer/")
			cg, err := freezer.Open(cfg, name)
			if err != nil {
				continue
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				pids, _ := cg.Pids()
				if len(pids) == 0 {
					break
				}
				for _, p := range pids {
					_ = unix.Kill(p, unix.SIGKILL)
				}
				_ = cg.Thaw()
				if time.Now().After(deadline) {
					t.Errorf("app %s: processes %v survive the end of the test", name, pids)
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := cg.Remove(); err != nil {
				t.Logf("remove cgroup: %v", err)
			}
		}
	})
}

// waitReady waits for the app's "ready" line on its stdout log and returns
// its port and nonce.
func waitReady(t testing.TB, st *AppState) (int, string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(st.Stdout)
		for _, l := range strings.Split(string(b), "\n") {
			var port, pid int
			var nonce string
			if n, _ := fmt.Sscanf(l, "ready port=%d nonce=%s pid=%d", &port, &nonce, &pid); n == 3 {
				return port, nonce
			}
		}
		if time.Now().After(deadline) {
			errs, _ := os.ReadFile(st.Stderr)
			t.Fatalf("app %s not ready within 20s; stdout:\n%s\nstderr:\n%s", st.Spec.Name, b, errs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// client is a line-protocol connection to a test app.
type client struct {
	c  net.Conn
	br *bufio.Reader
}

func dial(t testing.TB, port int) *client {
	t.Helper()
	c, err := net.DialTimeout("tcp4", "127.0.0.1:"+strconv.Itoa(port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{c: c, br: bufio.NewReader(c)}
}

// ask sends one request and returns the reply line.
func (c *client) ask(t testing.TB, req string) string {
	t.Helper()
	l, err := c.try(req, 15*time.Second)
	if err != nil {
		t.Fatalf("request %q: %v", req, err)
	}
	return l
}

func (c *client) try(req string, d time.Duration) (string, error) {
	_ = c.c.SetDeadline(time.Now().Add(d))
	if _, err := c.c.Write([]byte(req + "\n")); err != nil {
		return "", err
	}
	l, err := c.br.ReadString('\n')
	if err != nil {
		return "", err
	}
	l = strings.TrimSpace(l)
	if strings.HasPrefix(l, "error") {
		return l, fmt.Errorf("app: %s", l)
	}
	return l, nil
}

// appState is the reply to STATE.
type appState struct {
	nonce   string
	counter uint64
	shm     uint64
	shmOK   bool
}

func (c *client) state(t testing.TB) appState {
	t.Helper()
	l := c.ask(t, "STATE")
	var s appState
	if n, err := fmt.Sscanf(l, "state %s %d %d %t", &s.nonce, &s.counter, &s.shm, &s.shmOK); n != 4 {
		t.Fatalf("bad STATE reply %q: %v", l, err)
	}
	return s
}

func (c *client) sum(t testing.TB) string {
	t.Helper()
	l := c.ask(t, "SUM")
	s, ok := strings.CutPrefix(l, "sum ")
	if !ok {
		t.Fatalf("bad SUM reply %q", l)
	}
	return s
}

// tick is one line of the app's data file.
type tick struct {
	nonce   string
	counter uint64
	prev    uint64 // the value found in the shared memory before the tick
	bad     bool   // the shared memory did not hold its pattern
}

// readTicks parses the data file. A last line without its newline (written
// while it was read) is dropped.
func readTicks(t testing.TB, path string) []tick {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return parseTicks(t, b)
}

func parseTicks(t testing.TB, b []byte) []tick {
	t.Helper()
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1]
	} else {
		b = nil
	}
	var out []tick
	for _, l := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if l == "" {
			continue
		}
		f := strings.Fields(l)
		if len(f) < 3 {
			t.Fatalf("bad data line %q", l)
		}
		c, err1 := strconv.ParseUint(f[1], 10, 64)
		p, err2 := strconv.ParseUint(f[2], 10, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("bad data line %q", l)
		}
		out = append(out, tick{nonce: f[0], counter: c, prev: p, bad: len(f) > 3})
	}
	return out
}

// waitTicks waits until the data file has at least n lines.
func waitTicks(t testing.TB, path string, n int) []tick {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ts := readTicks(t, path)
		if len(ts) >= n {
			return ts
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has %d lines after 30s, want %d", path, len(ts), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkTicks checks that the data file is one unbroken history of one run
// of the app: counters 1, 2, 3, ... without gap or repeat, one nonce, and,
// for an app with shared memory, the segment holding the previous tick's
// value every time.
func checkTicks(t testing.TB, a *testApp, ts []tick) {
	t.Helper()
	for i, tk := range ts {
		if tk.nonce != a.nonce {
			t.Fatalf("line %d: nonce %s, want %s", i+1, tk.nonce, a.nonce)
		}
		if tk.counter != uint64(i)+1 {
			t.Fatalf("line %d: counter %d, want %d (a gap or a repeat: the data file does not match the memory)", i+1, tk.counter, i+1)
		}
		if a.shm && (tk.prev != tk.counter-1 || tk.bad) {
			t.Fatalf("line %d: shared memory held %d (pattern ok: %t) before tick %d, want %d", i+1, tk.prev, !tk.bad, tk.counter, tk.counter-1)
		}
	}
}

// appCgroup opens the freezer cgroup the engine keeps the app in.
func appCgroup(t testing.TB, e *testEngine, name string) *freezer.Cgroup {
	t.Helper()
	cg, err := freezer.Open(e.cfg.Freezer, name)
	if err != nil {
		t.Fatal(err)
	}
	return cg
}

// cgroupPids returns the processes in the app's freezer cgroup.
func cgroupPids(t testing.TB, e *testEngine, name string) []int {
	t.Helper()
	pids, err := appCgroup(t, e, name).Pids()
	if err != nil {
		t.Fatal(err)
	}
	return pids
}

// frozen reports whether the app's cgroup is frozen.
func frozen(t testing.TB, e *testEngine, name string) bool {
	t.Helper()
	f, err := appCgroup(t, e, name).Frozen()
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// waitCgroupSize waits until the app's cgroup holds n processes.
func waitCgroupSize(t testing.TB, e *testEngine, name string, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		pids := cgroupPids(t, e, name)
		if len(pids) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("app %s: %d processes in its cgroup (%v), want %d", name, len(pids), pids, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// epochNumbers lists the app's epochs once the background GC is done.
func epochNumbers(t testing.TB, e *testEngine, name string) []uint64 {
	t.Helper()
	e.waitGC()
	ms, err := e.Epochs(name)
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for _, m := range ms {
		out = append(out, m.Epoch)
	}
	return out
}

// stopAndWait stops the app and checks that nothing of it remains.
func stopAndWait(t testing.TB, e *testEngine, name string) {
	t.Helper()
	if err := e.Stop(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	st, err := e.App(name)
	if err != nil {
		t.Fatal(err)
	}
	if st.Running() || st.Pid != 0 {
		t.Fatalf("app %s still recorded running as pid %d", name, st.Pid)
	}
	waitCgroupSize(t, e, name, 0)
}

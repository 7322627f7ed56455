package node

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"doppel/node/api"
	"doppel/replicate/criu"
)

// The end-to-end tests build the doppel binary and a test app once, start
// real daemons (one process each, on their own 127.x.y.z addresses with the
// standard ports, state directories and sockets), drive them with the CLI
// and the typed API client, and stop every daemon and app they started when
// a test ends, even a failed one.

func TestMain(m *testing.M) {
	code := m.Run()
	if e2eBuild.dir != "" {
		// Anything still running from the binaries built here (daemons,
		// app inits, apps) belongs to a test that could not clean up.
		if left := killProcesses(e2eBuild.dir); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "e2e: killed %d leftover process(es): %s\n", len(left), strings.Join(left, "; "))
		}
		os.RemoveAll(e2eBuild.dir)
	}
	os.Exit(code)
}

// e2eBuild holds the binaries built once for all end-to-end tests.
var e2eBuild struct {
	once    sync.Once
	dir     string
	doppel  string // the doppel binary
	pageapp string // testdata/pageapp
	err     error
}

// skipOrFail skips a test whose prerequisite is missing, except in CI
// (CI set), where every prerequisite is installed and a skip would hide a
// failure.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("prerequisite missing in CI: "+format, args...)
	}
	t.Skipf(format, args...)
}

// requireE2E skips under -short, and (outside CI) unless the host can run
// the daemon end to end: root, CRIU 4.2+, a cgroup file system. It builds
// the binaries on first use.
func requireE2E(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test with real daemons and CRIU; skipped with -short")
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
	e2eBuild.once.Do(func() {
		e2eBuild.dir, e2eBuild.err = os.MkdirTemp("", "doppel-e2e-bin-")
		if e2eBuild.err != nil {
			return
		}
		e2eBuild.doppel = filepath.Join(e2eBuild.dir, "doppel")
		e2eBuild.pageapp = filepath.Join(e2eBuild.dir, "pageapp")
		for _, b := range [][2]string{{e2eBuild.doppel, "doppel"}, {e2eBuild.pageapp, "./testdata/pageapp"}} {
			out, err := exec.Command("go", "build", "-o", b[0], b[1]).CombinedOutput()
			if err != nil {
				e2eBuild.err = fmt.Errorf("go build %s: %v\n%s", b[1], err, out)
				return
			}
		}
	})
	if e2eBuild.err != nil {
		t.Fatal(e2eBuild.err)
	}
}

// killProcesses SIGKILLs every process whose command line mentions dir,
// waits (up to 5 s) for them to go, and describes them.
func killProcesses(dir string) []string {
	var killed []string
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte(dir)) {
			continue
		}
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			pids = append(pids, pid)
			cmd := strings.TrimSpace(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
			if len(cmd) > 120 {
				cmd = cmd[:120] + "…"
			}
			killed = append(killed, fmt.Sprintf("pid %d: %s", pid, cmd))
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for time.Now().Before(deadline) {
			// Gone, or a zombie whose parent has yet to reap it.
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil || bytes.Contains(b, []byte(") Z ")) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return killed
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// testCluster is a set of daemons of one cluster (one key), each on its own
// loopback address 127.A.B.(11+i) with the standard ports. All of them, and
// every app process started under its directory, end with the test.
type testCluster struct {
	t      *testing.T
	dir    string // state dirs, sockets, logs, key
	prefix string // "127.A.B."
	key    string // key file
	config string // an empty configuration file, so the host's does not apply
	nodes  []*daemon
	apps   []string // app names, whose cgroups are removed at the end
}

// daemon is one doppel node process.
type daemon struct {
	Name, IP, Sock, StateDir, LogPath string
	Client                            *api.Client

	c      *testCluster
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has been waited for
	err    error         // its exit status, valid once exited is closed
	logf   *os.File
	done   bool // stopped or killed by the test
}

// newCluster prepares a cluster directory and key; start adds daemons.
func newCluster(t *testing.T) *testCluster {
	t.Helper()
	requireE2E(t)
	// Short paths: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "dpe2e-")
	if err != nil {
		t.Fatal(err)
	}
	var b [2]byte
	_, _ = rand.Read(b[:])
	c := &testCluster{
		t:      t,
		dir:    dir,
		prefix: fmt.Sprintf("127.%d.%d.", 100+int(b[0])%100, 1+int(b[1])%250),
		key:    filepath.Join(dir, "key"),
		config: filepath.Join(dir, "config.yaml"),
	}
	t.Cleanup(c.cleanup)
	if err := os.WriteFile(c.config, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := c.cli("", "init", "--key-file", c.key); code != 0 {
		t.Fatalf("doppel init: exit %d: %s%s", code, out, errOut)
	}
	return c
}

// ip returns the address of the i-th node (from 0).
func (c *testCluster) ip(i int) string { return c.prefix + strconv.Itoa(11+i) }

// appAddr returns a TCP address for a test app, unique to this cluster.
func (c *testCluster) appAddr(i int) string { return c.prefix + strconv.Itoa(200+i) + ":4000" }

// newApp returns a fresh app name, remembered for the cleanup.
func (c *testCluster) newApp(base string) string {
	name := base + "-" + randomHex(3)
	c.apps = append(c.apps, name)
	return name
}

// nodeArgs are the flags of daemon i.
func (c *testCluster) nodeArgs(name, ip, stateDir, sock string, join bool, extra ...string) []string {
	args := []string{"--config", c.config, "node", "--name", name, "--bind", ip,
		"--key-file", c.key, "--state-dir", stateDir, "--socket", sock, "--preset", "fast"}
	if join {
		args = append(args, "--join", c.ip(0))
	}
	return append(args, extra...)
}

// start starts the next node (n1, n2, ...) and waits until its API
// answers; every node after the first joins the first. extra are more
// flags of doppel node.
func (c *testCluster) start(extra ...string) *daemon {
	c.t.Helper()
	i := len(c.nodes)
	name := fmt.Sprintf("n%d", i+1)
	dir := filepath.Join(c.dir, name)
	d := c.spawn(name, c.ip(i), dir, filepath.Join(dir, "api.sock"), c.nodeArgs(name, c.ip(i), dir, filepath.Join(dir, "api.sock"), i > 0, extra...))
	if err := d.waitReady(30 * time.Second); err != nil {
		c.t.Fatalf("%s: %v\n%s", name, err, d.logTail(60))
	}
	if i == 0 {
		// The first node bootstraps raft; the others join its cluster.
		waitFor(c.t, 20*time.Second, name+" elects itself raft leader", func() (bool, string) {
			st, err := d.Client.Status(context.Background())
			if err != nil {
				return false, err.Error()
			}
			return st.Leader == name && st.Quorum, fmt.Sprintf("%+v", st)
		})
	}
	return d
}

// spawn starts a doppel node process with args; it does not wait for it.
func (c *testCluster) spawn(name, ip, stateDir, sock string, args []string) *daemon {
	c.t.Helper()
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		c.t.Fatal(err)
	}
	logPath := filepath.Join(c.dir, name+".log")
	for i := 2; ; i++ {
		if _, err := os.Stat(logPath); errors.Is(err, os.ErrNotExist) {
			break
		}
		logPath = filepath.Join(c.dir, fmt.Sprintf("%s.%d.log", name, i))
	}
	logf, err := os.Create(logPath)
	if err != nil {
		c.t.Fatal(err)
	}
	d := &daemon{Name: name, IP: ip, Sock: sock, StateDir: stateDir, LogPath: logPath,
		Client: api.NewClient(sock), c: c, logf: logf, exited: make(chan struct{})}
	d.cmd = exec.Command(e2eBuild.doppel, args...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.Env = append(os.Environ(), "DOPPEL_SOCKET=")
	if err := d.cmd.Start(); err != nil {
		logf.Close()
		c.t.Fatalf("start %s: %v", name, err)
	}
	c.nodes = append(c.nodes, d)
	go func() {
		d.err = d.cmd.Wait()
		close(d.exited)
	}()
	return d
}

// waitReady waits until the daemon's API answers, failing early when the
// process exits.
func (d *daemon) waitReady(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	go func() {
		select {
		case <-d.exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := d.Client.WaitReady(ctx)
	select {
	case <-d.exited:
		return fmt.Errorf("daemon exited before its API answered: %v", d.err)
	default:
	}
	return err
}

// alive reports whether the process still runs.
func (d *daemon) alive() bool {
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// wait waits for the process to exit.
func (d *daemon) wait(timeout time.Duration) error {
	select {
	case <-d.exited:
		return d.err
	case <-time.After(timeout):
		return fmt.Errorf("%s still runs after %s", d.Name, timeout)
	}
}

// stop sends SIGTERM and requires a clean exit (status 0) within 20 s.
func (d *daemon) stop(t testing.TB) {
	t.Helper()
	if d.done {
		return
	}
	d.done = true
	if !d.alive() {
		t.Errorf("%s exited before it was stopped: %v\n%s", d.Name, d.err, d.logTail(40))
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	if err := d.wait(20 * time.Second); err != nil {
		t.Errorf("%s did not shut down cleanly on SIGTERM: %v\n%s", d.Name, err, d.logTail(40))
		_ = d.cmd.Process.Kill()
		_ = d.wait(5 * time.Second)
	}
}

// kill9 kills the daemon with SIGKILL (a machine failure) and reaps it.
func (d *daemon) kill9(t testing.TB) {
	t.Helper()
	d.done = true
	_ = d.cmd.Process.Kill()
	if err := d.wait(10 * time.Second); err == nil {
		t.Fatalf("%s exited cleanly after SIGKILL?", d.Name)
	}
}

// log returns the daemon's log so far.
func (d *daemon) log() string {
	b, _ := os.ReadFile(d.LogPath)
	return string(b)
}

// logTail returns the last n lines of the daemon's log.
func (d *daemon) logTail(n int) string {
	lines := strings.Split(strings.TrimRight(d.log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("--- %s log (%s), last %d lines:\n%s", d.Name, d.LogPath, len(lines), strings.Join(lines, "\n"))
}

// cleanup stops the apps, then every daemon (SIGTERM, clean exit
// required), kills whatever still runs from the cluster's directory, and
// prints the logs of a failed test.
func (c *testCluster) cleanup() {
	t := c.t
	var live []*daemon
	for _, d := range c.nodes {
		if !d.done && d.alive() {
			live = append(live, d)
		}
	}
	if len(live) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if apps, err := live[0].Client.Apps(ctx); err == nil {
			for _, a := range apps {
				if a.OP != "" {
					if err := live[0].Client.Stop(ctx, a.Name); err != nil {
						t.Logf("cleanup: stop %s: %v", a.Name, err)
					}
				}
			}
		}
		cancel()
	}
	var wg sync.WaitGroup
	for _, d := range live {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.stop(t)
		}()
	}
	wg.Wait()
	for _, d := range c.nodes {
		if !d.done {
			_ = d.cmd.Process.Kill()
			_ = d.wait(5 * time.Second)
		}
		d.logf.Close()
	}
	// An app left frozen (a daemon that died in the middle of a checkpoint
	// or a kill) ignores SIGKILL in a cgroup v1 freezer until thawed.
	cgroups := c.appCgroups()
	for _, cg := range cgroups {
		_ = os.WriteFile(filepath.Join(cg, "freezer.state"), []byte("THAWED"), 0)
		_ = os.WriteFile(filepath.Join(cg, "cgroup.freeze"), []byte("0"), 0)
	}
	if left := killProcesses(c.dir); len(left) > 0 {
		t.Logf("cleanup: killed %d process(es) left running: %s", len(left), strings.Join(left, "; "))
	}
	for _, cg := range cgroups {
		_ = os.Remove(cg)
	}
	for _, d := range c.nodes {
		// The engine's cgroup parent of this state directory, if empty.
		sum := sha256.Sum256([]byte(d.StateDir))
		for _, root := range cgroupRoots {
			_ = os.Remove(filepath.Join(root, hex.EncodeToString(sum[:4])))
		}
	}
	if t.Failed() {
		for _, d := range c.nodes {
			t.Log(d.logTail(150))
		}
		t.Logf("cluster directory kept: %s", c.dir)
		return
	}
	if err := os.RemoveAll(c.dir); err != nil {
		t.Logf("cleanup: %v", err)
	}
}

// cgroupRoots are where the engine makes its freezer cgroups: the cgroup
// v1 freezer hierarchy and the cgroup v2 root.
var cgroupRoots = []string{"/sys/fs/cgroup/freezer/doppel", "/sys/fs/cgroup/doppel"}

// appCgroups lists the freezer cgroups of the cluster's apps: ROOT/APP or
// ROOT/PARENT/APP, the parent being one per state directory.
func (c *testCluster) appCgroups() []string {
	var out []string
	for _, a := range c.apps {
		for _, root := range cgroupRoots {
			for _, pat := range []string{filepath.Join(root, a), filepath.Join(root, "*", a)} {
				m, _ := filepath.Glob(pat)
				out = append(out, m...)
			}
		}
	}
	return out
}

// cli runs the doppel CLI against a daemon's socket ("" for none) and
// returns its exit code and output.
func (c *testCluster) cli(sock string, args ...string) (code int, stdout, stderr string) {
	c.t.Helper()
	all := []string{"--config", c.config}
	if sock != "" {
		all = append(all, "--socket", sock)
	}
	all = append(all, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e2eBuild.doppel, all...)
	cmd.Env = append(os.Environ(), "DOPPEL_SOCKET=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		c.t.Fatalf("doppel %v: %v", args, err)
	}
	return code, out.String(), errb.String()
}

// mustCLI runs the CLI and fails the test unless it exits 0.
func (c *testCluster) mustCLI(sock string, args ...string) string {
	c.t.Helper()
	code, out, errOut := c.cli(sock, args...)
	if code != 0 {
		c.t.Fatalf("doppel %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// pageappArgs is the command line of a test app answering on addr.
func pageappArgs(addr string) []string {
	return []string{e2eBuild.pageapp, "-listen", addr, "-mb", "16", "-pages", "32", "-tick", "20ms"}
}

// appState is what a pageapp reports.
type appState struct {
	Counter uint64
	Sum     string // SHA-256 of its buffer
	OK      bool   // the buffer matches the replay of Counter ticks
	Seed    string
}

// askApp sends one command to a pageapp and returns its answer line.
func askApp(addr, cmd string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(c, cmd); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("%s: %w", cmd, err)
	}
	return strings.TrimSpace(line), nil
}

// queryApp reads a pageapp's state.
func queryApp(addr string) (appState, error) {
	line, err := askApp(addr, "STATE")
	if err != nil {
		return appState{}, err
	}
	f := strings.Fields(line)
	if len(f) != 5 || f[0] != "state" {
		return appState{}, fmt.Errorf("unexpected answer %q", line)
	}
	n, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return appState{}, fmt.Errorf("answer %q: %w", line, err)
	}
	return appState{Counter: n, Sum: f[2], OK: f[3] == "ok", Seed: f[4]}, nil
}

// appGone reports whether nothing answers on addr any more.
func appGone(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return true
	}
	c.Close()
	return false
}

// waitFor polls cond every 50 ms until it holds or timeout passes, then
// fails the test with what and cond's last description. It returns how
// long it waited.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	var last string
	for {
		ok, desc := cond()
		if ok {
			return time.Since(start)
		}
		last = desc
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s: %s", timeout, what, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ctxT returns a context for one API call.
func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// appOn returns the app as node d describes it.
func appOn(t testing.TB, d *daemon, name string) (api.AppDetail, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return d.Client.App(ctx, name)
}

// memberStates returns the node states d sees, by name.
func memberStates(d *daemon) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ns, err := d.Client.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, n := range ns {
		m[n.Name] = n.State
	}
	return m, nil
}

// clonesInSync reports whether every wanted clone of the app is in-sync
// with an acknowledged epoch of at least minEpoch, as the OP describes it.
func clonesInSync(info api.AppInfo, minEpoch uint64) (bool, string) {
	if len(info.Clones) != info.Replicas {
		return false, fmt.Sprintf("%d clone(s) of %d: %+v", len(info.Clones), info.Replicas, info.Clones)
	}
	for _, c := range info.Clones {
		if c.State != api.CloneInSync || c.AckedEpoch < minEpoch {
			return false, fmt.Sprintf("state %s, op %s, newest epoch %d, clones %s", info.State, info.OP, info.NewestEpoch, describeClones(info.Clones))
		}
	}
	return true, ""
}

func describeClones(cs []api.CloneInfo) string {
	var parts []string
	for _, c := range cs {
		s := fmt.Sprintf("%s:%s@%d", c.Node, c.State, c.AckedEpoch)
		if c.LastError != "" {
			s += " (" + c.LastError + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

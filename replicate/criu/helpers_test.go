package criu

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"doppel/replicate/shim"
)

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

// requireCRIU returns a driver for the installed CRIU, or skips (outside
// CI) when the host cannot run the CRIU tests.
func requireCRIU(t testing.TB) *Driver {
	t.Helper()
	if testing.Short() {
		t.Skip("CRIU end-to-end test; skipped with -short")
	}
	if os.Geteuid() != 0 {
		skipOrFail(t, "CRIU tests need root: run with sudo or scripts/test.sh")
	}
	d, err := New(DefaultConfig())
	if err != nil {
		skipOrFail(t, "%v (install with: sudo scripts/get-criu.sh)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := BinaryVersion(ctx, d.Path())
	if err != nil {
		skipOrFail(t, "criu %s: %v (install with: sudo scripts/get-criu.sh)", d.Path(), err)
	}
	if v.Less(MinVersion) {
		skipOrFail(t, "criu %s is %v, need %v (install with: sudo scripts/get-criu.sh)", d.Path(), v, MinVersion)
	}
	return d
}

// tree is an application started under the shim for a test.
type tree struct {
	p       *shim.Process
	dir     string // scratch directory of the test
	outPath string // the app's stdout log
	errPath string // the app's stderr log
}

// treeOpts varies how a test tree starts.
type treeOpts struct {
	env       []string // added to the environment
	keepMPTCP bool     // do not disable MPTCP for the Go test program
	truncLogs bool     // open the logs as `>` does, not for append
	dir       string   // working directory; default: the tree's own scratch dir
}

// startTree starts the test binary in role under the init, with stdout
// and stderr appended to log files, as doppel starts apps. The tree is
// killed and reaped when the test ends.
func startTree(t testing.TB, role string, o treeOpts) *tree {
	t.Helper()
	dir := t.TempDir()
	tr := &tree{dir: dir, outPath: filepath.Join(dir, "app.out"), errPath: filepath.Join(dir, "app.err")}
	flags := os.O_WRONLY | os.O_APPEND | os.O_CREATE
	if o.truncLogs {
		flags = os.O_WRONLY | os.O_TRUNC | os.O_CREATE
	}
	open := func(p string) *os.File {
		f, err := os.OpenFile(p, flags, 0o640)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	out, errf := open(tr.outPath), open(tr.errPath)
	defer out.Close()
	defer errf.Close()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cwd := o.dir
	if cwd == "" {
		cwd = dir
	}
	p, err := shim.Start(context.Background(), shim.StartOptions{
		Exe:       exe,
		Args:      []string{exe},
		Dir:       cwd,
		Env:       withRole(role, o.env...),
		KeepMPTCP: o.keepMPTCP,
		Stdout:    out,
		Stderr:    errf,
	})
	if err != nil {
		t.Fatal(err)
	}
	tr.p = p
	t.Cleanup(func() {
		_ = p.Kill()
		_, _ = p.Wait()
	})
	return tr
}

// waitLine polls a log file until a line starting with prefix appears and
// returns it.
func waitLine(t testing.TB, path, prefix string, d time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		b, _ := os.ReadFile(path)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, prefix) {
				return l
			}
		}
		if time.Now().After(deadline) {
			errs, _ := os.ReadFile(strings.TrimSuffix(path, ".out") + ".err")
			t.Fatalf("no line %q in %s within %v; log:\n%s\nstderr:\n%s", prefix, path, d, b, errs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// client is a line-protocol connection to the test tree.
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

func (c *client) send(t testing.TB, req string) {
	t.Helper()
	if err := c.c.SetWriteDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.c.Write([]byte(req + "\n")); err != nil {
		t.Fatalf("send %q: %v", req, err)
	}
}

// recv reads one reply line within d.
func (c *client) recv(t testing.TB, d time.Duration) (string, error) {
	t.Helper()
	if err := c.c.SetReadDeadline(time.Now().Add(d)); err != nil {
		t.Fatal(err)
	}
	l, err := c.br.ReadString('\n')
	return strings.TrimSpace(l), err
}

func (c *client) ask(t testing.TB, req string) string {
	t.Helper()
	c.send(t, req)
	l, err := c.recv(t, 10*time.Second)
	if err != nil {
		t.Fatalf("request %q: %v", req, err)
	}
	return l
}

// count asks for the counter and returns nonce and value.
func (c *client) count(t testing.TB) (nonce string, n int64) {
	t.Helper()
	return parseCount(t, c.ask(t, "count"))
}

func parseCount(t testing.TB, l string) (string, int64) {
	t.Helper()
	f := strings.Fields(l)
	if len(f) != 3 || f[0] != "count" {
		t.Fatalf("bad count reply %q", l)
	}
	n, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		t.Fatalf("bad count reply %q", l)
	}
	return f[1], n
}

// nsPids returns the PIDs of a process from the host's namespace down to
// its own (the NSpid line of /proc/<pid>/status).
func nsPids(t testing.TB, pid int) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "NSpid:"); ok {
			return strings.Fields(v)
		}
	}
	t.Fatalf("no NSpid for %d", pid)
	return nil
}

// procState returns the state letter of a process, "" when it is gone.
func procState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// waitState polls until pid is in state ("" for gone).
func waitState(t testing.TB, pid int, state string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for procState(pid) != state {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d in state %q, want %q", pid, procState(pid), state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// restore runs d.Restore and makes sure whatever it restored is killed and
// reaped when the test ends, even when the test expected a failure.
func restore(t testing.TB, d *Driver, opts RestoreOptions) (*RestoreResult, error) {
	t.Helper()
	rr, err := d.Restore(t.Context(), opts)
	if rr != nil && rr.Process != nil {
		adopt(t, rr.Process)
	}
	return rr, err
}

// adopt makes sure a restored root is killed and reaped when the test ends.
func adopt(t testing.TB, p *os.Process) {
	t.Helper()
	t.Cleanup(func() {
		_ = p.Kill()
		done := make(chan struct{})
		go func() { _, _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("restored pid %d not reaped", p.Pid)
		}
	})
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	s := procState(pid)
	return s != "" && s != "Z" && !errors.Is(unix.Kill(pid, 0), unix.ESRCH)
}

// imagesDir makes an empty images directory under the test's scratch dir.
func imagesDir(t testing.TB, name string) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), name)
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}

package chaos

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"doppel/node/api"
)

// cluster is a set of doppel daemons of one cluster key, each on its own
// address prefix+(11+i) with the standard ports. Every daemon, and every
// process started under the cluster's directory, ends with the test,
// failed or not.
//
// The nodes share the host, and by default its network stack: they bind
// loopback addresses 127.A.B.x, and an app's address is one loopback
// address for every node. With netns (newNetCluster), each node is a
// network namespace of its own (its own loopback, where its copy of the
// app listens), reached over a veth pair on a bridge in the test's
// namespace at 10.A.B.1, and a mount namespace in which the app data
// directory is the node's own: closer to separate machines, and needed to
// cut a node off the others while clients still reach it (partition).
type cluster struct {
	t      testing.TB
	dir    string // state dirs, sockets, logs, key, app data
	prefix string // "127.A.B." or "10.A.B."
	key    string
	config string // an empty configuration file, so the host's does not apply
	data   string // where apps keep their data (per node with netns)
	nodes  []*daemon
	rec    *recorder
	apps   []string
	netns  string // name prefix of the namespaces and links; "" without

	mu     sync.Mutex
	faults []fault
	cut    []int // nodes cut off by partition
	nsMade []int // nodes whose network namespace was created
}

// fault is an injected failure of a node: a kill (To zero) or a SIGSTOP
// from At to To.
type fault struct {
	Node   string
	At, To time.Time
	Kill   bool
}

// daemon is one node; each (re)start is a new process.
type daemon struct {
	c        *cluster
	Name, IP string
	Sock     string
	StateDir string
	LogPath  string
	Client   *api.Client
	Role     string
	extra    []string
	index    int

	mu   sync.Mutex
	proc *proc
	runs int // processes started so far
}

type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
	logf   *os.File
	done   bool // stopped or killed by the test
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newCluster prepares a cluster directory and key on loopback addresses;
// startNodes adds daemons.
func newCluster(t testing.TB) *cluster {
	t.Helper()
	var b [2]byte
	_, _ = rand.Read(b[:])
	return makeCluster(t, fmt.Sprintf("127.%d.%d.", 200+int(b[0])%55, 1+int(b[1])%250), "")
}

// newNetCluster prepares a cluster whose nodes get network namespaces.
func newNetCluster(t testing.TB) *cluster {
	t.Helper()
	var b [2]byte
	_, _ = rand.Read(b[:])
	for _, tool := range []string{"ip", "unshare", "nsenter", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("prerequisite missing in CI: %s (iproute2, util-linux): %v", tool, err)
			}
			t.Skipf("network namespaces need %s (apt-get install iproute2 util-linux): %v", tool, err)
		}
	}
	return makeCluster(t, fmt.Sprintf("10.%d.%d.", 200+int(b[0])%55, 1+int(b[1])%250), "dpc"+randomHex(2))
}

func makeCluster(t testing.TB, prefix, netns string) *cluster {
	t.Helper()
	requireE2E(t)
	// Short paths: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "dpchaos-")
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{
		t:      t,
		dir:    dir,
		prefix: prefix,
		key:    filepath.Join(dir, "key"),
		config: filepath.Join(dir, "config.yaml"),
		data:   filepath.Join(dir, "data"),
		netns:  netns,
	}
	c.rec = newRecorder()
	t.Cleanup(c.cleanup)
	if err := os.MkdirAll(c.data, 0o700); err != nil {
		t.Fatal(err)
	}
	if netns != "" {
		c.must("ip", "link", "add", c.bridge(), "type", "bridge")
		c.must("ip", "addr", "add", c.prefix+"1/24", "dev", c.bridge())
		c.must("ip", "link", "set", c.bridge(), "up")
	}
	if err := os.WriteFile(c.config, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := c.cli("", "init", "--key-file", c.key); err != nil {
		t.Fatalf("doppel init: %v\n%s", err, out)
	}
	return c
}

// ip returns the address of the i-th node (from 0).
func (c *cluster) ip(i int) string { return c.prefix + strconv.Itoa(11+i) }

// Names of the network namespace of node i, its veth pair, and the bridge.
func (c *cluster) ns(i int) string      { return fmt.Sprintf("%sn%d", c.netns, i+1) }
func (c *cluster) vethOut(i int) string { return fmt.Sprintf("%sv%d", c.netns, i+1) }
func (c *cluster) vethIn(i int) string  { return fmt.Sprintf("%sp%d", c.netns, i+1) }
func (c *cluster) bridge() string       { return c.netns + "br" }

// must runs a command the setup needs.
func (c *cluster) must(args ...string) {
	c.t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		c.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// addNetns gives node i its network namespace, linked to the bridge.
func (c *cluster) addNetns(i int) {
	c.t.Helper()
	ns := c.ns(i)
	c.must("ip", "netns", "add", ns)
	c.mu.Lock()
	c.nsMade = append(c.nsMade, i)
	c.mu.Unlock()
	c.must("ip", "link", "add", c.vethOut(i), "type", "veth", "peer", "name", c.vethIn(i))
	c.must("ip", "link", "set", c.vethIn(i), "netns", ns)
	c.must("ip", "link", "set", c.vethOut(i), "master", c.bridge())
	c.must("ip", "link", "set", c.vethOut(i), "up")
	c.must("ip", "-n", ns, "addr", "add", c.ip(i)+"/24", "dev", c.vethIn(i))
	c.must("ip", "-n", ns, "link", "set", c.vethIn(i), "up")
	c.must("ip", "-n", ns, "link", "set", "lo", "up")
}

// partition cuts node i off every other node, both ways: in each
// namespace the other side's address is routed to the loopback device,
// where packets for an address that is not local vanish (connections time
// out, datagrams are lost, as across a broken network);
// clients in the test's namespace still reach every node. heal undoes it.
func (c *cluster) partition(i int) {
	c.t.Helper()
	c.mu.Lock()
	c.cut = append(c.cut, i)
	c.mu.Unlock()
	for j := range c.nodes {
		if j != i {
			c.must("ip", "-n", c.ns(i), "route", "add", c.ip(j)+"/32", "dev", "lo")
			c.must("ip", "-n", c.ns(j), "route", "add", c.ip(i)+"/32", "dev", "lo")
		}
	}
}

func (c *cluster) heal(i int) {
	c.t.Helper()
	c.mu.Lock()
	c.cut = slices.DeleteFunc(c.cut, func(j int) bool { return j == i })
	c.mu.Unlock()
	for j := range c.nodes {
		if j != i {
			c.must("ip", "-n", c.ns(i), "route", "del", c.ip(j)+"/32", "dev", "lo")
			c.must("ip", "-n", c.ns(j), "route", "del", c.ip(i)+"/32", "dev", "lo")
		}
	}
}

// byName returns the node called name, or nil.
func (c *cluster) byName(name string) *daemon {
	for _, d := range c.nodes {
		if d.Name == name {
			return d
		}
	}
	return nil
}

// startNodes starts the workers n1..nN (and witnesses after them: roles[i]
// "witness"), waits until every one is an alive raft voter.
func (c *cluster) startNodes(roles ...string) {
	c.t.Helper()
	for i, role := range roles {
		name := fmt.Sprintf("n%d", i+1)
		dir := filepath.Join(c.dir, name)
		d := &daemon{c: c, Name: name, IP: c.ip(i), StateDir: dir, Sock: filepath.Join(dir, "api.sock"),
			LogPath: filepath.Join(c.dir, name+".log"), Role: role, index: i}
		if c.netns != "" {
			c.addNetns(i)
		}
		d.Client = api.NewClient(d.Sock)
		if role != "" && role != "worker" {
			d.extra = []string{"--role", role}
		}
		c.nodes = append(c.nodes, d)
		var join []string
		if i > 0 {
			join = []string{c.ip(0)}
		}
		d.spawn(join)
		if err := d.waitReady(30 * time.Second); err != nil {
			c.t.Fatalf("%s: %v\n%s", name, err, d.logTail(60))
		}
		if i == 0 {
			waitFor(c.t, 20*time.Second, name+" elects itself raft leader", func() (bool, string) {
				st, err := d.Client.Status(context.Background())
				if err != nil {
					return false, err.Error()
				}
				return st.Leader == name && st.Quorum, fmt.Sprintf("%+v", st)
			})
		}
	}
	c.waitVoters(60 * time.Second)
}

// sees reports whether observer's gossip has target alive.
func (c *cluster) sees(observer *daemon, target string) (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ns, err := observer.Client.Nodes(ctx)
	if err != nil {
		return false, err.Error()
	}
	for _, n := range ns {
		if n.Name == target {
			return n.State == api.NodeAlive, fmt.Sprintf("%s sees %s %s", observer.Name, target, n.State)
		}
	}
	return false, fmt.Sprintf("%s does not know %s", observer.Name, target)
}

// waitVoters waits until every node is alive and a raft voter, as each
// live node sees it.
func (c *cluster) waitVoters(timeout time.Duration) {
	c.t.Helper()
	waitFor(c.t, timeout, "every node alive and a raft voter", func() (bool, string) {
		for _, d := range c.nodes {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			ns, err := d.Client.Nodes(ctx)
			cancel()
			if err != nil {
				return false, d.Name + ": " + err.Error()
			}
			if len(ns) != len(c.nodes) {
				return false, fmt.Sprintf("%s sees %d node(s)", d.Name, len(ns))
			}
			for _, n := range ns {
				if n.State != api.NodeAlive || !n.Voter {
					return false, fmt.Sprintf("%s sees %s %s voter=%v", d.Name, n.Name, n.State, n.Voter)
				}
			}
		}
		return true, ""
	})
}

// spawn starts a process of the node, joining the given addresses, and
// follows its events; it does not wait for its API.
func (d *daemon) spawn(join []string) {
	c := d.c
	c.t.Helper()
	if err := os.MkdirAll(d.StateDir, 0o700); err != nil {
		c.t.Fatal(err)
	}
	logf, err := os.OpenFile(d.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	d.mu.Lock()
	d.runs++
	run := d.runs
	d.mu.Unlock()
	fmt.Fprintf(logf, "=== chaos: start %d of %s at %s\n", run, d.Name, time.Now().Format(time.RFC3339Nano))
	args := []string{"--config", c.config, "node", "--name", d.Name, "--bind", d.IP,
		"--key-file", c.key, "--state-dir", d.StateDir, "--socket", d.Sock, "--preset", "fast"}
	if len(join) > 0 {
		args = append(args, "--join", strings.Join(join, ","))
	}
	args = append(args, d.extra...)
	p := &proc{logf: logf, exited: make(chan struct{})}
	p.cmd = exec.Command(build.doppel, args...)
	if c.netns != "" {
		// In the node's network namespace, and in a mount namespace of
		// its own where the data directory is the node's. (Not ip netns
		// exec: it mounts a fresh /sys, without the cgroup hierarchies.)
		own := filepath.Join(c.dir, "nodedata", d.Name)
		if err := os.MkdirAll(own, 0o700); err != nil {
			c.t.Fatal(err)
		}
		script := `mount --bind "$1" "$2" && shift 2 && exec "$@"`
		p.cmd = exec.Command("unshare", append([]string{"--mount", "--propagation", "private",
			"nsenter", "--net=/run/netns/" + c.ns(d.index), "sh", "-c", script, "sh", own, c.data, build.doppel}, args...)...)
	}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.Env = append(os.Environ(), "DOPPEL_SOCKET=")
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		c.t.Fatalf("start %s: %v", d.Name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	d.mu.Lock()
	d.proc = p
	d.mu.Unlock()
	c.rec.follow(d, run)
}

func (d *daemon) current() *proc {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.proc
}

// pid is the daemon's process id.
func (d *daemon) pid() int { return d.current().cmd.Process.Pid }

// waitReady waits until the daemon's API answers, failing early when the
// process exits.
func (d *daemon) waitReady(timeout time.Duration) error {
	p := d.current()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	go func() {
		select {
		case <-p.exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := d.Client.WaitReady(ctx)
	select {
	case <-p.exited:
		return fmt.Errorf("daemon exited before its API answered: %v", p.err)
	default:
	}
	return err
}

// alive reports whether the current process runs.
func (d *daemon) alive() bool {
	select {
	case <-d.current().exited:
		return false
	default:
		return true
	}
}

// restart starts the node again on its state directory, joining the other
// nodes, and waits for its API.
func (d *daemon) restart() {
	c := d.c
	c.t.Helper()
	var join []string
	for i, o := range c.nodes {
		if o != d {
			join = append(join, c.ip(i))
		}
	}
	if c.netns != "" {
		// A machine that comes back has lost its kernel's state: the
		// sockets of the processes killed with it go with a fresh
		// namespace.
		c.must("ip", "netns", "del", c.ns(d.index))
		_ = exec.Command("ip", "link", "del", c.vethOut(d.index)).Run()
		c.addNetns(d.index)
	}
	d.spawn(join)
	if err := d.waitReady(30 * time.Second); err != nil {
		c.t.Fatalf("restart %s: %v\n%s", d.Name, err, d.logTail(60))
	}
}

// killTree is a machine failure: it stops the daemon and every process
// descending from it (its apps, CRIU), then kills them all with SIGKILL,
// and waits until they are gone. It returns the moment the daemon was
// stopped.
func (d *daemon) killTree() time.Time {
	c := d.c
	c.t.Helper()
	p := d.current()
	pid := p.cmd.Process.Pid
	_ = syscall.Kill(pid, syscall.SIGSTOP)
	// The failure happens once every thread has stopped; a request sent
	// before may still have been answered.
	at := waitStopped(pid)
	// A stopped process forks no more; stop the tree top-down until no new
	// descendant appears.
	stopped := map[int]bool{pid: true}
	for range 20 {
		grew := false
		for _, q := range descendants(pid) {
			if !stopped[q] {
				_ = syscall.Kill(q, syscall.SIGSTOP)
				stopped[q] = true
				grew = true
			}
		}
		if !grew {
			break
		}
	}
	for q := range stopped {
		_ = syscall.Kill(q, syscall.SIGKILL)
	}
	p.done = true
	c.mu.Lock()
	c.faults = append(c.faults, fault{Node: d.Name, At: at, Kill: true})
	c.mu.Unlock()
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		c.t.Fatalf("%s still runs 10 s after SIGKILL", d.Name)
	}
	delete(stopped, pid)
	waitGone(stopped, 10*time.Second)
	fmt.Fprintf(p.logf, "=== chaos: %s and %d descendant(s) killed at %s\n", d.Name, len(stopped), at.Format(time.RFC3339Nano))
	p.logf.Close()
	return at
}

// pause stops the daemon process alone (SIGSTOP) and returns once all
// its threads have stopped; resume continues it.
func (d *daemon) pause() time.Time {
	_ = syscall.Kill(d.pid(), syscall.SIGSTOP)
	return waitStopped(d.pid())
}

// waitStopped waits (up to a second) until every thread of pid is
// stopped or gone, and returns when that was seen.
func waitStopped(pid int) time.Time {
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		running := false
		for _, e := range ents {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, e.Name()))
			if err != nil {
				continue
			}
			i := bytes.LastIndexByte(b, ')')
			if i > 0 && len(b) > i+2 && b[i+2] != 'T' && b[i+2] != 't' && b[i+2] != 'Z' {
				running = true
				break
			}
		}
		if !running {
			break
		}
		time.Sleep(100 * time.Microsecond)
	}
	return time.Now()
}

func (d *daemon) resume(since time.Time) time.Time {
	at := time.Now()
	_ = syscall.Kill(d.pid(), syscall.SIGCONT)
	d.c.mu.Lock()
	d.c.faults = append(d.c.faults, fault{Node: d.Name, At: since, To: at})
	d.c.mu.Unlock()
	return at
}

// stop sends SIGTERM and requires a clean exit within 20 s.
func (d *daemon) stop(t testing.TB) {
	t.Helper()
	p := d.current()
	if p == nil || p.done {
		return
	}
	p.done = true
	defer p.logf.Close()
	select {
	case <-p.exited:
		t.Errorf("%s exited before it was stopped: %v\n%s", d.Name, p.err, d.logTail(40))
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT) // in case a test left it stopped
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if p.err != nil {
			t.Errorf("%s did not shut down cleanly on SIGTERM: %v\n%s", d.Name, p.err, d.logTail(40))
		}
	case <-time.After(20 * time.Second):
		// SIGQUIT makes the Go runtime print every goroutine to the log
		// and exit: where the shutdown hangs.
		size := d.logSize()
		_ = p.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.exited:
		case <-time.After(5 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		t.Errorf("%s still runs 20 s after SIGTERM\n%s\ngoroutines at SIGQUIT:\n%s", d.Name, d.logTail(40), d.goroutines(size))
	}
}

// logSize is the size of the node's log now.
func (d *daemon) logSize() int64 {
	fi, err := os.Stat(d.LogPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// goroutines returns the goroutine dump written to the node's log after
// offset from, without the runtime's own goroutines, at most 400 lines.
func (d *daemon) goroutines(from int64) string {
	b, _ := os.ReadFile(d.LogPath)
	if from > int64(len(b)) {
		from = 0
	}
	var out []string
	for _, g := range strings.Split(string(b[from:]), "\n\n") {
		if strings.HasPrefix(g, "goroutine ") && !strings.Contains(g, "doppel/") && !strings.Contains(g, "hashicorp/") {
			continue
		}
		out = append(out, strings.Split(g, "\n")...)
	}
	if len(out) > 400 {
		out = out[:400]
	}
	return strings.Join(out, "\n")
}

// logTail returns the last n lines of the node's log.
func (d *daemon) logTail(n int) string {
	b, _ := os.ReadFile(d.LogPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("--- %s log (%s), last %d lines:\n%s", d.Name, d.LogPath, len(lines), strings.Join(lines, "\n"))
}

// cleanup stops the apps, then every daemon (SIGTERM, clean exit
// required), kills whatever still runs from the cluster's directory, and
// prints the logs of a failed test.
func (c *cluster) cleanup() {
	t := c.t
	c.mu.Lock()
	cut := slices.Clone(c.cut)
	c.mu.Unlock()
	for _, i := range cut {
		c.heal(i)
	}
	var live []*daemon
	for _, d := range c.nodes {
		if p := d.current(); p != nil && !p.done {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
			if d.alive() {
				live = append(live, d)
			}
		}
	}
	if len(live) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
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
		if p := d.current(); p != nil && !p.done {
			_ = p.cmd.Process.Kill()
			<-p.exited
			p.logf.Close()
		}
	}
	c.rec.close()
	// A frozen process (an app fenced or caught in a checkpoint) dies of
	// SIGKILL only once thawed.
	c.thawApps()
	if left := killMatching(c.dir); len(left) > 0 {
		t.Logf("cleanup: killed %d process(es) left running: %s", len(left), strings.Join(left, "; "))
	}
	for _, d := range c.appCgroups() {
		_ = os.Remove(d)
	}
	if c.netns != "" {
		c.mu.Lock()
		made := slices.Clone(c.nsMade)
		c.mu.Unlock()
		slices.Sort(made)
		for _, i := range slices.Compact(made) {
			_ = exec.Command("ip", "netns", "del", c.ns(i)).Run()
			_ = exec.Command("ip", "link", "del", c.vethOut(i)).Run()
		}
		_ = exec.Command("ip", "link", "del", c.bridge()).Run()
	}
	if t.Failed() {
		for _, d := range c.nodes {
			t.Log(d.logTail(120))
		}
		var b strings.Builder
		for _, ev := range c.rec.all() {
			if ev.Kind != api.KindPhase && ev.Kind != api.KindAck && ev.Kind != api.KindEpoch {
				fmt.Fprintf(&b, "  %s %s[%d] %s %s: %s\n", ev.Time.Format("15:04:05.000"), ev.Node, ev.Run, ev.Kind, ev.App, ev.Message)
			}
		}
		t.Logf("events (without phases, epochs and acks):\n%s", b.String())
		t.Logf("cluster directory kept: %s", c.dir)
		return
	}
	if err := os.RemoveAll(c.dir); err != nil {
		t.Logf("cleanup: %v", err)
	}
}

// appCgroups lists the freezer cgroups of the cluster's apps (v2 or the
// v1 freezer's), one per node: doppel/<node id>/<app>.
func (c *cluster) appCgroups() []string {
	var out []string
	for _, a := range c.apps {
		for _, root := range []string{"/sys/fs/cgroup/doppel", "/sys/fs/cgroup/freezer/doppel"} {
			dirs, _ := filepath.Glob(filepath.Join(root, "*", a))
			out = append(out, dirs...)
			if _, err := os.Stat(filepath.Join(root, a)); err == nil {
				out = append(out, filepath.Join(root, a))
			}
		}
	}
	return out
}

// thawApps thaws every freezer cgroup of the cluster's apps.
func (c *cluster) thawApps() {
	for _, d := range c.appCgroups() {
		_ = os.WriteFile(filepath.Join(d, "freezer.state"), []byte("THAWED"), 0o644)
		_ = os.WriteFile(filepath.Join(d, "cgroup.freeze"), []byte("0"), 0o644)
	}
}

// cli runs the doppel CLI (against no socket when sock is "").
func (c *cluster) cli(sock string, args ...string) (string, error) {
	all := []string{"--config", c.config}
	if sock != "" {
		all = append(all, "--socket", sock)
	}
	all = append(all, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, build.doppel, all...)
	cmd.Env = append(os.Environ(), "DOPPEL_SOCKET=")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// --- processes

// procTable maps every process to its parent.
func procTable() map[int]int {
	parents := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		parents[pid] = ppid
	}
	return parents
}

// descendants returns every live process below pid.
func descendants(pid int) []int {
	children := map[int][]int{}
	for p, pp := range procTable() {
		children[pp] = append(children[pp], p)
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, ch := range children[p] {
			out = append(out, ch)
			queue = append(queue, ch)
		}
	}
	return out
}

// gone reports whether pid has exited (or is a zombie).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && len(b) > i+2 && b[i+2] == 'Z'
}

func waitGone(pids map[int]bool, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for pid := range pids {
		for !gone(pid) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// killMatching SIGKILLs every process whose command line contains s,
// waits for them to go, and describes them.
func killMatching(s string) []string {
	var killed []string
	pids := map[int]bool{}
	for _, pid := range matching(s) {
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			pids[pid] = true
			killed = append(killed, fmt.Sprintf("pid %d: %s", pid, cmdline(pid)))
		}
	}
	waitGone(pids, 5*time.Second)
	return killed
}

// matching returns the live processes whose command line contains s.
func matching(s string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() || gone(pid) {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(s)) {
			out = append(out, pid)
		}
	}
	return out
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	s := strings.TrimSpace(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}

// waitFor polls cond every 20 ms until it holds or timeout passes, then
// fails the test with what and cond's last description. It returns how
// long it waited.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	d, err := poll(timeout, cond)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return d
}

// poll is waitFor returning an error instead of failing.
func poll(timeout time.Duration, cond func() (bool, string)) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	var last string
	for {
		ok, desc := cond()
		if ok {
			return time.Since(start), nil
		}
		last = desc
		if time.Now().After(deadline) {
			return time.Since(start), fmt.Errorf("not true after %s: %s", timeout, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var errNoOP = errors.New("no OP known")

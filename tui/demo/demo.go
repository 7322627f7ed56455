// Package demo runs doppel's demonstration on one machine: a cluster of
// three nodes on loopback addresses, each a child process of the same
// binary (`doppel node ... --preset fast`) with its own state directory
// and API socket under one temporary directory and its own cluster key; a
// sample stateful app (package demoapp) with two clones; and a light client
// load against it. The dashboard (package tui) attaches to it and calls
// back into it to simulate a node failure.
//
// Close stops everything it started: the app through the API, the
// daemons with SIGTERM (SIGKILL after a grace period), any app process
// still alive with SIGKILL through a pidfd (immune to PID reuse), and
// removes the temporary directory. It needs root, as every doppel node
// does.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"doppel/node/api"
	"doppel/node/peer"
	"doppel/tui"
	"doppel/tui/demoapp"
)

// Config configures a demo cluster.
type Config struct {
	// Exe is the doppel binary to start nodes and the app with.
	Exe string
	// Dir is where state, sockets and logs go; "" makes a temporary
	// directory, removed by Close unless Keep.
	Dir  string
	Keep bool
	// IPs are the nodes' bind addresses, one node each.
	IPs []string
	// Ports are the gossip, raft and peer ports tried first on each IP;
	// when one is taken, the node gets free ports instead.
	Ports [3]int
	// Preset is the nodes' timing preset.
	Preset string
	// App is the sample app's name ("": kv); Replicas its clones;
	// Interval the time between its epochs.
	App      string
	Replicas int
	Interval time.Duration
	// LoadInterval is the time between two rounds of client requests.
	LoadInterval time.Duration
	// CRIUPath and CRIUPrefix are passed to the nodes when set.
	CRIUPath, CRIUPrefix string
	// LogLevel is the nodes' log level.
	LogLevel string
	// StartTimeout bounds the start of the cluster and of the app.
	StartTimeout time.Duration
	// StopTimeout bounds the graceful part of Close.
	StopTimeout time.Duration
	// Progress receives one line per step while starting and stopping;
	// nil discards.
	Progress io.Writer
	// Logger receives the demo's log; nil writes it to demo.log in Dir.
	Logger *slog.Logger
}

// DefaultConfig is three nodes on 127.0.0.11-13 with the default ports, an
// app kv with two clones checkpointed every 2 s, and a request round
// every 250 ms.
func DefaultConfig(exe string) Config {
	return Config{
		Exe:          exe,
		IPs:          []string{"127.0.0.11", "127.0.0.12", "127.0.0.13"},
		Ports:        [3]int{7946, 7947, 7948},
		Preset:       "fast",
		App:          "kv",
		Replicas:     2,
		Interval:     2 * time.Second,
		LoadInterval: 250 * time.Millisecond,
		LogLevel:     "info",
		StartTimeout: 90 * time.Second,
		StopTimeout:  20 * time.Second,
	}
}

// ErrNotRoot: the demo runs real nodes, which need root.
var ErrNotRoot = errors.New("doppel demo needs root: its nodes checkpoint processes with CRIU (run it with sudo)")

// Node is one daemon of the demo.
type Node struct {
	Name     string
	IP       string
	Ports    [3]int // gossip, raft, peer
	Socket   string
	StateDir string
	Log      string

	cmd    *exec.Cmd
	exited chan struct{}
	err    error // Wait's result, after exited
	killed bool
}

// Alive says whether the daemon process is still running.
func (n *Node) Alive() bool {
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// Cluster is a running demo. Its methods are safe for concurrent use.
type Cluster struct {
	cfg     Config
	log     *slog.Logger
	dir     string
	tempDir bool
	nodes   []*Node
	appAddr string
	dataDir string

	load       *demoapp.Load
	loadCancel context.CancelFunc
	loadDone   chan struct{}

	logFile *os.File // demo.log, when the demo logs there

	mu     sync.Mutex
	pidfds map[int]int // app pid -> pidfd, for apps seen running
	closed bool
}

var _ tui.Demo = (*Cluster)(nil)

func (c *Cluster) progress(format string, args ...any) {
	if c.cfg.Progress != nil {
		fmt.Fprintf(c.cfg.Progress, format+"\n", args...)
	}
	c.log.Info(fmt.Sprintf(format, args...))
}

// Start starts the cluster, the app and the load. On error everything
// already started is stopped.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if len(cfg.IPs) == 0 || cfg.Exe == "" {
		return nil, errors.New("demo: no IPs or binary")
	}
	if cfg.App == "" {
		cfg.App = "kv"
	}
	c := &Cluster{cfg: cfg, log: cfg.Logger, pidfds: map[int]int{}}
	c.dir = cfg.Dir
	if c.dir == "" {
		d, err := os.MkdirTemp("", "doppel-demo-")
		if err != nil {
			return nil, err
		}
		c.dir, c.tempDir = d, true
	}
	if c.log == nil {
		f, err := os.OpenFile(filepath.Join(c.dir, "demo.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, err
		}
		c.logFile = f
		c.log = slog.New(slog.NewTextHandler(f, nil))
	}
	ok := false
	defer func() {
		if !ok {
			cctx, cancel := context.WithTimeout(context.Background(), cfg.StopTimeout)
			c.Close(cctx)
			cancel()
		}
	}()
	sctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	if err := c.startNodes(sctx); err != nil {
		return nil, err
	}
	if err := c.startApp(sctx); err != nil {
		return nil, err
	}
	lctx, lcancel := context.WithCancel(context.Background())
	c.load = demoapp.NewLoad(c.appAddr, cfg.LoadInterval)
	c.loadCancel, c.loadDone = lcancel, make(chan struct{})
	go func() {
		defer close(c.loadDone)
		c.load.Run(lctx)
	}()
	ok = true
	return c, nil
}

// App is the sample app's name.
func (c *Cluster) App() string { return c.cfg.App }

// Dir is the directory of the demo's state, sockets and logs.
func (c *Cluster) Dir() string { return c.dir }

// Nodes are the demo's nodes.
func (c *Cluster) Nodes() []*Node { return c.nodes }

// AppAddr is the sample app's address.
func (c *Cluster) AppAddr() string { return c.appAddr }

// Endpoints are the nodes' sockets, for the dashboard.
func (c *Cluster) Endpoints() []tui.Endpoint {
	out := make([]tui.Endpoint, 0, len(c.nodes))
	for _, n := range c.nodes {
		out = append(out, tui.Endpoint{Node: n.Name, Socket: n.Socket})
	}
	return out
}

// Hint implements tui.Demo: what to try now.
func (c *Cluster) Hint() string {
	var down []string
	for _, n := range c.nodes {
		if !n.Alive() {
			down = append(down, n.Name)
		}
	}
	if len(down) > 0 {
		return fmt.Sprintf("%s down: a clone is promoted if the app's policy fails over; else restore it on a clone (r) · Events shows what happened",
			strings.Join(down, ","))
	}
	return fmt.Sprintf("demo: x kills %s's node · s stops %s · a attaches to the node under the cursor (Nodes) · r restores there",
		c.cfg.App, c.cfg.App)
}

// portsFree says whether the gossip (TCP and UDP), raft and peer ports are
// free on ip.
func portsFree(ip string, ports [3]int) bool {
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	for i, p := range ports {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(p)))
		if err != nil {
			return false
		}
		closers = append(closers, l)
		if i == 0 {
			u, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(p)))
			if err != nil {
				return false
			}
			closers = append(closers, u)
		}
	}
	return true
}

// freePorts picks three free ports on ip, the first free for UDP too.
func freePorts(ip string) ([3]int, error) {
	for range 50 {
		var ps [3]int
		var ls []net.Listener
		for i := range ps {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
			if err != nil {
				return ps, err
			}
			ls = append(ls, l)
			ps[i] = l.Addr().(*net.TCPAddr).Port
		}
		for _, l := range ls {
			l.Close()
		}
		if portsFree(ip, ps) {
			return ps, nil
		}
	}
	return [3]int{}, fmt.Errorf("no free ports on %s", ip)
}

// freeAddr picks a free TCP address on ip.
func freeAddr(ip string) (string, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func (c *Cluster) writeConfig() (string, string, error) {
	key, err := peer.NewKey()
	if err != nil {
		return "", "", err
	}
	keyFile := filepath.Join(c.dir, "cluster.key")
	if err := key.Save(keyFile, true); err != nil {
		return "", "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# written by doppel demo\nnode:\n  key_file: %s\n  preset: %s\nlog:\n  level: %s\n", keyFile, c.cfg.Preset, c.cfg.LogLevel)
	if c.cfg.CRIUPath != "" || c.cfg.CRIUPrefix != "" {
		b.WriteString("criu:\n")
		if c.cfg.CRIUPath != "" {
			fmt.Fprintf(&b, "  path: %s\n", c.cfg.CRIUPath)
		}
		if c.cfg.CRIUPrefix != "" {
			fmt.Fprintf(&b, "  prefix: %s\n", c.cfg.CRIUPrefix)
		}
	}
	cfgFile := filepath.Join(c.dir, "config.yaml")
	if err := os.WriteFile(cfgFile, []byte(b.String()), 0o600); err != nil {
		return "", "", err
	}
	return cfgFile, keyFile, nil
}

func (c *Cluster) startNodes(ctx context.Context) error {
	cfgFile, keyFile, err := c.writeConfig()
	if err != nil {
		return fmt.Errorf("demo: cluster key: %w", err)
	}
	for i, ip := range c.cfg.IPs {
		ports := c.cfg.Ports
		if !portsFree(ip, ports) {
			if ports, err = freePorts(ip); err != nil {
				return fmt.Errorf("demo: %w", err)
			}
		}
		name := fmt.Sprintf("n%d", i+1)
		n := &Node{
			Name: name, IP: ip, Ports: ports,
			StateDir: filepath.Join(c.dir, name),
			Socket:   filepath.Join(c.dir, name, "api.sock"),
			Log:      filepath.Join(c.dir, name+".log"),
			exited:   make(chan struct{}),
		}
		if err := os.MkdirAll(n.StateDir, 0o700); err != nil {
			return err
		}
		args := []string{"--config", cfgFile, "node", "--name", name, "--bind", ip,
			"--gossip-port", strconv.Itoa(ports[0]), "--raft-port", strconv.Itoa(ports[1]), "--peer-port", strconv.Itoa(ports[2]),
			"--state-dir", n.StateDir, "--socket", n.Socket, "--preset", c.cfg.Preset, "--key-file", keyFile}
		if i > 0 {
			first := c.nodes[0]
			args = append(args, "--join", net.JoinHostPort(first.IP, strconv.Itoa(first.Ports[0])))
		}
		logf, err := os.OpenFile(n.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		cmd := exec.Command(c.cfg.Exe, args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.Dir = c.dir
		// Own process group: a Ctrl-C on the terminal reaches the demo,
		// which stops the nodes in order; Pdeathsig stops them if the
		// demo dies without cleaning up.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
		c.progress("starting node %s on %s (ports %d/%d/%d, log %s)", name, ip, ports[0], ports[1], ports[2], n.Log)
		if err := cmd.Start(); err != nil {
			logf.Close()
			return fmt.Errorf("demo: start %s: %w", name, err)
		}
		n.cmd = cmd
		c.nodes = append(c.nodes, n)
		go func() {
			n.err = cmd.Wait()
			logf.Close()
			close(n.exited)
		}()
		if err := c.waitNode(ctx, n); err != nil {
			return err
		}
	}
	return c.waitCluster(ctx)
}

// waitNode waits until a node's API answers, or its process exits.
func (c *Cluster) waitNode(ctx context.Context, n *Node) error {
	ready := make(chan error, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { ready <- api.NewClient(n.Socket).WaitReady(wctx) }()
	select {
	case err := <-ready:
		if err != nil {
			return fmt.Errorf("demo: node %s did not start: %w (see %s)", n.Name, err, n.Log)
		}
		return nil
	case <-n.exited:
		return fmt.Errorf("demo: node %s exited: %v (see %s:\n%s)", n.Name, n.err, n.Log, tail(n.Log, 5))
	}
}

// tail is the last lines of a file.
func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// waitCluster waits until the first node sees every node alive and a
// raft leader with quorum.
func (c *Cluster) waitCluster(ctx context.Context) error {
	cl := api.NewClient(c.nodes[0].Socket)
	defer cl.Close()
	var last string
	for {
		st, err := cl.Status(ctx)
		if err == nil {
			ns, nerr := cl.Nodes(ctx)
			alive, voters := 0, 0
			for _, n := range ns {
				if n.State == api.NodeAlive {
					alive++
				}
				if n.Voter {
					voters++
				}
			}
			if nerr == nil && st.Quorum && st.Leader != "" && alive == len(c.nodes) && voters == len(c.nodes) {
				c.progress("cluster up: %d nodes, leader %s", alive, st.Leader)
				return nil
			}
			last = fmt.Sprintf("%d/%d alive, %d voter(s), leader %q, quorum %v", alive, len(c.nodes), voters, st.Leader, st.Quorum)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("demo: the cluster did not form: %s (see %s)", last, c.dir)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *Cluster) startApp(ctx context.Context) error {
	addr, err := freeAddr("127.0.0.1")
	if err != nil {
		return err
	}
	c.appAddr = addr
	c.dataDir = filepath.Join(c.dir, c.cfg.App+"-data")
	if err := os.MkdirAll(c.dataDir, 0o755); err != nil {
		return err
	}
	cl := api.NewClient(c.nodes[0].Socket)
	defer cl.Close()
	c.progress("starting app %s on %s (listening on %s, %d clones, epoch every %s)", c.cfg.App, c.nodes[0].Name, addr, c.cfg.Replicas, c.cfg.Interval)
	_, err = cl.Run(ctx, api.RunRequest{
		Name: c.cfg.App,
		Args: []string{c.cfg.Exe, "demo-app", "--listen", addr, "--data", c.dataDir},
		Dir:  c.dir,
		Env:  []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"},
		// The log file is the app's data: it travels with every epoch.
		DataPaths: []string{c.dataDir},
		Replicas:  c.cfg.Replicas,
		Interval:  api.Duration(c.cfg.Interval),
	})
	if err != nil {
		return fmt.Errorf("demo: run %s: %w", c.cfg.App, err)
	}
	for {
		d, err := cl.App(ctx, c.cfg.App)
		if err == nil && d.State == api.AppRunning && d.Pid > 0 {
			c.track(d.Pid)
			if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				conn.Close()
				c.progress("app %s running (pid %d)", c.cfg.App, d.Pid)
				return nil
			}
		}
		if err == nil && d.State == api.AppFailed {
			return fmt.Errorf("demo: %s failed to start (see %s)", c.cfg.App, c.nodes[0].Log)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("demo: %s did not start (state %q, see %s)", c.cfg.App, d.State, c.nodes[0].Log)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// track keeps a pidfd of an app process, so that Close can kill it even
// after its daemon is gone, without the risk of a reused PID.
func (c *Cluster) track(pid int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.pidfds[pid]; ok || c.closed {
		return
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return
	}
	c.pidfds[pid] = fd
}

// kill sends SIGKILL to a tracked app process.
func (c *Cluster) kill(pid int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	fd, ok := c.pidfds[pid]
	if !ok {
		return false
	}
	err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
	unix.Close(fd)
	delete(c.pidfds, pid)
	return err == nil
}

func (c *Cluster) node(name string) *Node {
	for _, n := range c.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// appsOn lists the apps node runs with their PIDs, from its own API.
func (c *Cluster) appsOn(ctx context.Context, n *Node) map[string]int {
	out := map[string]int{}
	cl := api.NewClient(n.Socket)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	apps, err := cl.Apps(ctx)
	if err != nil {
		return out
	}
	for _, a := range apps {
		if a.OP != n.Name {
			continue
		}
		if d, err := cl.App(ctx, a.Name); err == nil && d.Pid > 0 {
			out[a.Name] = d.Pid
			c.track(d.Pid)
		}
	}
	return out
}

// KillNode implements tui.Demo: SIGKILL to the node's daemon (its whole
// process group) and to every app it runs.
func (c *Cluster) KillNode(ctx context.Context, name string) (string, error) {
	n := c.node(name)
	if n == nil {
		return "", fmt.Errorf("no demo node %q", name)
	}
	if !n.Alive() {
		return "", fmt.Errorf("%s is not running", name)
	}
	apps := c.appsOn(ctx, n)
	pid := n.cmd.Process.Pid
	n.killed = true
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
		return "", fmt.Errorf("kill %s: %w", name, err)
	}
	var killed []string
	for app, apid := range apps {
		if c.kill(apid) {
			killed = append(killed, fmt.Sprintf("%s (pid %d)", app, apid))
		}
	}
	select {
	case <-n.exited:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	text := fmt.Sprintf("%s killed: daemon (pid %d)", name, pid)
	if len(killed) > 0 {
		text += " and " + strings.Join(killed, ", ")
	}
	c.log.Info("node killed", "node", name, "pid", pid, "apps", killed)
	return text, nil
}

// Status is a one-line account of the demo for headless runs.
func (c *Cluster) Status(ctx context.Context) string {
	var parts []string
	var alive *Node
	for _, n := range c.nodes {
		st := "up"
		if !n.Alive() {
			st = "down"
		} else if alive == nil {
			alive = n
		}
		parts = append(parts, n.Name+" "+st)
	}
	line := strings.Join(parts, " · ")
	if alive != nil {
		cl := api.NewClient(alive.Socket)
		defer cl.Close()
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if apps, err := cl.Apps(ctx); err == nil {
			for _, a := range apps {
				line += fmt.Sprintf(" | %s %s on %s term %d epoch #%d (%.1fs ago)", a.Name, a.State, dash(a.OP), a.Term, a.NewestEpoch, a.NewestEpochAge)
				var cs []string
				for _, cl := range a.Clones {
					cs = append(cs, fmt.Sprintf("%s %s #%d", cl.Node, cl.State, cl.AckedEpoch))
				}
				if len(cs) > 0 {
					line += " clones " + strings.Join(cs, ", ")
				}
			}
		} else {
			line += " | " + err.Error()
		}
		for _, n := range c.nodes {
			if n.Alive() {
				c.appsOn(ctx, n)
			}
		}
	}
	if c.load != nil {
		s := c.load.Stats()
		line += fmt.Sprintf(" | load %d ok %d failed, hits=%d", s.OK, s.Failed, s.Counter)
	}
	return line
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Close stops the load, the app, the daemons and any app process left,
// and removes the demo's directory (unless Keep or a directory given).
// It is safe to call more than once.
func (c *Cluster) Close(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	if c.loadCancel != nil {
		c.loadCancel()
		<-c.loadDone
	}
	// Stop the app through a live node, and wait for its OP to stop it.
	for _, n := range c.nodes {
		if n.Alive() {
			c.appsOn(ctx, n)
		}
	}
	if live := c.liveNode(); live != nil {
		c.progress("stopping app %s", c.cfg.App)
		cl := api.NewClient(live.Socket)
		sctx, cancel := context.WithTimeout(ctx, c.cfg.StopTimeout/2)
		if err := cl.Stop(sctx, c.cfg.App); err == nil {
			c.waitStopped(sctx)
		}
		cancel()
		cl.Close()
	}
	var errs []error
	for _, n := range c.nodes {
		if !n.Alive() {
			continue
		}
		c.progress("stopping node %s", n.Name)
		_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGTERM)
	}
	deadline := time.NewTimer(c.cfg.StopTimeout / 2)
	defer deadline.Stop()
	for _, n := range c.nodes {
		select {
		case <-n.exited:
		case <-deadline.C:
		case <-ctx.Done():
		}
		if n.Alive() {
			c.progress("node %s did not stop: SIGKILL", n.Name)
			_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
			<-n.exited
			errs = append(errs, fmt.Errorf("node %s did not stop in time", n.Name))
		}
	}
	// Whatever app process is left (its node was killed, or the stop did
	// not finish) is killed.
	c.mu.Lock()
	pids := make([]int, 0, len(c.pidfds))
	for pid := range c.pidfds {
		pids = append(pids, pid)
	}
	c.mu.Unlock()
	for _, pid := range pids {
		c.kill(pid)
	}
	if c.logFile != nil {
		c.logFile.Close()
	}
	if c.tempDir && !c.cfg.Keep {
		if err := os.RemoveAll(c.dir); err != nil {
			errs = append(errs, err)
		}
	} else {
		if c.cfg.Progress != nil {
			fmt.Fprintf(c.cfg.Progress, "kept %s (state, sockets and logs)\n", c.dir)
		}
	}
	return errors.Join(errs...)
}

func (c *Cluster) liveNode() *Node {
	for _, n := range c.nodes {
		if n.Alive() {
			return n
		}
	}
	return nil
}

// waitStopped waits until no live node runs the app.
func (c *Cluster) waitStopped(ctx context.Context) {
	for {
		running := false
		for _, n := range c.nodes {
			if !n.Alive() {
				continue
			}
			cl := api.NewClient(n.Socket)
			if d, err := cl.App(ctx, c.cfg.App); err == nil && d.Pid > 0 {
				running = true
			}
			cl.Close()
		}
		if !running {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

package node

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
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

// The relocation end-to-end tests move apps between real daemons while a
// client drives them through their service, and check that no request the
// client saw acknowledged is lost.

// kvappBuild is the chaos tests' reference app (failover/chaos/testdata/kvapp),
// built once on first use.
var kvappBuild struct {
	once sync.Once
	path string
	err  error
}

// requireKVApp builds that app into the end-to-end binary directory.
func requireKVApp(t *testing.T) string {
	t.Helper()
	requireE2E(t)
	kvappBuild.once.Do(func() {
		kvappBuild.path = filepath.Join(e2eBuild.dir, "kvapp")
		out, err := exec.Command("go", "build", "-o", kvappBuild.path, "../failover/chaos/testdata/kvapp").CombinedOutput()
		if err != nil {
			kvappBuild.err = fmt.Errorf("go build ../failover/chaos/testdata/kvapp: %v\n%s", err, out)
		}
	})
	if kvappBuild.err != nil {
		t.Fatal(kvappBuild.err)
	}
	return kvappBuild.path
}

// kvApp is a kvapp run behind a service on the cluster.
type kvApp struct {
	c      *testCluster
	Name   string
	Port   int    // the service's port on the OP's address
	Target string // the app's own address
	Data   string // its data directory
}

// runKV runs a kvapp on d with the given clones and a service with a sync
// journal, and waits until it answers through the service and its clones
// are in-sync.
func runKV(t *testing.T, c *testCluster, d *daemon, base string, i, replicas int) *kvApp {
	t.Helper()
	bin := requireKVApp(t)
	name := c.newApp(base)
	a := &kvApp{c: c, Name: name, Port: 7100 + i, Target: c.appAddr(i), Data: filepath.Join(c.dir, name)}
	req := api.RunRequest{Name: name, Args: []string{bin, "-listen", a.Target, "-data", a.Data}, Dir: c.dir,
		DataPaths: []string{a.Data}, Replicas: replicas, Interval: api.Duration(time.Second),
		Service: &api.Service{Listen: ":" + strconv.Itoa(a.Port), Target: a.Target, Framing: "line", Journal: "sync"}}
	if _, err := d.Client.Run(ctxT(t), req); err != nil {
		t.Fatalf("run %s on %s: %v", name, d.Name, err)
	}
	waitFor(t, 60*time.Second, name+" serves on "+d.Name, func() (bool, string) {
		v, err := kvAsk(a.addr(d.IP), "GET probe")
		return err == nil && v == "0", fmt.Sprintf("%q %v", v, err)
	})
	if replicas > 0 {
		waitFor(t, 60*time.Second, name+"'s clones in-sync", func() (bool, string) {
			info, err := opInfo(t, d, name)
			if err != nil {
				return false, err.Error()
			}
			return clonesInSync(info, 1)
		})
	}
	return a
}

// addr is the service's address on a node.
func (a *kvApp) addr(ip string) string { return net.JoinHostPort(ip, strconv.Itoa(a.Port)) }

// kvAsk sends one command on a fresh connection and returns the answer.
func kvAsk(addr, cmd string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(conn, cmd); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("%s: %w", cmd, err)
	}
	return strings.TrimSpace(line), nil
}

// opOf returns the daemon the live nodes name as the app's OP with the app
// running, asking each live node in turn.
func (a *kvApp) opOf() (*daemon, error) {
	var last error = errors.New("no live node")
	for _, d := range a.c.nodes {
		if !d.alive() {
			continue
		}
		det, err := appOn(a.c.t, d, a.Name)
		if err != nil {
			last = err
			continue
		}
		if det.State != api.AppRunning || det.OP == "" {
			last = fmt.Errorf("%s sees %s %s on %q", d.Name, a.Name, det.State, det.OP)
			continue
		}
		for _, o := range a.c.nodes {
			if o.Name == det.OP {
				return o, nil
			}
		}
		last = fmt.Errorf("unknown OP %q", det.OP)
	}
	return nil, last
}

// kvLoad is one client sending INCR requests back to back through the
// service, each with its own id. On a lost connection or a missing answer
// it finds the OP anew and resends the same request (the id makes a
// repeat harmless). Its n-th acknowledged increment must answer n: an
// acknowledged request that was lost shows as a repeated value.
type kvLoad struct {
	a    *kvApp
	key  string
	stop chan struct{}
	done chan struct{}

	mu        sync.Mutex
	acked     int64 // acknowledged increments, each answered acked
	bad       []string
	resends   int
	maxGap    time.Duration // the longest time between two acknowledgements
	lastAck   time.Time
	fatal     error
	connected string // the address of the current connection
}

func startKVLoad(a *kvApp, key string) *kvLoad {
	l := &kvLoad{a: a, key: key, stop: make(chan struct{}), done: make(chan struct{})}
	go l.run()
	a.c.t.Cleanup(l.halt)
	return l
}

func (l *kvLoad) run() {
	defer close(l.done)
	var conn net.Conn
	var r *bufio.Reader
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	l.mu.Lock()
	l.lastAck = time.Now()
	l.mu.Unlock()
	for seq := 1; ; seq++ {
		select {
		case <-l.stop:
			return
		default:
		}
		id := fmt.Sprintf("%s-%d", l.key, seq)
		// One request, resent until answered (within 60 s).
		deadline := time.Now().Add(60 * time.Second)
		for attempt := 0; ; attempt++ {
			if time.Now().After(deadline) {
				l.mu.Lock()
				l.fatal = fmt.Errorf("request %s unanswered for 60 s", id)
				l.mu.Unlock()
				return
			}
			if attempt > 0 {
				l.mu.Lock()
				l.resends++
				l.mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
			if conn == nil {
				op, err := l.a.opOf()
				if err != nil {
					continue
				}
				c, err := net.DialTimeout("tcp", l.a.addr(op.IP), time.Second)
				if err != nil {
					continue
				}
				conn, r = c, bufio.NewReader(c)
				l.mu.Lock()
				l.connected = op.Name
				l.mu.Unlock()
			}
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			line := ""
			_, err := fmt.Fprintf(conn, "INCR %s 1 %s\n", l.key, id)
			if err == nil {
				line, err = r.ReadString('\n')
			}
			if err != nil {
				conn.Close()
				conn = nil
				continue
			}
			v, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
			l.mu.Lock()
			now := time.Now()
			l.maxGap = max(l.maxGap, now.Sub(l.lastAck))
			l.lastAck = now
			switch {
			case err != nil:
				l.bad = append(l.bad, fmt.Sprintf("%s answered %q", id, line))
			case v != l.acked+1:
				l.bad = append(l.bad, fmt.Sprintf("%s answered %d after %d acknowledged increments (one lost or applied twice)", id, v, l.acked))
			}
			l.acked++
			l.mu.Unlock()
			break
		}
	}
}

// count returns the acknowledged increments so far.
func (l *kvLoad) count() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acked
}

// halt stops the client after its current request.
func (l *kvLoad) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
}

// waitMore waits until n more increments are acknowledged.
func (l *kvLoad) waitMore(t *testing.T, n int64, timeout time.Duration) {
	t.Helper()
	from := l.count()
	waitFor(t, timeout, fmt.Sprintf("%d more acknowledged increments", n), func() (bool, string) {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.fatal != nil {
			t.Fatalf("client: %v", l.fatal)
		}
		return l.acked >= from+n, fmt.Sprintf("%d acknowledged (from %d), %d resends, connected to %s", l.acked, from, l.resends, l.connected)
	})
}

// finish stops the client and checks every acknowledged increment against
// the app as the OP d serves it: its value is the count of acknowledged
// increments, and its data file holds each applied id once.
func (l *kvLoad) finish(t *testing.T, d *daemon) {
	t.Helper()
	l.halt()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fatal != nil {
		t.Errorf("client: %v", l.fatal)
	}
	for _, b := range l.bad {
		t.Errorf("client: %s", b)
	}
	v, err := kvAsk(l.a.addr(d.IP), "GET "+l.key)
	if err != nil {
		t.Fatalf("GET %s on %s: %v", l.key, d.Name, err)
	}
	if v != strconv.FormatInt(l.acked, 10) {
		t.Errorf("%s = %s on %s, want %d acknowledged increments", l.key, v, d.Name, l.acked)
	}
	if chk, err := kvAsk(l.a.addr(d.IP), "CHECK"); err != nil || !strings.HasPrefix(chk, "ok ") {
		t.Errorf("CHECK on %s: %q %v", d.Name, chk, err)
	}
	t.Logf("client: %d increments acknowledged, %d resends, longest wait between acknowledgements %s", l.acked, l.resends, l.maxGap.Round(time.Millisecond))
}

// appProcs returns the pids of processes whose command line holds the
// app's data directory (its copies, wherever they run).
func (a *kvApp) procs() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) > 0 && args[0] == kvappBuild.path && strings.Contains(string(b), "\x00"+a.Data) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// checkRunsOnlyOn checks that every live node names d as the app's OP,
// that d runs it, and that one copy of it runs on the machine (the nodes
// share it, so a copy left on another node would show as a second one).
func (a *kvApp) checkRunsOnlyOn(t *testing.T, d *daemon) {
	t.Helper()
	for _, o := range a.c.nodes {
		if !o.alive() {
			continue
		}
		det, err := appOn(t, o, a.Name)
		if err != nil {
			t.Errorf("%s: app %s: %v", o.Name, a.Name, err)
			continue
		}
		if det.OP != d.Name {
			t.Errorf("%s sees %s's OP as %q, want %s", o.Name, a.Name, det.OP, d.Name)
		}
		if o == d && (det.State != api.AppRunning || det.Pid == 0) {
			t.Errorf("%s: %s is %s with pid %d, want running", o.Name, a.Name, det.State, det.Pid)
		}
	}
	waitFor(t, 10*time.Second, "one running copy of "+a.Name, func() (bool, string) {
		p := a.procs()
		return len(p) == 1, fmt.Sprintf("pids %v", p)
	})
}

func TestE2ERelocateUnderLoad(t *testing.T) {
	c := newCluster(t)
	n1, n2, _ := c.start(), c.start(), c.start()
	a := runKV(t, c, n1, "reloc", 0, 2)
	load := startKVLoad(a, "k")
	load.waitMore(t, 100, 30*time.Second)

	res, err := n1.Client.Relocate(ctxT(t), a.Name, "n2")
	if err != nil {
		t.Fatalf("relocate %s to n2: %v", a.Name, err)
	}
	t.Logf("relocation: pause %.1f ms, %d bytes in the last epoch (epoch %d, term %d)", res.PauseMs, res.BytesSent, res.Epoch, res.Term)
	if res.PauseMs <= 0 || res.From != "n1" || res.To != "n2" || res.Term != 2 || res.Epoch == 0 || res.BytesSent <= 0 {
		t.Errorf("relocate answered %+v", res)
	}
	load.waitMore(t, 100, 30*time.Second)
	load.finish(t, n2)
	a.checkRunsOnlyOn(t, n2)
	if !appGone(a.addr(n1.IP)) {
		t.Errorf("the service still answers on n1 after the move")
	}
}

// killNodeApps kills the app processes in node d's cgroups, as a machine
// failure would end them along with its daemon.
func killNodeApps(t *testing.T, d *daemon) {
	t.Helper()
	sum := sha256.Sum256([]byte(d.StateDir))
	for _, root := range cgroupRoots {
		dirs, _ := filepath.Glob(filepath.Join(root, hex.EncodeToString(sum[:4]), "*"))
		for _, cg := range dirs {
			_ = os.WriteFile(filepath.Join(cg, "freezer.state"), []byte("THAWED"), 0)
			_ = os.WriteFile(filepath.Join(cg, "cgroup.freeze"), []byte("0"), 0)
			for _, f := range []string{"cgroup.procs", "tasks"} {
				b, err := os.ReadFile(filepath.Join(cg, f))
				if err != nil {
					continue
				}
				for _, s := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(s); err == nil {
						t.Logf("killing %s's app process %d (%s)", d.Name, pid, cg)
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
		}
	}
}

// waitEvent waits for an event of the log that matches.
func waitEvent(t *testing.T, l *eventLog, timeout time.Duration, what string, match func(api.Event) bool) api.Event {
	t.Helper()
	var got api.Event
	waitFor(t, timeout, what, func() (bool, string) {
		evs := l.snapshot()
		for _, ev := range evs {
			if match(ev) {
				got = ev
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d events", len(evs))
	})
	return got
}

func TestE2ERelocateTargetDies(t *testing.T) {
	c := newCluster(t)
	n1, _, n3 := c.start(), c.start(), c.start()
	a := runKV(t, c, n1, "relocdie", 0, 2)
	events := watchEvents(t, n1)
	load := startKVLoad(a, "k")
	load.waitMore(t, 100, 30*time.Second)

	type result struct {
		res api.RelocateResult
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		res, err := n1.Client.Relocate(ctx, a.Name, "n3")
		done <- result{res, err}
	}()
	// The target dies as the source starts its last epoch (the app frozen).
	waitEvent(t, events, 30*time.Second, "the relocation's last epoch starts", func(ev api.Event) bool {
		return ev.Kind == api.KindRelocation && ev.App == a.Name && ev.Fields["phase"] == "last epoch"
	})
	n3.kill9(t)
	killNodeApps(t, n3)
	var r result
	select {
	case r = <-done:
	case <-time.After(70 * time.Second):
		t.Fatal("the relocation did not return")
	}
	t.Logf("relocation to n3, killed at its last epoch, returned after %s: %+v, %v", time.Since(start).Round(time.Millisecond), r.res, r.err)
	if r.err == nil {
		t.Errorf("relocation to a node killed midway succeeded: %+v", r.res)
	}
	// The app serves on n1 (rolled back) or on a promoted clone, and the
	// client goes on without losing an acknowledged increment.
	load.waitMore(t, 100, 30*time.Second)
	op, err := a.opOf()
	if err != nil {
		t.Fatal(err)
	}
	if op == n3 {
		t.Fatalf("the dead target is named OP")
	}
	t.Logf("%s serves on %s after the failed relocation", a.Name, op.Name)
	load.finish(t, op)
	a.checkRunsOnlyOn(t, op)
}

// nodeInfo returns node name as d lists it.
func nodeInfo(t *testing.T, d *daemon, name string) api.NodeInfo {
	t.Helper()
	ns, err := d.Client.Nodes(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		if n.Name == name {
			return n
		}
	}
	t.Fatalf("%s does not list node %s: %+v", d.Name, name, ns)
	return api.NodeInfo{}
}

// cloneNodes lists the nodes holding a clone of the app, as d sees it.
func cloneNodes(t *testing.T, d *daemon, name string) []string {
	t.Helper()
	info, err := opInfo(t, d, name)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, cl := range info.Clones {
		out = append(out, cl.Node)
	}
	slices.Sort(out)
	return out
}

func TestE2EDrainUndrain(t *testing.T) {
	c := newCluster(t)
	n1, n2, n3 := c.start(), c.start(), c.start()
	var apps []*kvApp
	for i := range 3 {
		apps = append(apps, runKV(t, c, n2, "drain", i, 1))
	}
	for _, a := range apps {
		if op, err := a.opOf(); err != nil || op != n2 {
			t.Fatalf("%s runs on %v (%v), want n2", a.Name, op, err)
		}
	}

	out := c.mustCLI(n1.Sock, "drain", "n2")
	if !strings.Contains(out, "n2 drained (3 app(s) moved)") {
		t.Errorf("doppel drain n2 printed %q", out)
	}
	if ni := nodeInfo(t, n3, "n2"); !ni.Drained || len(ni.Apps) != 0 {
		t.Errorf("n2 after the drain, as n3 lists it: drained %v, apps %v", ni.Drained, ni.Apps)
	}
	for _, a := range apps {
		op, err := a.opOf()
		if err != nil {
			t.Fatal(err)
		}
		if op == n2 {
			t.Errorf("%s still runs on the drained n2", a.Name)
			continue
		}
		if v, err := kvAsk(a.addr(op.IP), "GET probe"); err != nil || v != "0" {
			t.Errorf("%s on %s after the drain: %q %v", a.Name, op.Name, v, err)
		}
		a.checkRunsOnlyOn(t, op)
		t.Logf("%s moved to %s; clones on %v", a.Name, op.Name, cloneNodes(t, n1, a.Name))
	}

	// A drained node gets no new clone: an app wanting two on n1 gets at
	// most n3, the one other schedulable node.
	fresh := c.newApp("fresh")
	info, err := n1.Client.Run(ctxT(t), api.RunRequest{Name: fresh, Args: pageappArgs(c.appAddr(3)), Dir: c.dir, Replicas: 2})
	if err != nil {
		t.Logf("an app wanting two clones while n2 is drained: %v", err)
	} else {
		for _, cl := range info.Clones {
			if cl.Node == "n2" {
				t.Errorf("the drained n2 got a clone of a new app: %+v", info)
			}
		}
		t.Logf("an app wanting two clones while n2 is drained got %s", describeClones(info.Clones))
	}
	if _, err := n1.Client.Relocate(ctxT(t), apps[0].Name, "n2"); !errors.Is(err, api.ErrConflict) {
		t.Errorf("relocation to the drained n2: %v, want a conflict", err)
	}

	// Undrain: n2 is schedulable again (once every node, n2 included,
	// says so): an app wanting two clones on n1 gets n2 and n3.
	c.mustCLI(n3.Sock, "undrain", "n2")
	for _, d := range []*daemon{n1, n2, n3} {
		waitFor(t, 15*time.Second, d.Name+" sees n2 undrained", func() (bool, string) {
			ni := nodeInfo(t, d, "n2")
			return !ni.Drained, fmt.Sprintf("%+v", ni)
		})
	}
	again := c.newApp("again")
	info, err = n1.Client.Run(ctxT(t), api.RunRequest{Name: again, Args: pageappArgs(c.appAddr(4)), Dir: c.dir, Replicas: 2})
	if err != nil {
		t.Fatalf("run %s after the undrain: %v", again, err)
	}
	if got := cloneNodes(t, n1, again); !slices.Equal(got, []string{"n2", "n3"}) {
		t.Errorf("clones of an app started after n2 was undrained: %v, want [n2 n3]", got)
	}
}

func TestE2ERelocateBadInput(t *testing.T) {
	c := newCluster(t)
	n1, n2, n3 := c.start(), c.start(), c.start()
	c.start("--role", "witness")
	waitFor(t, 20*time.Second, "n1 sees the witness n4 alive", func() (bool, string) {
		ni := nodeInfo(t, n1, "n4")
		return ni.State == api.NodeAlive && ni.Role == "witness", fmt.Sprintf("%+v", ni)
	})
	one := c.newApp("one")
	if _, err := n1.Client.Run(ctxT(t), api.RunRequest{Name: one, Args: pageappArgs(c.appAddr(0)), Dir: c.dir, Replicas: 1, Interval: api.Duration(time.Second)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, one+"'s clone in-sync", func() (bool, string) {
		info, err := opInfo(t, n1, one)
		if err != nil {
			return false, err.Error()
		}
		return clonesInSync(info, 1)
	})
	// Started once the first app is checkpointed: two apps started at
	// once on a node race to install the init binary, and the second copy,
	// renamed over the first, leaves the first app mapping a deleted file
	// CRIU cannot dump (replicate/shim's installFile).
	alone := c.newApp("alone")
	if _, err := n1.Client.Run(ctxT(t), api.RunRequest{Name: alone, Args: pageappArgs(c.appAddr(1)), Dir: c.dir, Replicas: 0}); err != nil {
		t.Fatal(err)
	}
	clone := cloneNodes(t, n1, one)[0]

	refused := func(what, app, to, want string) {
		t.Helper()
		_, err := n2.Client.Relocate(ctxT(t), app, to)
		if !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), want) {
			t.Errorf("relocate %s (%s) to %s: %v, want a conflict saying %q", app, what, to, err, want)
		} else {
			t.Logf("relocate %s to %s refused: %v", what, to, err)
		}
	}
	refused("an app", one, "nosuch", "no node nosuch")
	refused("an app", one, "n4", "witness")
	refused("an app", one, "n1", "already runs on n1")
	refused("an app with no clone", alone, "n2", "has no clone")
	code, _, errOut := c.cli(n3.Sock, "relocate", one, "--to", "nosuch")
	if code == 0 || !strings.Contains(errOut, "no node nosuch") {
		t.Errorf("doppel relocate %s --to nosuch: exit %d, stderr %q", one, code, errOut)
	}
	c.mustCLI(n1.Sock, "drain", "n3")
	refused("an app", one, "n3", "drained")
	c.mustCLI(n1.Sock, "undrain", "n3")

	// Two relocations of one app at once: one moves it, the other is
	// refused (while the first runs, or because the app then already runs
	// on the target).
	type result struct {
		res api.RelocateResult
		err error
	}
	results := make(chan result, 2)
	for _, d := range []*daemon{n1, n2} {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			res, err := d.Client.Relocate(ctx, one, clone)
			results <- result{res, err}
		}()
	}
	var ok, conflicts int
	for range 2 {
		r := <-results
		switch {
		case r.err == nil:
			ok++
			t.Logf("relocate %s to %s: pause %.1f ms", one, clone, r.res.PauseMs)
		case errors.Is(r.err, api.ErrConflict):
			conflicts++
			t.Logf("concurrent relocation refused: %v", r.err)
		default:
			t.Errorf("concurrent relocation: %v", r.err)
		}
	}
	if ok != 1 || conflicts != 1 {
		t.Errorf("two relocations at once: %d succeeded, %d refused; want one of each", ok, conflicts)
	}
	waitFor(t, 20*time.Second, one+" runs on "+clone, func() (bool, string) {
		info, err := opInfo(t, n3, one)
		return err == nil && info.OP == clone && info.State == api.AppRunning, fmt.Sprintf("%+v %v", info, err)
	})
}

func TestE2ERelocateToNonClone(t *testing.T) {
	c := newCluster(t)
	n1, _, _ := c.start(), c.start(), c.start()
	a := runKV(t, c, n1, "nonclone", 0, 1)
	clones := cloneNodes(t, n1, a.Name)
	other := "n2"
	if slices.Contains(clones, other) {
		other = "n3"
	}
	load := startKVLoad(a, "k")
	load.waitMore(t, 50, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := n1.Client.Relocate(ctx, a.Name, other)
	if err != nil {
		t.Fatalf("relocate %s (clones %v) to %s, not a clone: %v", a.Name, clones, other, err)
	}
	t.Logf("relocation to %s, not a clone before: pause %.1f ms, %d bytes in the last epoch", other, res.PauseMs, res.BytesSent)
	var to *daemon
	for _, d := range c.nodes {
		if d.Name == other {
			to = d
		}
	}
	load.waitMore(t, 50, 30*time.Second)
	load.finish(t, to)
	a.checkRunsOnlyOn(t, to)
	// The source joined the clones at the switch; the leader trims them
	// back to the one wanted, keeping the source (it holds the newest
	// epoch).
	waitFor(t, 15*time.Second, "one clone, on n1", func() (bool, string) {
		got := cloneNodes(t, to, a.Name)
		return slices.Equal(got, []string{"n1"}), fmt.Sprintf("clones %v", got)
	})
}

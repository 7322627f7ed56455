package chaos

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"doppel/node/api"
)

// kvOptions describes a kvapp run under doppel.
type kvOptions struct {
	Replicas int
	Interval time.Duration
	Journal  string // sync, async or off
	Ballast  int    // MiB of extra resident memory
	Policy   string
}

// kvService is a kvapp run by the cluster behind its ingress proxy.
type kvService struct {
	c      *cluster
	Name   string
	Target string // the app's own address (the same on every node)
	Port   int    // the service's port on every node's address
	Data   string // its data directory
	opts   kvOptions
}

// runKV submits a kvapp to node on and waits until it runs there.
func (c *cluster) runKV(on *daemon, opts kvOptions) *kvService {
	c.t.Helper()
	name := "kv-" + randomHex(3)
	// Each app of the cluster has its own ports; with network namespaces
	// every node has its own loopback.
	n := len(c.apps)
	target := c.prefix + "200:" + strconv.Itoa(8000+n)
	if c.netns != "" {
		target = "127.0.0.1:" + strconv.Itoa(8000+n)
	}
	s := &kvService{c: c, Name: name, Target: target, Port: 7000 + n, Data: filepath.Join(c.data, name), opts: opts}
	args := []string{build.kvapp, "-listen", s.Target, "-data", s.Data}
	if opts.Ballast > 0 {
		args = append(args, "-ballast", strconv.Itoa(opts.Ballast))
	}
	c.apps = append(c.apps, name)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := on.Client.Run(ctx, api.RunRequest{
		Name: name, Args: args, Dir: c.dir, DataPaths: []string{s.Data},
		Replicas: opts.Replicas, Interval: api.Duration(opts.Interval), Policy: opts.Policy,
		Service: &api.Service{Listen: ":" + strconv.Itoa(s.Port), Target: s.Target, Framing: "line", Journal: opts.Journal},
	})
	if err != nil {
		c.t.Fatalf("run %s on %s: %v", name, on.Name, err)
	}
	waitFor(c.t, 60*time.Second, name+" serves on "+on.Name, func() (bool, string) {
		v, err := kvInt(s.addrOf(on), "GET probe")
		return err == nil && v == 0, fmt.Sprintf("%v %v", v, err)
	})
	return s
}

// addrOf is the service address on node d.
func (s *kvService) addrOf(d *daemon) string {
	return net.JoinHostPort(d.IP, strconv.Itoa(s.Port))
}

// addrs are the service addresses of every worker node.
func (s *kvService) addrs() []string {
	var out []string
	for _, d := range s.c.nodes {
		if d.Role == "" || d.Role == "worker" {
			out = append(out, s.addrOf(d))
		}
	}
	return out
}

// nodeOfAddr names the node of a service address.
func (s *kvService) nodeOfAddr(addr string) string {
	host, _, _ := net.SplitHostPort(addr)
	for _, d := range s.c.nodes {
		if d.IP == host {
			return d.Name
		}
	}
	return addr
}

// info describes the app as the first live node that answers sees it,
// with the OP's daemon (nil when the OP is down).
func (s *kvService) info() (api.AppInfo, *daemon, error) {
	var last error = errNoOP
	for _, d := range s.c.nodes {
		if p := d.current(); p == nil || p.done || !d.alive() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		a, err := d.Client.App(ctx, s.Name)
		cancel()
		if err != nil {
			last = fmt.Errorf("%s: %w", d.Name, err)
			continue
		}
		return a.AppInfo, s.c.byName(a.OP), nil
	}
	return api.AppInfo{}, nil, last
}

// opInfo describes the app as its OP sees it.
func (s *kvService) opInfo() (api.AppInfo, *daemon, error) {
	info, op, err := s.info()
	if err != nil {
		return info, nil, err
	}
	if op == nil {
		return info, nil, fmt.Errorf("%w: app says OP %q", errNoOP, info.OP)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a, err := op.Client.App(ctx, s.Name)
	if err != nil {
		return info, nil, fmt.Errorf("%s: %w", op.Name, err)
	}
	return a.AppInfo, op, nil
}

// inSync reports whether the OP sees Replicas clones in-sync, each with
// an acknowledged epoch of at least minEpoch, on the nodes named (if any).
func (s *kvService) inSync(minEpoch uint64, nodes ...string) (bool, uint64, string) {
	info, op, err := s.opInfo()
	if err != nil {
		return false, 0, err.Error()
	}
	desc := fmt.Sprintf("OP %s (%s), newest epoch %d, clones %s", op.Name, info.State, info.NewestEpoch, describeClones(info.Clones))
	if info.State != api.AppRunning || len(info.Clones) != s.opts.Replicas {
		return false, 0, desc
	}
	low := uint64(0)
	have := map[string]bool{}
	for i, c := range info.Clones {
		have[c.Node] = true
		if c.State != api.CloneInSync || c.AckedEpoch < minEpoch {
			return false, 0, desc
		}
		if i == 0 || c.AckedEpoch < low {
			low = c.AckedEpoch
		}
	}
	for _, n := range nodes {
		if !have[n] {
			return false, 0, desc
		}
	}
	return true, low, desc
}

// waitInSync waits until every clone (including nodes) is in-sync, then
// until both acknowledged one more epoch, so that the cluster state holds
// an acknowledgement of each in the current term (a promotion needs one).
func (s *kvService) waitInSync(timeout time.Duration, nodes ...string) {
	s.c.t.Helper()
	var low uint64
	start := time.Now()
	waitFor(s.c.t, timeout, s.Name+": clones in-sync", func() (bool, string) {
		ok, l, desc := s.inSync(1, nodes...)
		low = l
		return ok, desc
	})
	waitFor(s.c.t, timeout-time.Since(start)+5*time.Second, s.Name+": clones acknowledge one more epoch", func() (bool, string) {
		ok, _, desc := s.inSync(low+1, nodes...)
		return ok, desc
	})
}

func describeClones(cs []api.CloneInfo) string {
	var parts []string
	for _, c := range cs {
		p := fmt.Sprintf("%s:%s@%d", c.Node, c.State, c.AckedEpoch)
		if c.LastError != "" {
			p += " (" + c.LastError + ")"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, " ")
}

// copies returns the kvapp processes of this app running on the host
// (every node's copy: the nodes share the host).
func (s *kvService) copies() []int {
	var out []int
	for _, pid := range matching(s.Data) {
		if strings.HasPrefix(cmdline(pid), build.kvapp) {
			out = append(out, pid)
		}
	}
	sort.Ints(out)
	return out
}

// killOP kills node op as a machine failure (killTree), then removes the
// kernel state its app leaves on the host: TCP sockets on the app's
// address that no process owns any more. On separate machines they die
// with the machine; on this shared host they linger — a socket with
// unsent data stays in FIN-WAIT-1 for minutes when a CRIU dump killed
// mid-way left its nftables network lock behind (the peer's RST is
// dropped) — and the restore of the same connection on another node then
// fails with EADDRNOTAVAIL ("Can't connect inet socket back") until it
// times out.
func (s *kvService) killOP(t testing.TB, op *daemon) time.Time {
	t.Helper()
	at := op.killTree()
	if s.c.netns != "" {
		// The killed node's sockets stay in its own namespace.
		return at
	}
	if gone, err := s.dropOrphans(); err != nil {
		t.Logf("orphaned sockets of %s: %v", s.Target, err)
	} else if len(gone) > 0 {
		t.Logf("removed %d orphaned socket(s) of the killed copy on %s, e.g. %s", len(gone), s.Target, gone[0])
	}
	return at
}

// dropOrphans destroys (ss -K) the TCP sockets bound to the app's address
// that belong to no process, and describes them.
func (s *kvService) dropOrphans() ([]string, error) {
	out, err := exec.Command("ss", "-tanpoH", "src", s.Target).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("ss: %v: %s", err, out)
	}
	var gone []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[0] == "LISTEN" || f[0] == "TIME-WAIT" || strings.Contains(line, "users:(") {
			continue
		}
		if b, err := exec.Command("ss", "-K", "-tn", "src", f[3], "dst", f[4]).CombinedOutput(); err != nil {
			return gone, fmt.Errorf("ss -K %s %s: %v: %s", f[3], f[4], err, b)
		}
		gone = append(gone, strings.Join(f, " "))
	}
	return gone, nil
}

// diagnose logs what explains a failover that does not happen: the
// app's events since t on every node, and the host's TCP sockets on the
// app's address.
func (s *kvService) diagnose(t testing.TB, since time.Time) {
	t.Helper()
	var b strings.Builder
	for _, ev := range s.c.rec.all() {
		if ev.Time.Before(since) || (ev.App != s.Name && ev.Kind != api.KindMember) || ev.Kind == api.KindPhase {
			continue
		}
		fmt.Fprintf(&b, "  %s %s[%d] %s: %s\n", ev.Time.Format("15:04:05.000"), ev.Node, ev.Run, ev.Kind, ev.Message)
	}
	t.Logf("events of %s since %s:\n%s", s.Name, since.Format("15:04:05.000"), b.String())
	host, port, _ := net.SplitHostPort(s.Target)
	if s.c.netns == "" {
		out, err := exec.Command("ss", "-tanpoe", "dst", host, "or", "src", host).CombinedOutput()
		t.Logf("TCP sockets of %s (ss, err %v):\n%s", host, err, out)
		return
	}
	for i := range s.c.nodes {
		out, err := exec.Command("ip", "netns", "exec", s.c.ns(i), "ss", "-tanpoe", "sport", ":"+port, "or", "dport", ":"+port).CombinedOutput()
		t.Logf("TCP sockets of %s in %s (ss, err %v):\n%s", s.Target, s.c.ns(i), err, out)
	}
}

// staleAnswers finds answers from a deposed OP: an answer from a node,
// to a request sent after another node opened the app's service at a
// higher term than the term under which the answering node serves.
func staleAnswers(s *kvService, acks []ack, evs []nodeEvent, faults []fault) []string {
	iv := servingIntervals(s.Name, evs, faults, time.Now().Add(time.Hour))
	var bad []string
	for _, a := range acks {
		node := s.nodeOfAddr(a.Addr)
		var mine *serving
		for i := range iv {
			if iv[i].Node == node && !iv[i].Open.After(a.Got) {
				mine = &iv[i]
			}
		}
		if mine == nil {
			bad = append(bad, fmt.Sprintf("request %s answered by %s at %s, which had not opened the service",
				a.ID, node, a.Got.Format("15:04:05.000")))
			continue
		}
		for _, o := range iv {
			if o.Node != node && o.Term > mine.Term && o.Open.Before(a.Sent) {
				bad = append(bad, fmt.Sprintf("request %s sent at %s answered by %s (serving at term %d since %s) though %s serves at term %d since %s",
					a.ID, a.Sent.Format("15:04:05.000"), node, mine.Term, mine.Open.Format("15:04:05.000"), o.Node, o.Term, o.Open.Format("15:04:05.000")))
				break
			}
		}
	}
	return bad
}

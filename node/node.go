// Package node is the doppel daemon: one per machine. It joins the cluster
// (membership over gossip, authoritative state over raft), runs the apps
// placed on it and checkpoints them every interval, streams each epoch to
// the app's clones over authenticated peer connections, holds the epochs of
// apps it is a clone of, and serves the local API that the CLI and the TUI
// use.
//
// Sub-packages: config (configuration), doctor (host checks), peer (cluster
// key, TLS, peer transport, membership), state (raft cluster state), api
// (local API server and client).
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"doppel/failover"
	"doppel/failover/journal"
	"doppel/node/api"
	"doppel/node/peer"
	"doppel/node/peer/membership"
	"doppel/node/state"
	"doppel/replicate"
	"doppel/replicate/criu"
)

// Role of a node.
const (
	RoleWorker  = "worker"  // hosts apps and clones, votes
	RoleWitness = "witness" // votes only
)

// Config configures a node daemon.
type Config struct {
	// Name of the node in the cluster; unique.
	Name string
	// Role is RoleWorker or RoleWitness.
	Role string
	// Priority ranks this node among clones holding the same epoch when
	// one is promoted: higher first.
	Priority int
	// BindIP is the address gossip, raft and the peer transport listen on.
	BindIP string
	// Ports on BindIP.
	GossipPort, RaftPort, PeerPort int
	// Join lists gossip addresses (ip or ip:port) of nodes already in the
	// cluster. Empty: this node starts a new cluster.
	Join []string
	// StateDir holds the epoch store, apps and raft state.
	StateDir string
	// Socket is the local API's unix socket.
	Socket string
	// Key is the cluster key.
	Key peer.Key
	// Preset sets failure-detection and raft timing: "lan" or "fast".
	Preset string
	// MetricsListen is the address of the Prometheus endpoint; empty: off.
	MetricsListen string
	// RateLimit caps the bytes per second this node sends to clones;
	// 0 means no cap.
	RateLimit int64
	// Interval is the default checkpoint interval of apps submitted here.
	Interval time.Duration
	// Balance moves apps off nodes that stay loaded (leader only).
	Balance BalanceConfig
	// FenceLease is how long an OP may go without contact with a majority
	// of the cluster before it freezes its apps and closes their services.
	FenceLease time.Duration
	// Engine configures checkpoints and restores; its StateDir is set
	// from StateDir.
	Engine replicate.Config
	// Version is this binary's version, gossiped to the others.
	Version string
	// Logger receives the daemon's structured log.
	Logger *slog.Logger
}

// DefaultConfig is a worker on all interfaces with the standard ports.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		Name:       host,
		Role:       RoleWorker,
		BindIP:     "0.0.0.0",
		GossipPort: 7946,
		RaftPort:   7947,
		PeerPort:   7948,
		StateDir:   "/var/lib/doppel",
		Socket:     api.DefaultSocket,
		Preset:     "lan",
		Interval:   5 * time.Second,
		FenceLease: 3 * time.Second,
		Balance:    BalanceConfig{Config: failover.DefaultBalanceConfig()},
		Engine:     replicate.DefaultConfig(),
		Version:    "dev",
	}
}

// BalanceConfig turns the load balancer on and tunes it.
type BalanceConfig struct {
	Enabled bool
	Config  failover.BalanceConfig
}

// Node is a running daemon.
type Node struct {
	cfg     Config
	log     *slog.Logger
	engine  *replicate.Engine
	peers   *peer.Transport
	cluster *state.Cluster
	members *membership.Membership
	api     *api.Server
	metrics *metrics
	events  *eventBus
	health  *healthBook
	started time.Time
	criu    string

	ctx    context.Context // ends at shutdown
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	runners map[string]*runner // apps this node is the OP of

	inits pendingInits

	balancer *failover.Balancer
	// loadOverride replaces gossiped loads in tests.
	loadOverride func(node string) (float64, bool)

	// affirm records, on the leader, its answers to OPs renewing their
	// leases.
	affirm affirmations

	leavingMu sync.Mutex
	leaving   map[string]time.Time // members that announced a clean shutdown

	gcMu    sync.Mutex
	gcTimer *time.Timer // a store GC after received epochs, pending
	gcFirst time.Time   // when that GC was first asked for

	jmu      sync.Mutex
	journals map[string]*journal.Journal // apps this node clones: the OP's journal
}

// advertise is the IP others reach this node on.
func (c Config) advertise() string {
	if c.BindIP == "0.0.0.0" || c.BindIP == "" {
		if ip := outboundIP(); ip != "" {
			return ip
		}
	}
	return c.BindIP
}

func outboundIP() string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return ""
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
	}
	return ""
}

func hostPort(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }

// Validate checks the configuration, naming the bad value.
func (c Config) Validate() error {
	if err := peer.ValidName(c.Name); err != nil {
		return fmt.Errorf("node name: %w", err)
	}
	if c.Role != RoleWorker && c.Role != RoleWitness {
		return fmt.Errorf("role %q: use %s or %s", c.Role, RoleWorker, RoleWitness)
	}
	if net.ParseIP(c.BindIP) == nil {
		return fmt.Errorf("bind %q is not an IP address", c.BindIP)
	}
	if c.Key.IsZero() {
		return errors.New("no cluster key (create one with doppel init)")
	}
	if c.FenceLease <= 0 {
		return fmt.Errorf("fence lease %s must be positive", c.FenceLease)
	}
	if c.Interval < 100*time.Millisecond {
		return fmt.Errorf("interval %s is too short (at least 100ms)", c.Interval)
	}
	return nil
}

// New starts a node: its engine, peer transport, raft, membership and
// local API. Serve then drives it until its context ends.
func New(cfg Config) (_ *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	// peer, state and membership name the node in their own log lines.
	base := log
	log = log.With("node", cfg.Name)
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	if err := criu.SetChildSubreaper(); err != nil {
		return nil, fmt.Errorf("become a child subreaper: %w", err)
	}
	n := &Node{
		cfg:     cfg,
		log:     log,
		events:  newEventBus(500),
		health:  newHealthBook(),
		started: time.Now(),
		runners: map[string]*runner{},
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	var closers []func()
	defer func() {
		if err != nil {
			n.cancel()
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		}
	}()

	// The API socket first: it refuses a second daemon on the same socket
	// before anything else is touched.
	ln, err := api.Listen(cfg.Socket)
	if err != nil {
		return nil, err
	}
	closers = append(closers, func() { ln.Close() })

	ecfg := cfg.Engine
	ecfg.StateDir = cfg.StateDir
	if n.engine, err = replicate.New(ecfg, log); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("state directory %s is in use by another doppel node (%w)", cfg.StateDir, err)
		}
		return nil, err
	}
	closers = append(closers, func() { n.engine.Close() })
	if p, err := criu.Locate(ecfg.CRIU.Path, ecfg.CRIU.Prefix); err == nil {
		if v, err := criu.BinaryVersion(n.ctx, p); err == nil {
			n.criu = v.String()
		}
	}
	n.metrics = newMetrics()
	if cfg.Balance.Enabled {
		n.balancer = failover.NewBalancer(cfg.Balance.Config)
	}

	adv := cfg.advertise()
	pcfg := peer.DefaultConfig()
	pcfg.BindAddr = hostPort(cfg.BindIP, cfg.PeerPort)
	pcfg.Key = cfg.Key
	pcfg.NodeName = cfg.Name
	pcfg.RateLimit = cfg.RateLimit
	pcfg.Logger = base
	if n.peers, err = peer.Listen(pcfg); err != nil {
		return nil, err
	}
	closers = append(closers, func() { n.peers.Close() })
	n.registerPeerHandlers()
	n.peers.HandleProbes()

	raftDir := filepath.Join(cfg.StateDir, "raft")
	_, statErr := os.Stat(raftDir)
	scfg := state.DefaultConfig()
	scfg.Dir = raftDir
	scfg.NodeName = cfg.Name
	scfg.Bind = hostPort(cfg.BindIP, cfg.RaftPort)
	scfg.Advertise = hostPort(adv, cfg.RaftPort)
	scfg.TLS = cfg.Key.TLS()
	scfg.Bootstrap = len(cfg.Join) == 0 && errors.Is(statErr, os.ErrNotExist)
	scfg.Preset = cfg.Preset
	scfg.Logger = base
	if n.cluster, err = state.Open(scfg); err != nil {
		return nil, err
	}
	closers = append(closers, func() { n.cluster.Shutdown() })

	mcfg := membership.DefaultConfig()
	mcfg.Name = cfg.Name
	mcfg.BindAddr = cfg.BindIP
	mcfg.BindPort = cfg.GossipPort
	mcfg.AdvertiseAddr = adv
	mcfg.Key = cfg.Key
	mcfg.Preset = cfg.Preset
	for _, j := range cfg.Join {
		if _, _, err := net.SplitHostPort(j); err != nil {
			j = hostPort(j, cfg.GossipPort)
		}
		mcfg.Join = append(mcfg.Join, j)
	}
	mcfg.Meta = n.meta
	mcfg.Logger = base
	if n.members, err = membership.JoinCluster(mcfg); err != nil {
		return nil, err
	}
	closers = append(closers, func() { n.members.Shutdown() })

	acfg := api.DefaultConfig()
	acfg.Logger = log
	n.api = api.NewServer(n, acfg)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.api.ServeListener(ln); err != nil {
			log.Error("local API stopped", "err", err)
		}
	}()
	if cfg.MetricsListen != "" {
		srv := &http.Server{Addr: cfg.MetricsListen, Handler: n.metrics.handler(), ReadHeaderTimeout: 5 * time.Second}
		mln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return nil, fmt.Errorf("metrics listen %s: %w", cfg.MetricsListen, err)
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			_ = srv.Serve(mln)
		}()
		go func() {
			<-n.ctx.Done()
			_ = srv.Close()
		}()
	}
	log.Info("node started", "role", cfg.Role, "gossip", hostPort(adv, cfg.GossipPort),
		"raft", scfg.Advertise, "peer", n.peers.Addr(), "socket", cfg.Socket, "bootstrap", scfg.Bootstrap)
	return n, nil
}

// meta is what this node gossips about itself.
func (n *Node) meta() membership.Meta {
	load, memFree, memTotal := hostLoad()
	adv := n.cfg.advertise()
	drained := false
	if n.cluster != nil {
		drained = n.cluster.State().Drained[n.cfg.Name]
	}
	return membership.Meta{
		Proto:    state.ProtocolVersion,
		Role:     n.cfg.Role,
		Version:  n.cfg.Version,
		CRIU:     n.criu,
		Load:     load,
		CPUs:     runtime.NumCPU(),
		MemFree:  memFree,
		MemTotal: memTotal,
		Peer:     hostPort(adv, n.cfg.PeerPort),
		Raft:     hostPort(adv, n.cfg.RaftPort),
		Drained:  drained,
		Priority: n.cfg.Priority,
	}
}

// Serve drives the node until ctx ends, then shuts it down cleanly: apps
// keep running, the node leaves the gossip, raft and the API stop.
func (n *Node) Serve(ctx context.Context) error {
	n.wg.Add(4)
	go func() { defer n.wg.Done(); n.gossipMeta() }()
	go func() { defer n.wg.Done(); n.watchMembers() }()
	go func() { defer n.wg.Done(); n.watchState() }()
	go func() { defer n.wg.Done(); n.leaderLoop() }()
	n.wg.Add(1)
	go func() { defer n.wg.Done(); n.leadershipLoop() }()
	select {
	case <-ctx.Done():
	case <-n.ctx.Done():
	}
	return n.shutdown()
}

func (n *Node) shutdown() error {
	n.log.Info("node stopping")
	n.mu.Lock()
	rs := make([]*runner, 0, len(n.runners))
	for _, r := range n.runners {
		rs = append(rs, r)
	}
	n.mu.Unlock()
	for _, r := range rs {
		r.stop(false)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = n.api.Shutdown(sctx)
	n.announceLeaving(sctx)
	n.leaveRaft(sctx)
	if err := n.members.Leave(2 * time.Second); err != nil {
		n.log.Warn("leave the gossip", "err", err)
	}
	n.cancel()
	_ = n.members.Shutdown()
	_ = n.cluster.Shutdown()
	_ = n.peers.Close()
	n.wg.Wait()
	err := n.engine.Close()
	n.log.Info("node stopped")
	return err
}

// announceLeaving tells every alive member that this node shuts down
// cleanly, so that they report it left rather than dead (memberlist's own
// farewell can be overtaken by its leave message).
func (n *Node) announceLeaving(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, m := range n.members.Members() {
		if m.Name == n.cfg.Name || m.State != membership.StateAlive || m.Meta.Peer == "" {
			continue
		}
		wg.Add(1)
		go func(addr string) {
			defer wg.Done()
			_ = n.peers.Call(ctx, addr, rpcLeaving, struct{}{}, nil)
		}(m.Meta.Peer)
	}
	wg.Wait()
}

// memberState is a member's state as this node reports it: a member that
// announced a clean shutdown and is then declared dead has left.
func (n *Node) memberState(m membership.Member) membership.State {
	if m.State != membership.StateDead {
		return m.State
	}
	n.leavingMu.Lock()
	at, ok := n.leaving[m.Name]
	n.leavingMu.Unlock()
	if ok && time.Since(at) < time.Minute && !m.Since.Before(at) {
		return membership.StateLeft
	}
	return m.State
}

// leaveRaft takes this node out of the raft configuration on a clean
// shutdown, so that the cluster's quorum no longer counts it (it is added
// back when it rejoins).
func (n *Node) leaveRaft(ctx context.Context) {
	servers, err := n.cluster.Servers()
	if err != nil || len(servers) < 2 {
		return
	}
	if n.cluster.IsLeader() {
		if err := n.cluster.RemoveServer(ctx, n.cfg.Name); err != nil {
			n.log.Warn("leave raft", "err", err)
		}
		return
	}
	addr, err := n.leaderPeer()
	if err != nil {
		return
	}
	if err := n.peers.Call(ctx, addr, rpcLeave, struct{}{}, nil); err != nil {
		n.log.Warn("leave raft", "err", err)
	}
}

// gossipMeta refreshes this node's gossiped load, memory and drain state.
func (n *Node) gossipMeta() {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
			if err := n.members.UpdateMeta(); err != nil && n.ctx.Err() == nil {
				n.log.Debug("gossip meta", "err", err)
			}
			// After a partition longer than memberlist keeps gossiping to
			// the dead, each side holds the other dead for good: try them
			// again, as serf's reconnect does.
			var dead []string
			for _, m := range n.members.Members() {
				if m.State == membership.StateDead && m.Addr != "" {
					dead = append(dead, m.Addr)
				}
			}
			if len(dead) > 0 {
				if _, err := n.members.Join(dead...); err == nil {
					n.log.Info("rejoined members held dead", "members", len(dead))
				}
			}
		}
	}
}

// publish sends an event to API subscribers and the log.
func (n *Node) publish(ev api.Event) {
	if ev.Node == "" {
		ev.Node = n.cfg.Name
	}
	n.events.publish(ev)
}

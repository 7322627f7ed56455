package state

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

// Presets for Config.Preset.
const (
	// PresetLAN is raft's defaults: heartbeat and election timeouts 1 s,
	// leader lease 500 ms, commit timeout 50 ms. Failover of the raft leader
	// takes one to a few seconds.
	PresetLAN = "lan"
	// PresetFast is for tests on loopback: heartbeat, election and lease
	// timeouts 300 ms, commit timeout 10 ms. A leader is elected in about
	// half a second. Too tight for real networks.
	PresetFast = "fast"
)

// Config configures one node's member of the raft group.
type Config struct {
	// Dir holds raft.db (the raft log and stable store, bbolt) and
	// snapshots/. Created 0700 if missing. One Cluster per Dir at a time.
	Dir string
	// NodeName is this node's raft server ID (a valid node name).
	NodeName string
	// Bind is the raft listen address ip:port; port 0 picks a free port.
	Bind string
	// Advertise is the address other nodes dial; "" means the bound
	// address, which must then not be unspecified (0.0.0.0).
	Advertise string
	// TLS, when set, carries raft over TLS with this configuration on both
	// sides (server and client), so it must hold this node's certificate
	// and verify the peer's, with mutual authentication (ClientAuth
	// RequireAnyClientCert or stricter). Without a ServerName and without
	// InsecureSkipVerify, dials use the peer's host as ServerName. nil means
	// plain TCP: for tests only.
	TLS *tls.Config
	// Bootstrap makes this node a single-voter cluster if Dir holds no raft
	// state yet; it is ignored when state exists (a restart).
	Bootstrap bool
	// Preset is PresetLAN or PresetFast.
	Preset string
	// Logger receives this package's logs and raft's (with key node set).
	// nil discards them.
	Logger *slog.Logger
	// RaftLogLevel drops raft's own log records below this level: at
	// DefaultConfig's Warn, raft's state changes (Info) are not logged, its
	// failures are. The zero value is Info.
	RaftLogLevel slog.Level
	// SnapshotThreshold is how many log entries since the last snapshot
	// trigger a new one (raft checks every 2 minutes with lan, 5 s with
	// fast); 0 means raft's default, 8192.
	SnapshotThreshold uint64
	// SnapshotRetain is how many snapshots are kept in Dir/snapshots.
	SnapshotRetain int
}

// DefaultConfig is a node's configuration with the daemon's defaults; Dir,
// NodeName and, when binding 0.0.0.0, Advertise and TLS must be filled in.
func DefaultConfig() Config {
	return Config{
		Dir:            "/var/lib/doppel/raft",
		Bind:           "0.0.0.0:7947",
		Preset:         PresetLAN,
		RaftLogLevel:   slog.LevelWarn,
		SnapshotRetain: 2,
	}
}

// timing is what a preset sets.
type timing struct {
	heartbeat, election, lease, commit time.Duration
	snapshotInterval                   time.Duration
	ioTimeout                          time.Duration // dials, handshakes, RPC deadlines
}

func presetTiming(name string) (timing, error) {
	switch name {
	case PresetLAN:
		d := raft.DefaultConfig()
		return timing{
			heartbeat: d.HeartbeatTimeout, election: d.ElectionTimeout,
			lease: d.LeaderLeaseTimeout, commit: d.CommitTimeout,
			snapshotInterval: d.SnapshotInterval, ioTimeout: 10 * time.Second,
		}, nil
	case PresetFast:
		return timing{
			heartbeat: 300 * time.Millisecond, election: 300 * time.Millisecond,
			lease: 300 * time.Millisecond, commit: 10 * time.Millisecond,
			snapshotInterval: 5 * time.Second, ioTimeout: 2 * time.Second,
		}, nil
	}
	return timing{}, fmt.Errorf("raft preset %q: use %q or %q", name, PresetLAN, PresetFast)
}

// Server is one member of the raft configuration.
type Server struct {
	Name  string `json:"name"`
	Addr  string `json:"addr"`
	Voter bool   `json:"voter"`
}

// NotLeaderError is returned by operations that need the raft leader when
// this node is not (or stopped being) the leader. Leader and Addr name the
// leader this node knows of, empty when none is known (an election is under
// way). It matches ErrNotLeader with errors.Is; Err, when set, is the raft
// error behind it (raft.ErrLeadershipLost means a command may or may not
// have been committed: re-read the state before retrying).
type NotLeaderError struct {
	Leader string
	Addr   string
	Err    error
}

func (e *NotLeaderError) Error() string {
	msg := "not the raft leader; no leader known (election under way?)"
	if e.Leader != "" {
		msg = fmt.Sprintf("not the raft leader; the leader is %s at %s", e.Leader, e.Addr)
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Is makes errors.Is(err, ErrNotLeader) true.
func (e *NotLeaderError) Is(target error) bool { return target == ErrNotLeader }

func (e *NotLeaderError) Unwrap() error { return e.Err }

// Cluster is this node's member of the raft group and its copy of the
// cluster state. All methods are safe for concurrent use.
type Cluster struct {
	cfg    Config
	timing timing
	log    *slog.Logger
	fsm    *fsm
	raft   *raft.Raft
	trans  *raft.NetworkTransport
	store  *raftboltdb.BoltStore
	addr   string // advertised

	shutdownOnce sync.Once
	shutdownErr  error
}

// Open starts this node's raft member: raft-boltdb for the log and stable
// store in Dir/raft.db, file snapshots in Dir/snapshots, and the network
// transport on Bind (over TLS when Config.TLS is set). With Bootstrap and no
// existing state it bootstraps a cluster of this node alone, which elects
// itself leader. A node restarted from its Dir recovers the state from its
// snapshot and log: right after Open, State holds the newest snapshot; the
// log entries after it are applied once the node learns they are committed
// (from the leader's first heartbeat, or after its own election: Barrier
// waits for it). On error everything opened is closed again.
func Open(cfg Config) (*Cluster, error) {
	if !ValidNodeName(cfg.NodeName) {
		return nil, fmt.Errorf("raft: node name %q: use letters, digits, '.', '_' or '-' (at most 63)", cfg.NodeName)
	}
	if cfg.Dir == "" {
		return nil, errors.New("raft: no state directory (Config.Dir)")
	}
	if cfg.Bind == "" {
		return nil, errors.New("raft: no bind address (Config.Bind)")
	}
	tm, err := presetTiming(cfg.Preset)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("node", cfg.NodeName)
	hlog := newHclogAdapter(log, cfg.RaftLogLevel)

	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("raft: %w", err)
	}
	var closers []func() error
	fail := func(err error) (*Cluster, error) {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
		return nil, err
	}

	dbPath := filepath.Join(cfg.Dir, "raft.db")
	store, err := raftboltdb.New(raftboltdb.Options{Path: dbPath, BoltOptions: &bbolt.Options{Timeout: time.Second}})
	if errors.Is(err, bbolt.ErrTimeout) {
		return fail(fmt.Errorf("raft: %s is locked by another process (another doppel node on %s?): %w", dbPath, cfg.Dir, err))
	}
	if err != nil {
		return fail(fmt.Errorf("raft: open %s: %w", dbPath, err))
	}
	closers = append(closers, store.Close)
	logs, err := raft.NewLogCache(512, store)
	if err != nil {
		return fail(fmt.Errorf("raft: %w", err))
	}
	retain := cfg.SnapshotRetain
	if retain < 1 {
		retain = 2
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, retain, hlog.Named("snapshot"))
	if err != nil {
		return fail(fmt.Errorf("raft: snapshot store in %s: %w", cfg.Dir, err))
	}

	ln, err := net.Listen("tcp", cfg.Bind)
	if err != nil {
		return fail(fmt.Errorf("raft: listen on %s: %w", cfg.Bind, err))
	}
	closers = append(closers, ln.Close)
	var advertise net.Addr = ln.Addr()
	if cfg.Advertise != "" {
		a, err := net.ResolveTCPAddr("tcp", cfg.Advertise)
		if err != nil {
			return fail(fmt.Errorf("raft: advertise address %q: %w", cfg.Advertise, err))
		}
		advertise = a
	}
	if a, ok := advertise.(*net.TCPAddr); !ok || a.IP == nil || a.IP.IsUnspecified() || a.Port == 0 {
		return fail(fmt.Errorf("raft: %s is not an address other nodes can dial: set Advertise", advertise))
	}
	stream := newStreamLayer(ln, advertise, cfg.TLS, tm.ioTimeout, log)
	closers = append(closers, stream.Close)
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: 3,
		Timeout: tm.ioTimeout,
		Logger:  hlog.Named("net"),
	})
	closers = append(closers, trans.Close)

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeName)
	rc.Logger = hlog
	rc.HeartbeatTimeout = tm.heartbeat
	rc.ElectionTimeout = tm.election
	rc.LeaderLeaseTimeout = tm.lease
	rc.CommitTimeout = tm.commit
	rc.SnapshotInterval = tm.snapshotInterval
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	if err := raft.ValidateConfig(rc); err != nil {
		return fail(fmt.Errorf("raft: %w", err))
	}

	c := &Cluster{cfg: cfg, timing: tm, log: log, fsm: newFSM(log), trans: trans, store: store, addr: advertise.String()}
	if cfg.Bootstrap {
		has, err := raft.HasExistingState(logs, store, snaps)
		if err != nil {
			return fail(fmt.Errorf("raft: read existing state: %w", err))
		}
		if !has {
			conf := raft.Configuration{Servers: []raft.Server{{
				Suffrage: raft.Voter, ID: rc.LocalID, Address: raft.ServerAddress(c.addr),
			}}}
			if err := raft.BootstrapCluster(rc, logs, store, snaps, trans, conf); err != nil {
				return fail(fmt.Errorf("raft: bootstrap: %w", err))
			}
			log.Info("raft: bootstrapped a new cluster", "addr", c.addr)
		}
	}
	r, err := raft.NewRaft(rc, c.fsm, logs, store, snaps, trans)
	if err != nil {
		return fail(fmt.Errorf("raft: start: %w", err))
	}
	c.raft = r
	return c, nil
}

// Name is this node's name, its raft server ID.
func (c *Cluster) Name() string { return c.cfg.NodeName }

// Addr is the raft address other nodes use to reach this node.
func (c *Cluster) Addr() string { return c.addr }

// Lease is the leader lease of the preset: see HasQuorum.
func (c *Cluster) Lease() time.Duration { return c.timing.lease }

// Apply commits cmd through raft and returns the FSM's result: for
// CmdPutApp and CmdPlace the app after the command (*App), for CmdAck the
// Ack now recorded (Ack), else nil. A command the FSM refuses returns its
// error (wrapping ErrExists, ErrStaleTerm, ...) and changed nothing. A
// malformed command is refused before raft with ErrBadCommand.
//
// Only the leader applies: elsewhere Apply returns a *NotLeaderError naming
// the leader. If ctx ends first Apply returns its error, and the command
// may still be committed later. Apply blocks until the command is applied
// on this node (the leader), so State reflects it on return.
func (c *Cluster) Apply(ctx context.Context, cmd Command) (any, error) {
	data, err := encodeCommand(cmd)
	if err != nil {
		return nil, err
	}
	if err := c.leaderCheck(); err != nil {
		return nil, err
	}
	f := c.raft.Apply(data, timeoutOf(ctx))
	if err := c.wait(ctx, f); err != nil {
		return nil, fmt.Errorf("apply %s: %w", cmd.Type, err)
	}
	res, ok := f.Response().(applyResult)
	if !ok {
		return nil, fmt.Errorf("apply %s: unexpected FSM response %T", cmd.Type, f.Response())
	}
	return res.value, res.err
}

// Barrier waits until every command committed before it is applied to this
// node's state. A new leader calls it before deciding from State. Leader
// only.
func (c *Cluster) Barrier(ctx context.Context) error {
	if err := c.leaderCheck(); err != nil {
		return err
	}
	if err := c.wait(ctx, c.raft.Barrier(timeoutOf(ctx))); err != nil {
		return fmt.Errorf("barrier: %w", err)
	}
	return nil
}

// VerifyLeader confirms, by a round of contact with a majority, that this
// node still leads: a deposed leader that has not noticed yet fails it.
func (c *Cluster) VerifyLeader(ctx context.Context) error {
	if err := c.leaderCheck(); err != nil {
		return err
	}
	if err := c.wait(ctx, c.raft.VerifyLeader()); err != nil {
		return fmt.Errorf("verify leadership: %w", err)
	}
	return nil
}

// timeoutOf is raft's enqueue timeout for ctx: the time to its deadline,
// or 0 (none).
func timeoutOf(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return max(time.Until(d), time.Millisecond)
	}
	return 0
}

// wait waits for a raft future or ctx, mapping raft's errors.
func (c *Cluster) wait(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		return fmt.Errorf("%w (the change may still be committed)", ctx.Err())
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return c.notLeader(err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrShutdown
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
	}
	return err
}

// leaderCheck returns nil on the leader, ErrShutdown after Shutdown, else
// a *NotLeaderError.
func (c *Cluster) leaderCheck() error {
	switch c.raft.State() {
	case raft.Leader:
		return nil
	case raft.Shutdown:
		return ErrShutdown
	}
	return c.notLeader(nil)
}

func (c *Cluster) notLeader(cause error) *NotLeaderError {
	name, addr := c.Leader()
	return &NotLeaderError{Leader: name, Addr: addr, Err: cause}
}

// State returns a copy of this node's state. On a follower it may lag the
// leader by the commands in flight; Index says which command it includes.
func (c *Cluster) State() State { return c.fsm.state() }

// Watch returns a channel that holds the newest state: the current one at
// once, then the state after each applied command or restored snapshot.
// The channel keeps at most one value; a slow reader skips intermediate
// states and reads the newest (compare Index). Publishing never blocks
// the FSM. stop ends the watch and closes the channel; Shutdown closes all
// watch channels. stop may be called more than once.
func (c *Cluster) Watch() (states <-chan State, stop func()) { return c.fsm.watch() }

// IsLeader reports whether this node is the raft leader now.
func (c *Cluster) IsLeader() bool { return c.raft.State() == raft.Leader }

// Leader returns the leader this node knows of; empty when none.
func (c *Cluster) Leader() (name, addr string) {
	a, id := c.raft.LeaderWithID()
	return string(id), string(a)
}

// RaftTerm is raft's current term (not an app's term).
func (c *Cluster) RaftTerm() uint64 { return c.raft.CurrentTerm() }

// LeaderCh delivers true when this node becomes leader and false when it
// stops being leader. It is raft's channel: one reader only; when the
// reader lags, intermediate transitions are dropped and the newest kept.
func (c *Cluster) LeaderCh() <-chan bool { return c.raft.LeaderCh() }

// HasQuorum reports whether this node is, as far as it can tell, in contact
// with a majority of the voters:
//
//   - on the leader: true. raft steps a leader down as soon as fewer than a
//     majority of voters (itself included) have answered within the lease
//     (Lease(); it checks each time the oldest contact would expire), so a
//     leader cut off from the majority reports false at most about one
//     lease after its last contact with a majority.
//   - on a follower: a leader is known and was heard from (append entries
//     or heartbeat) within the lease. A follower cut off from the leader
//     reports false one lease after the last heartbeat; a follower of a
//     leader that lost its majority reports false at most about two leases
//     after that leader's last majority contact.
//   - on a candidate or after Shutdown: false.
//
// The leader heartbeats every tenth of the heartbeat timeout, so a
// healthy follower is heard from many times per lease.
func (c *Cluster) HasQuorum() bool {
	switch c.raft.State() {
	case raft.Leader:
		return true
	case raft.Follower:
		if addr, _ := c.raft.LeaderWithID(); addr == "" {
			return false
		}
		last := c.raft.LastContact()
		return !last.IsZero() && time.Since(last) <= c.timing.lease
	}
	return false
}

// AddVoter adds (or re-addresses) a voting member. Leader only. It returns
// once the configuration entry is committed, which raft does under the
// configuration it replaces: adding a voter that cannot be reached (wrong
// address, wrong key) succeeds, and then counts against the quorum (a
// one-voter cluster that adds an unreachable voter loses its quorum). To
// admit a node safely, add it with AddNonvoter, wait until it has caught
// up, then AddVoter.
func (c *Cluster) AddVoter(ctx context.Context, name, addr string) error {
	return c.changeServer(ctx, "add voter", name, addr, func(id raft.ServerID, a raft.ServerAddress, t time.Duration) raft.IndexFuture {
		return c.raft.AddVoter(id, a, 0, t)
	})
}

// AddNonvoter adds a member that receives the log but does not vote.
// Leader only.
func (c *Cluster) AddNonvoter(ctx context.Context, name, addr string) error {
	return c.changeServer(ctx, "add nonvoter", name, addr, func(id raft.ServerID, a raft.ServerAddress, t time.Duration) raft.IndexFuture {
		return c.raft.AddNonvoter(id, a, 0, t)
	})
}

// RemoveServer removes a member. Leader only. Removing the leader itself
// makes it step down once the change is committed.
func (c *Cluster) RemoveServer(ctx context.Context, name string) error {
	if !ValidNodeName(name) {
		return fmt.Errorf("remove server: %w: %q is not a valid node name", ErrBadCommand, name)
	}
	if err := c.leaderCheck(); err != nil {
		return err
	}
	if err := c.wait(ctx, c.raft.RemoveServer(raft.ServerID(name), 0, timeoutOf(ctx))); err != nil {
		return fmt.Errorf("remove server %s: %w", name, err)
	}
	return nil
}

func (c *Cluster) changeServer(ctx context.Context, what, name, addr string,
	do func(raft.ServerID, raft.ServerAddress, time.Duration) raft.IndexFuture) error {
	if !ValidNodeName(name) {
		return fmt.Errorf("%s: %w: %q is not a valid node name", what, ErrBadCommand, name)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%s %s: %w: address %q: %w", what, name, ErrBadCommand, addr, err)
	}
	if err := c.leaderCheck(); err != nil {
		return err
	}
	if err := c.wait(ctx, do(raft.ServerID(name), raft.ServerAddress(addr), timeoutOf(ctx))); err != nil {
		return fmt.Errorf("%s %s at %s: %w", what, name, addr, err)
	}
	return nil
}

// Servers returns the newest raft configuration this node knows of (on a
// follower it may lag the leader's).
func (c *Cluster) Servers() ([]Server, error) {
	f := c.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrRaftShutdown) {
			return nil, ErrShutdown
		}
		return nil, fmt.Errorf("raft configuration: %w", err)
	}
	var out []Server
	for _, s := range f.Configuration().Servers {
		out = append(out, Server{Name: string(s.ID), Addr: string(s.Address), Voter: s.Suffrage == raft.Voter})
	}
	return out, nil
}

// Snapshot makes raft write a snapshot now and compact its log. Having
// nothing new to snapshot is not an error.
func (c *Cluster) Snapshot() error {
	err := c.raft.Snapshot().Error()
	switch {
	case err == nil, errors.Is(err, raft.ErrNothingNewToSnapshot):
		return nil
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrShutdown
	}
	return fmt.Errorf("raft snapshot: %w", err)
}

// Shutdown stops raft, closes the transport (listener and connections) and
// the store, and closes every Watch channel. The state stays readable with
// State. Later calls return the first call's result.
func (c *Cluster) Shutdown() error {
	c.shutdownOnce.Do(func() {
		errs := []error{c.raft.Shutdown().Error()}
		c.trans.CloseStreams()
		errs = append(errs, c.trans.Close(), c.store.Close())
		c.fsm.closeWatchers()
		if err := errors.Join(errs...); err != nil {
			c.shutdownErr = fmt.Errorf("raft shutdown: %w", err)
		}
	})
	return c.shutdownErr
}

package membership

import (
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"doppel/node/peer"
)

// State is a member's state as seen by this node.
type State string

// Member states.
const (
	// StateAlive: the node answers probes.
	StateAlive State = "alive"
	// StateSuspect: a probe of the node by this node failed; memberlist
	// declares it dead unless it refutes the suspicion in time. Only this
	// node's own suspicions show (memberlist does not expose suspicions
	// learnt by gossip); a suspicion ends with a successful probe, an
	// update from the node, its death, or after the longest suspicion
	// timeout.
	StateSuspect State = "suspect"
	// StateDead: the cluster declared the node failed.
	StateDead State = "dead"
	// StateLeft: the node left gracefully (Leave).
	StateLeft State = "left"
)

// Member is a node of the cluster.
type Member struct {
	Name string
	// Addr is the node's gossip address, ip:port.
	Addr  string
	State State
	Meta  Meta
	// Since is when this node saw State begin.
	Since time.Time
}

// EventKind says what happened to a member.
type EventKind string

// Event kinds.
const (
	EventJoin    EventKind = "join"    // a node (this one included) became alive
	EventUpdate  EventKind = "update"  // a node's Meta changed
	EventSuspect EventKind = "suspect" // this node suspects a node
	EventAlive   EventKind = "alive"   // a suspected node proved alive
	EventDead    EventKind = "dead"    // a node failed
	EventLeave   EventKind = "leave"   // a node left gracefully
	EventRefused EventKind = "refused" // a node was refused (Reason says why)
)

// Event is a change of a member; Member is its state after the change.
type Event struct {
	Kind   EventKind
	Member Member
	// Reason explains EventRefused.
	Reason string
}

// Errors of JoinCluster and Join; returned errors wrap them.
var (
	// ErrNoContact: none of the join addresses could be joined.
	ErrNoContact = errors.New("could not join any member")
	// ErrIncompatible: a node speaks another cluster protocol version
	// (Meta.Proto) or sent unreadable Meta.
	ErrIncompatible = errors.New("incompatible node")
	// ErrShutdown: the Membership was shut down.
	ErrShutdown = errors.New("membership shut down")
)

// Membership is this node's view of the cluster. Its methods are safe for
// concurrent use.
type Membership struct {
	cfg  Config
	log  *slog.Logger
	list *memberlist.Memberlist
	ml   *memberlist.Config

	proto   atomic.Int64             // this node's Meta.Proto
	meta    atomic.Pointer[[]byte]   // encoded local meta for memberlist
	refusal atomic.Pointer[error]    // last refusal, for join errors
	dropped atomic.Uint64            // events dropped from a full channel
	events  chan Event               // see emit
	down    atomic.Bool              // Shutdown called
	leaving atomic.Bool              // Leave called
	metaMu  sync.Mutex               // serialises UpdateMeta and Leave
	emitMu  sync.Mutex               // guards sending to and closing events
	mu      sync.Mutex               // guards members and refused
	members map[string]*entry        // by name, this node included
	refused map[string]string        // name -> last reported reason
	timers  map[*time.Timer]struct{} // suspicion expiries, stopped by Shutdown
	lifeMu  sync.Mutex               // serialises Leave and Shutdown
}

// entry is a member plus what memberlist does not keep for us.
type entry struct {
	Member
	bye       bool        // it announced a graceful leave
	suspicion *time.Timer // expiry of this node's suspicion
}

// JoinCluster starts gossip on cfg.BindAddr:cfg.BindPort and, if cfg.Join is
// not empty, joins the cluster through those addresses: it fails with an
// error wrapping ErrNoContact if none of them could be joined (wrapping
// ErrIncompatible too if a refusal was the cause). With an empty cfg.Join it
// starts a new cluster of one. Nodes holding another cluster key cannot
// exchange a single gossip message with this one.
func JoinCluster(cfg Config) (*Membership, error) {
	def := DefaultConfig()
	if cfg.BindAddr == "" {
		cfg.BindAddr = def.BindAddr
	}
	if cfg.Preset == "" {
		cfg.Preset = def.Preset
	}
	if cfg.EventBuffer <= 0 {
		cfg.EventBuffer = def.EventBuffer
	}
	if cfg.Retain <= 0 {
		cfg.Retain = def.Retain
	}
	if cfg.UpdateTimeout <= 0 {
		cfg.UpdateTimeout = def.UpdateTimeout
	}
	if cfg.Meta == nil {
		cfg.Meta = func() Meta { return Meta{} }
	}
	if err := peer.ValidName(cfg.Name); err != nil {
		return nil, fmt.Errorf("membership: %w", err)
	}
	if cfg.Key.IsZero() {
		return nil, errors.New("membership: Config.Key is the zero key (load the cluster key first)")
	}
	if net.ParseIP(cfg.BindAddr) == nil {
		return nil, fmt.Errorf("membership: BindAddr %q is not an IP address", cfg.BindAddr)
	}
	ml, err := memberlistConfig(cfg.Preset)
	if err != nil {
		return nil, err
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.Default()
	}
	m := &Membership{
		cfg:     cfg,
		log:     lg.With("node", cfg.Name),
		ml:      ml,
		events:  make(chan Event, cfg.EventBuffer),
		members: make(map[string]*entry),
		refused: make(map[string]string),
		timers:  make(map[*time.Timer]struct{}),
	}
	local := cfg.Meta()
	enc, err := encodeMeta(local, false)
	if err != nil {
		return nil, err
	}
	m.meta.Store(&enc)
	m.proto.Store(int64(local.Proto))

	d := &delegate{m: m}
	ml.Name = cfg.Name
	ml.BindAddr = cfg.BindAddr
	ml.BindPort = cfg.BindPort
	ml.AdvertiseAddr = cfg.AdvertiseAddr
	ml.AdvertisePort = cfg.AdvertisePort
	if cfg.AdvertisePort == 0 {
		ml.AdvertisePort = cfg.BindPort
	}
	ml.SecretKey = cfg.Key.GossipKey()
	ml.GossipVerifyIncoming = true
	ml.GossipVerifyOutgoing = true
	ml.Label = label
	ml.Delegate = d
	ml.Events = d
	ml.Alive = d
	ml.Merge = d
	ml.Ping = d
	ml.Logger = log.New(&logWriter{log: m.log.With("src", "memberlist"), onSuspect: m.suspect}, "", 0)
	list, err := memberlist.Create(ml)
	if err != nil {
		return nil, fmt.Errorf("membership: start gossip on %s: %w", net.JoinHostPort(cfg.BindAddr, strconv.Itoa(cfg.BindPort)), err)
	}
	m.list = list
	if len(cfg.Join) > 0 {
		if _, err := m.Join(cfg.Join...); err != nil {
			m.Shutdown()
			return nil, err
		}
	}
	return m, nil
}

// Join contacts the members at addrs (host:port) and merges their view of
// the cluster with this node's. It returns how many it reached; the error,
// wrapping ErrNoContact, is set only when none was.
func (m *Membership) Join(addrs ...string) (int, error) {
	if m.down.Load() {
		return 0, ErrShutdown
	}
	m.refusal.Store(nil)
	n, err := m.list.Join(addrs)
	if n > 0 {
		if err != nil {
			m.log.Warn("some join addresses failed", "err", err)
		}
		return n, nil
	}
	if err == nil {
		err = errors.New("no address given")
	}
	if r := m.refusal.Load(); r != nil {
		return 0, fmt.Errorf("%w: %w: %w (memberlist: %v)", ErrNoContact, ErrIncompatible, *r, err)
	}
	return 0, fmt.Errorf("%w at %v: %w", ErrNoContact, addrs, err)
}

// Addr is this node's gossip address (ip:port), what others pass to Join.
func (m *Membership) Addr() string { return m.list.LocalNode().Address() }

// Name is this node's name.
func (m *Membership) Name() string { return m.cfg.Name }

// Members returns every known node, this one included, sorted by name:
// alive and suspect ones, and dead and left ones seen within Config.Retain.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	cutoff := time.Now().Add(-m.cfg.Retain)
	out := make([]Member, 0, len(m.members))
	for name, e := range m.members {
		if (e.State == StateDead || e.State == StateLeft) && e.Since.Before(cutoff) {
			delete(m.members, name)
			continue
		}
		mem := e.Member
		mem.Meta.Caps = slices.Clone(mem.Meta.Caps)
		out = append(out, mem)
	}
	slices.SortFunc(out, func(a, b Member) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out
}

// Events delivers membership changes. The channel is buffered
// (Config.EventBuffer); when it is full the oldest event is dropped (see
// Dropped), so a slow reader never blocks gossip. It is closed by Shutdown.
func (m *Membership) Events() <-chan Event { return m.events }

// Dropped is how many events were dropped because Events was full.
func (m *Membership) Dropped() uint64 { return m.dropped.Load() }

// UpdateMeta calls Config.Meta and gossips the result. It returns once the
// update has been broadcast, or after Config.UpdateTimeout with an error
// (the update still spreads, later). A Meta too large leaves the old one in
// place and returns an error wrapping ErrMetaTooLarge.
func (m *Membership) UpdateMeta() error {
	m.metaMu.Lock()
	defer m.metaMu.Unlock()
	if m.down.Load() {
		return ErrShutdown
	}
	if m.leaving.Load() {
		return errors.New("membership: UpdateMeta after Leave")
	}
	local := m.cfg.Meta()
	enc, err := encodeMeta(local, false)
	if err != nil {
		return err
	}
	m.meta.Store(&enc)
	m.proto.Store(int64(local.Proto))
	if err := m.list.UpdateNode(m.cfg.UpdateTimeout); err != nil {
		return fmt.Errorf("membership: update meta: %w", err)
	}
	return nil
}

// Leave tells the cluster this node is leaving, so others report it "left"
// rather than "dead", and waits up to timeout for the news to spread.
// Gossip keeps running until Shutdown, which should follow. A node that
// missed the announcement reports the node dead.
func (m *Membership) Leave(timeout time.Duration) error {
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	m.metaMu.Lock()
	defer m.metaMu.Unlock()
	if m.down.Load() {
		return ErrShutdown
	}
	if m.leaving.Swap(true) {
		return nil
	}
	start := time.Now()
	enc, err := encodeMeta(m.cfg.Meta(), true)
	if err != nil {
		// The last good meta with the farewell flag always fits.
		w, derr := decodeMeta(*m.meta.Load())
		if derr != nil {
			return fmt.Errorf("membership: leave: %w", err)
		}
		if enc, err = encodeMeta(w.Meta, true); err != nil {
			return fmt.Errorf("membership: leave: %w", err)
		}
	}
	m.meta.Store(&enc)
	if err := m.list.UpdateNode(timeout / 2); err != nil {
		m.log.Warn("leave announcement not fully spread", "err", err)
	}
	if err := m.list.Leave(max(timeout-time.Since(start), timeout/2)); err != nil {
		return fmt.Errorf("membership: leave: %w", err)
	}
	m.mu.Lock()
	if e := m.members[m.cfg.Name]; e != nil {
		m.setState(e, StateLeft)
	}
	m.mu.Unlock()
	return nil
}

// Shutdown stops gossip at once (without Leave, others will report this node
// dead), stops all timers and closes Events. It is idempotent.
func (m *Membership) Shutdown() error {
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	if m.down.Swap(true) {
		return nil
	}
	err := m.list.Shutdown()
	m.mu.Lock()
	for t := range m.timers {
		t.Stop()
	}
	m.timers = nil
	m.mu.Unlock()
	m.emitMu.Lock()
	close(m.events)
	m.emitMu.Unlock()
	if err != nil {
		return fmt.Errorf("membership: shutdown: %w", err)
	}
	return nil
}

// emit delivers e without blocking, dropping the oldest queued event if the
// channel is full.
func (m *Membership) emit(e Event) {
	m.emitMu.Lock()
	defer m.emitMu.Unlock()
	if m.down.Load() {
		return
	}
	for {
		select {
		case m.events <- e:
			return
		default:
		}
		select {
		case <-m.events:
			m.dropped.Add(1)
		default:
		}
	}
}

// setState changes e's state; the caller holds mu.
func (m *Membership) setState(e *entry, s State) {
	if e.State != s {
		e.State = s
		e.Since = time.Now()
	}
	if s != StateSuspect && e.suspicion != nil {
		e.suspicion.Stop()
		delete(m.timers, e.suspicion)
		e.suspicion = nil
	}
}

// observe records a node from memberlist and returns the event to emit.
func (m *Membership) observe(n *memberlist.Node, kind EventKind) (Event, bool) {
	w, err := decodeMeta(n.Meta)
	if err != nil && n.Name != m.cfg.Name {
		m.log.Warn("member sent unreadable meta", "member", n.Name, "err", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.members[n.Name]
	if e == nil {
		e = &entry{Member: Member{Name: n.Name}}
		m.members[n.Name] = e
	}
	e.Addr = n.Address()
	prevBye := e.bye
	e.Meta, e.bye = w.Meta, w.Bye
	switch kind {
	case EventJoin:
		m.setState(e, StateAlive)
		e.Since = time.Now()
	case EventUpdate:
		m.setState(e, StateAlive)
		if w.Bye && !prevBye {
			return Event{}, false // the farewell is not a change of Meta
		}
	case EventLeave:
		if e.bye {
			m.setState(e, StateLeft)
		} else {
			kind = EventDead
			m.setState(e, StateDead)
		}
	}
	mem := e.Member
	mem.Meta.Caps = slices.Clone(mem.Meta.Caps)
	return Event{Kind: kind, Member: mem}, true
}

// suspect records this node's suspicion of name (from memberlist's log).
func (m *Membership) suspect(name string) {
	m.mu.Lock()
	e := m.members[name]
	if e == nil || e.State != StateAlive || m.timers == nil {
		m.mu.Unlock()
		return
	}
	m.setState(e, StateSuspect)
	// memberlist declares the node dead within the longest suspicion
	// timeout; past it (plus a probe) the suspicion was refuted.
	limit := suspicionMax(m.ml, max(len(m.members), 1)) + 2*m.ml.ProbeInterval
	var t *time.Timer
	t = time.AfterFunc(limit, func() { m.clearSuspicion(name, t) })
	e.suspicion = t
	m.timers[t] = struct{}{}
	mem := e.Member
	m.mu.Unlock()
	m.log.Info("member suspected", "member", name)
	m.emit(Event{Kind: EventSuspect, Member: mem})
}

// clearSuspicion ends a suspicion of name: by its timer (t) or a successful
// probe (t nil).
func (m *Membership) clearSuspicion(name string, t *time.Timer) {
	m.mu.Lock()
	e := m.members[name]
	if e == nil || e.State != StateSuspect || (t != nil && e.suspicion != t) {
		m.mu.Unlock()
		return
	}
	m.setState(e, StateAlive)
	mem := e.Member
	m.mu.Unlock()
	m.emit(Event{Kind: EventAlive, Member: mem})
}

// check refuses nodes that speak another protocol version.
func (m *Membership) check(n *memberlist.Node) error {
	if n.Name == m.cfg.Name {
		return nil
	}
	w, err := decodeMeta(n.Meta)
	var reason error
	switch {
	case err != nil:
		reason = fmt.Errorf("%w: node %s (%s) sent unreadable meta: %v", ErrIncompatible, n.Name, n.Address(), err)
	case int64(w.Proto) != m.proto.Load():
		reason = fmt.Errorf("%w: node %s (%s) speaks cluster protocol %d, this node %d", ErrIncompatible, n.Name, n.Address(), w.Proto, m.proto.Load())
	default:
		return nil
	}
	m.refusal.Store(&reason)
	m.mu.Lock()
	fresh := m.refused[n.Name] != reason.Error()
	m.refused[n.Name] = reason.Error()
	m.mu.Unlock()
	if fresh {
		m.log.Error("refusing member", "member", n.Name, "err", reason)
		m.emit(Event{Kind: EventRefused, Member: Member{Name: n.Name, Addr: n.Address(), Meta: w.Meta}, Reason: reason.Error()})
	}
	return reason
}

// delegate implements memberlist's delegate interfaces; memberlist calls
// them from its goroutines, some with its locks held, so none of them calls
// back into memberlist or blocks.
type delegate struct{ m *Membership }

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
	_ memberlist.AliveDelegate = (*delegate)(nil)
	_ memberlist.MergeDelegate = (*delegate)(nil)
	_ memberlist.PingDelegate  = (*delegate)(nil)
)

func (d *delegate) NodeMeta(limit int) []byte {
	b := *d.m.meta.Load()
	if len(b) > limit { // encodeMeta guarantees it fits MaxMetaSize
		return nil
	}
	return b
}

func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

func (d *delegate) NotifyJoin(n *memberlist.Node)   { d.notify(n, EventJoin) }
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.notify(n, EventUpdate) }
func (d *delegate) NotifyLeave(n *memberlist.Node)  { d.notify(n, EventLeave) }

func (d *delegate) notify(n *memberlist.Node, kind EventKind) {
	if e, ok := d.m.observe(n, kind); ok {
		if e.Kind != EventUpdate {
			d.m.log.Info("member "+string(e.Kind), "member", e.Member.Name, "addr", e.Member.Addr)
		}
		d.m.emit(e)
	}
}

func (d *delegate) NotifyAlive(n *memberlist.Node) error { return d.m.check(n) }

func (d *delegate) NotifyMerge(nodes []*memberlist.Node) error {
	for _, n := range nodes {
		if n.State != memberlist.StateAlive && n.State != memberlist.StateSuspect {
			continue // a dead node of another version does not matter
		}
		if err := d.m.check(n); err != nil {
			return err
		}
	}
	return nil
}

func (d *delegate) AckPayload() []byte { return nil }

func (d *delegate) NotifyPingComplete(other *memberlist.Node, rtt time.Duration, payload []byte) {
	d.m.clearSuspicion(other.Name, nil)
}

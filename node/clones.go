package node

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"doppel/node/api"
	"doppel/node/peer"
	"doppel/replicate"
	"doppel/replicate/wire"
)

// maxInitSize bounds an init binary received from a peer.
const maxInitSize = 512 << 20

// pendingInits remembers, per app, where its init binary belongs, between
// a prepare RPC and the init stream that follows it.
type pendingInits struct {
	mu sync.Mutex
	m  map[string]prepareRequest
}

func (p *pendingInits) put(r prepareRequest) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[string]prepareRequest{}
	}
	p.m[r.App] = r
}

func (p *pendingInits) get(app string) (prepareRequest, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.m[app]
	return r, ok
}

// memberOf checks that this node holds a clone of app (or is its OP) in the
// cluster state, so that no peer can make it store arbitrary apps.
func (n *Node) memberOf(app string) error {
	a := n.cluster.State().Apps[app]
	if a == nil {
		return fmt.Errorf("%w: app %s is not in the cluster state here", api.ErrNotFound, app)
	}
	if !a.IsMember(n.cfg.Name) {
		return fmt.Errorf("%w: %s is not a clone of %s (clones %v)", api.ErrConflict, n.cfg.Name, app, a.Clones)
	}
	return nil
}

// fromOP checks that peer is the OP of app in this node's cluster state:
// only the OP of the current term may store epochs and journal entries
// here (a deposed OP that still runs must not).
func (n *Node) fromOP(app, peer string) error {
	if err := n.memberOf(app); err != nil {
		return err
	}
	if a := n.cluster.State().Apps[app]; a.OP != peer {
		return fmt.Errorf("%w: %s is not the OP of %s (%q is, term %d)", api.ErrConflict, peer, app, a.OP, a.Term)
	}
	return nil
}

// handlePrepare registers the app as held here and says whether its init
// binary is present.
func (n *Node) handlePrepare(ctx context.Context, from string, raw json.RawMessage) (any, error) {
	var req prepareRequest
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, err
	}
	if err := n.memberOf(req.App); err != nil {
		return nil, err
	}
	spec := n.cluster.State().Apps[req.App].Spec
	if st, err := n.engine.App(req.App); err == nil && st.Running() {
		return nil, fmt.Errorf("%w: %s runs on %s; it cannot be a clone here", api.ErrConflict, req.App, n.cfg.Name)
	}
	if _, err := n.engine.Hold(toEngineSpec(spec), req.InitExe, req.InitSum, req.Stdout, req.Stderr); err != nil {
		return nil, err
	}
	n.inits.put(req)
	return prepareReply{HasInit: req.InitExe == "" || replicate.HasInit(req.InitExe, req.InitSum)}, nil
}

// standbyRequest asks a clone for its standby copy of an app at an epoch.
type standbyRequest struct {
	App   string `json:"app"`
	Epoch uint64 `json:"epoch"`
}

// handleStandby returns once this node's standby copy of the app holds the
// epoch (or a newer one), updating it when the update that follows the
// epoch's arrival has not run yet. A relocation waits for it before its
// last epoch: that update would otherwise compete with the last dump for
// the CPU, and the last epoch's update is shorter from a fresh copy.
func (n *Node) handleStandby(ctx context.Context, from string, raw json.RawMessage) (any, error) {
	var req standbyRequest
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, err
	}
	if err := n.memberOf(req.App); err != nil {
		return nil, err
	}
	return struct{}{}, n.engine.Standby(ctx, req.App, req.Epoch)
}

// handleInit stores an app's init binary sent by its OP.
func (n *Node) handleInit(ctx context.Context, s *peer.Stream) {
	app := s.Hello().App
	fail := func(err error) {
		n.log.Warn("init binary refused", "app", app, "peer", s.Peer(), "err", err)
	}
	req, ok := n.inits.get(app)
	if !ok {
		fail(errors.New("no prepare before the init stream"))
		return
	}
	var hdr [8]byte
	if _, err := io.ReadFull(s, hdr[:]); err != nil {
		fail(err)
		return
	}
	size := int64(binary.LittleEndian.Uint64(hdr[:]))
	if size <= 0 || size > maxInitSize {
		fail(fmt.Errorf("size %d out of bounds", size))
		return
	}
	if err := n.engine.InstallInit(s, size, req.InitExe, req.InitSum); err != nil {
		fail(err)
		return
	}
	_, _ = s.Write([]byte{1})
	_ = s.CloseWrite()
}

// wireConfig is the epoch wire protocol's configuration, logging to the
// node's log.
func (n *Node) wireConfig() wire.Config {
	cfg := wire.DefaultConfig()
	cfg.Logger = n.log
	return cfg
}

// handleEpoch receives an epoch into this node's store; the wire protocol
// acknowledges only after it is verified and fsynced.
func (n *Node) handleEpoch(ctx context.Context, s *peer.Stream) {
	app := s.Hello().App
	if err := n.fromOP(app, s.Peer()); err != nil {
		n.log.Warn("epoch stream refused", "app", app, "peer", s.Peer(), "err", err)
		return
	}
	ep, stats, err := wire.Receive(ctx, s, n.engine.Store(), n.wireConfig())
	if err != nil {
		n.log.Warn("epoch receive failed", "app", app, "peer", s.Peer(), "err", err)
		n.publish(api.Event{Kind: api.KindError, App: app, Message: fmt.Sprintf("receive from %s: %v", s.Peer(), err)})
		return
	}
	n.metrics.received(app, stats)
	// The journal before the barrier is in this epoch.
	n.cloneJournal(app).Trim(ep.Manifest.Barrier)
	n.log.Debug("epoch received", "app", app, "epoch", ep.Manifest.Epoch, "bytes", stats.WireRecv)
	// Ready for a restore first: a promotion or a relocation here starts
	// from this copy (the sender has its acknowledgement already).
	start := time.Now()
	if err := n.engine.Standby(n.ctx, app, ep.Manifest.Epoch); err != nil {
		n.log.Warn("standby copy", "app", app, "epoch", ep.Manifest.Epoch, "err", err)
	} else {
		n.log.Debug("standby copy updated", "app", app, "epoch", ep.Manifest.Epoch, "took", time.Since(start))
	}
	n.gcSoon()
}

// A clone's store is collected once epochs have stopped arriving for
// gcQuiet (or gcMaxDelay after the first one, when they keep coming): a GC
// compacts packs and holds off new transactions, so it must not run just
// as the next epoch arrives, such as a relocation's last one, which
// follows its warm-up epoch within about a second.
const (
	gcQuiet    = 2 * time.Second
	gcMaxDelay = 10 * time.Second
)

// gcSoon asks for a store GC after the quiet period.
func (n *Node) gcSoon() {
	n.gcMu.Lock()
	defer n.gcMu.Unlock()
	now := time.Now()
	switch {
	case n.gcTimer == nil:
		n.gcFirst = now
		n.gcTimer = time.AfterFunc(gcQuiet, n.gcNow)
	case now.Sub(n.gcFirst) < gcMaxDelay-gcQuiet:
		n.gcTimer.Reset(gcQuiet)
	}
}

func (n *Node) gcNow() {
	n.gcMu.Lock()
	n.gcTimer = nil
	n.gcMu.Unlock()
	if n.ctx.Err() != nil {
		return
	}
	if _, err := n.engine.Store().GC(n.ctx); err != nil && n.ctx.Err() == nil {
		n.log.Warn("store gc after received epochs", "err", err)
	}
}

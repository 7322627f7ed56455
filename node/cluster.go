package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"doppel/node/api"
	"doppel/node/peer"
	"doppel/node/peer/membership"
	"doppel/node/state"
	"doppel/replicate"
)

// RPC methods between nodes (peer transport).
const (
	rpcApply      = "cluster.apply"  // leader: apply a forwarded raft command
	rpcSubmit     = "cluster.submit" // leader: place a new app
	rpcCheckpoint = "app.checkpoint" // OP: take an epoch now
	rpcDetail     = "app.detail"     // OP: app detail with clone health and resource graph
	rpcInfo       = "app.info"       // a node's view of an app, without the graph (cheap to poll)
	rpcPrepare    = "clone.prepare"  // clone: register an app, say whether its init binary is here
	rpcStandby    = "clone.standby"  // clone: return once the app's standby copy holds an epoch
	rpcLeave      = "cluster.leave"  // leader: the calling node shuts down cleanly
	rpcForget     = "app.forget"     // any node: delete a removed app's local copy and epochs
	rpcIndex      = "cluster.index"  // leader: its applied raft index
	rpcLeaving    = "member.leaving" // any node: the calling node is shutting down cleanly
	streamEpoch   = "epoch"          // clone: receive an epoch (replicate/wire)
	streamInit    = "init"           // clone: receive an app's init binary
	maxVoters     = 5                // beyond this, nodes join raft as non-voters
	applyTimeout  = 10 * time.Second // how long a forwarded command may wait for a leader
	leaderRetry   = 100 * time.Millisecond
)

// wireCommand carries a raft command over the peer transport (the
// command's type is not part of its JSON).
type wireCommand struct {
	Type state.CmdType `json:"type"`
	Cmd  state.Command `json:"cmd"`
}

// apply applies cmd through the raft leader, wherever it is, retrying while
// a leader is being elected.
func (n *Node) apply(ctx context.Context, cmd state.Command) error {
	ctx, cancel := context.WithTimeout(ctx, applyTimeout)
	defer cancel()
	for {
		err := n.applyOnce(ctx, cmd)
		if err == nil || !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: no raft leader answered (%v)", api.ErrUnavailable, err)
		case <-time.After(leaderRetry):
		}
	}
}

func (n *Node) applyOnce(ctx context.Context, cmd state.Command) error {
	if n.cluster.IsLeader() {
		_, err := n.cluster.Apply(ctx, cmd)
		return err
	}
	addr, err := n.leaderPeer()
	if err != nil {
		return err
	}
	var rep applyReply
	if err := n.peers.Call(ctx, addr, rpcApply, wireCommand{Type: cmd.Type, Cmd: cmd}, &rep); err != nil {
		return fromPeer(err)
	}
	n.waitApplied(ctx, rep.Index)
	return nil
}

// applyReply is the leader's answer to a forwarded command: the index of
// its state once the command was applied.
type applyReply struct {
	Index uint64 `json:"index"`
}

// maxReadLag bounds how long a node waits for its own copy of the state
// to catch up with a command it had the leader apply.
const maxReadLag = 2 * time.Second

// waitApplied waits (at most maxReadLag) until this node's state has
// applied index, so that what a client reads from this node after a
// change it made here includes the change.
// syncState waits until this node's copy of the cluster state has applied
// everything the leader had applied when asked, so that a decision taken
// here (stop, restore, move) starts from what the cluster already decided
// elsewhere. Without a reachable leader it returns at once.
func (n *Node) syncState(ctx context.Context) bool {
	if n.cluster.IsLeader() {
		return true
	}
	addr, err := n.leaderPeer()
	if err != nil {
		return false
	}
	var rep applyReply
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := n.peers.Call(cctx, addr, rpcIndex, struct{}{}, &rep); err != nil {
		return false
	}
	n.waitApplied(ctx, rep.Index)
	return n.cluster.State().Index >= rep.Index
}

func (n *Node) waitApplied(ctx context.Context, index uint64) {
	ctx, cancel := context.WithTimeout(ctx, maxReadLag)
	defer cancel()
	for n.cluster.State().Index < index {
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// retryable errors mean "no leader right now": try again shortly.
func retryable(err error) bool {
	var rerr *peer.RemoteError
	if errors.As(err, &rerr) {
		return rerr.Code == "not_leader"
	}
	return errors.Is(err, state.ErrNotLeader) || errors.Is(err, errNoLeader)
}

// apiCodes carry the API's error kinds across the peer transport, so that
// a request forwarded to another node fails with the same kind as one
// served locally.
var apiCodes = []struct {
	code string
	err  error
}{
	{"api.not_found", api.ErrNotFound},
	{"api.bad_request", api.ErrBadRequest},
	{"api.conflict", api.ErrConflict},
	{"api.unavailable", api.ErrUnavailable},
}

// toPeer marks a handler's error with the code of its API kind.
func toPeer(err error) error {
	for _, c := range apiCodes {
		if errors.Is(err, c.err) {
			return peer.WithCode(c.code, err)
		}
	}
	return err
}

// fromPeer turns a peer's error marked by toPeer back into an error of the
// same API kind, with the peer's message.
func fromPeer(err error) error {
	var rerr *peer.RemoteError
	if !errors.As(err, &rerr) {
		return err
	}
	for _, c := range apiCodes {
		if rerr.Code == c.code {
			return &forwardedError{kind: c.err, msg: rerr.Message}
		}
	}
	return err
}

// forwardedError is an API error that another node returned.
type forwardedError struct {
	kind error
	msg  string
}

func (e *forwardedError) Error() string { return e.msg }
func (e *forwardedError) Unwrap() error { return e.kind }

var errNoLeader = errors.New("no raft leader known")

// leaderPeer returns the peer address of the raft leader.
func (n *Node) leaderPeer() (string, error) {
	name, _ := n.cluster.Leader()
	if name == "" {
		return "", errNoLeader
	}
	return n.peerAddr(name)
}

// peerAddr returns a member's peer transport address from its gossip.
func (n *Node) peerAddr(name string) (string, error) {
	for _, m := range n.members.Members() {
		if m.Name == name && m.Meta.Peer != "" {
			return m.Meta.Peer, nil
		}
	}
	return "", fmt.Errorf("node %s is not known to the gossip", name)
}

// leaderError marks errors on the leader path for forwarding.
func leaderError(err error) error {
	if errors.Is(err, state.ErrNotLeader) {
		return peer.WithCode("not_leader", err)
	}
	return err
}

// submitRequest asks the leader to place a new app.
type submitRequest struct {
	Spec      state.AppSpec `json:"spec"`
	Preferred string        `json:"preferred"`
}

// submitReply is the leader's answer to a submit: the app as placed and
// the index of its state then.
type submitReply struct {
	App   state.App `json:"app"`
	Index uint64    `json:"index"`
}

// submit registers a new app and places it: OP the preferred node when it
// can host apps, clones on the best other workers.
func (n *Node) submit(ctx context.Context, req submitRequest) (*state.App, error) {
	ctx, cancel := context.WithTimeout(ctx, applyTimeout)
	defer cancel()
	for {
		var app *state.App
		var err error
		if n.cluster.IsLeader() {
			app, err = n.place(ctx, req)
		} else {
			var addr string
			if addr, err = n.leaderPeer(); err == nil {
				var out submitReply
				if err = n.peers.Call(ctx, addr, rpcSubmit, req, &out); err == nil {
					app = &out.App
					n.waitApplied(ctx, out.Index)
				}
				err = fromPeer(err)
			}
		}
		if err == nil || !retryable(err) {
			return app, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: no raft leader answered (%v)", api.ErrUnavailable, err)
		case <-time.After(leaderRetry):
		}
	}
}

// place runs on the leader.
func (n *Node) place(ctx context.Context, req submitRequest) (*state.App, error) {
	if _, ok := n.cluster.State().Apps[req.Spec.Name]; ok {
		return nil, fmt.Errorf("%w: app %s already exists (doppel ls)", api.ErrConflict, req.Spec.Name)
	}
	cands := n.candidates()
	op, err := ChooseOP(req.Preferred, cands)
	if err != nil {
		return nil, fmt.Errorf("%w: place %s: %v", api.ErrUnavailable, req.Spec.Name, err)
	}
	clones := PlaceClones(op, req.Spec.Replicas, nil, cands)
	spec := req.Spec
	res, err := n.cluster.Apply(ctx, state.Command{Type: state.CmdPutApp, App: &spec})
	if err != nil {
		if errors.Is(err, state.ErrExists) {
			return nil, fmt.Errorf("%w: app %s already exists", api.ErrConflict, spec.Name)
		}
		return nil, leaderError(err)
	}
	put, ok := res.(*state.App)
	if !ok {
		return nil, fmt.Errorf("app %s: put returned %T", spec.Name, res)
	}
	if _, err := n.cluster.Apply(ctx, state.Command{Type: state.CmdPlace, Name: spec.Name, OP: op,
		Term: put.Term + 1, ExpectTerm: put.Term, Clones: clones}); err != nil {
		return nil, leaderError(err)
	}
	app := n.cluster.State().Apps[spec.Name]
	if app == nil {
		return nil, fmt.Errorf("app %s vanished after placement", spec.Name)
	}
	if len(clones) < spec.Replicas {
		n.publish(api.Event{Kind: api.KindApp, App: spec.Name,
			Message: fmt.Sprintf("only %d of %d clones placed: not enough alive workers", len(clones), spec.Replicas)})
	}
	return app, nil
}

// candidates describes every known node for placement.
func (n *Node) candidates() []Candidate {
	drained := n.cluster.State().Drained
	var out []Candidate
	for _, m := range n.members.Members() {
		out = append(out, Candidate{
			Name:    m.Name,
			Worker:  m.Meta.Role == RoleWorker,
			Alive:   m.State == membership.StateAlive,
			Drained: drained[m.Name] || m.Meta.Drained,
			MemFree: m.Meta.MemFree,
		})
	}
	return out
}

// registerPeerHandlers installs the RPCs and streams other nodes call.
func (n *Node) registerPeerHandlers() {
	n.peers.Handle(rpcApply, func(ctx context.Context, from string, raw json.RawMessage) (any, error) {
		var wc wireCommand
		if err := json.Unmarshal(raw, &wc); err != nil {
			return nil, err
		}
		wc.Cmd.Type = wc.Type
		if _, err := n.cluster.Apply(ctx, wc.Cmd); err != nil {
			return nil, toPeer(leaderError(err))
		}
		return applyReply{Index: n.cluster.State().Index}, nil
	})
	n.peers.Handle(rpcSubmit, func(ctx context.Context, from string, raw json.RawMessage) (any, error) {
		var req submitRequest
		if err := json.Unmarshal(raw, &req); err != nil {
			return nil, err
		}
		if !n.cluster.IsLeader() {
			return nil, leaderError(state.ErrNotLeader)
		}
		app, err := n.place(ctx, req)
		if err != nil {
			return nil, toPeer(err)
		}
		return submitReply{App: *app, Index: n.cluster.State().Index}, nil
	})
	n.peers.Handle(rpcCheckpoint, func(ctx context.Context, from string, raw json.RawMessage) (any, error) {
		var name string
		if err := json.Unmarshal(raw, &name); err != nil {
			return nil, err
		}
		ei, err := n.checkpointLocal(ctx, name)
		return ei, toPeer(err)
	})
	n.peers.Handle(rpcDetail, func(ctx context.Context, from string, raw json.RawMessage) (any, error) {
		var name string
		if err := json.Unmarshal(raw, &name); err != nil {
			return nil, err
		}
		d, err := n.detailLocal(ctx, name)
		return d, toPeer(err)
	})
	n.peers.Handle(rpcInfo, func(ctx context.Context, from string, raw json.RawMessage) (any, error) {
		var name string
		if err := json.Unmarshal(raw, &name); err != nil {
			return nil, err
		}
		a, err := n.lookup(name)
		if err != nil {
			return nil, toPeer(err)
		}
		return n.appInfoLocal(a), nil
	})
	n.peers.Handle(rpcPrepare, n.handlePrepare)
	n.peers.Handle(rpcStandby, n.handleStandby)
	n.peers.HandleStream(streamInit, n.handleInit)
	n.peers.HandleStream(streamEpoch, n.handleEpoch)
	n.peers.HandleStream(streamJournal, n.handleJournal)
	n.peers.HandleStream(streamEvents, n.handleEvents)
	n.peers.Handle(rpcJournal, n.handleJournalSince)
	n.peers.Handle(rpcRelocate, n.handleRelocate)
	n.peers.Handle(rpcLeaving, func(ctx context.Context, from string, _ json.RawMessage) (any, error) {
		n.leavingMu.Lock()
		if n.leaving == nil {
			n.leaving = map[string]time.Time{}
		}
		n.leaving[from] = time.Now()
		n.leavingMu.Unlock()
		return nil, nil
	})
	n.peers.Handle(rpcIndex, func(ctx context.Context, from string, _ json.RawMessage) (any, error) {
		// Only a leader that a majority still follows answers: a deposed
		// one that has not noticed yet must not renew anybody's lease.
		if err := n.cluster.VerifyLeader(ctx); err != nil {
			return nil, toPeer(state.ErrNotLeader)
		}
		if !n.affirm.answer(from, time.Now()) {
			return nil, peer.WithCode("moving", fmt.Errorf("an app of %s is being moved to another node", from))
		}
		return applyReply{Index: n.cluster.State().Index}, nil
	})
	n.peers.Handle(rpcForget, func(ctx context.Context, from string, raw json.RawMessage) (any, error) {
		var name string
		if err := json.Unmarshal(raw, &name); err != nil {
			return nil, err
		}
		return nil, toPeer(n.forgetLocal(ctx, name))
	})
	n.peers.Handle(rpcLeave, func(ctx context.Context, from string, _ json.RawMessage) (any, error) {
		if !n.cluster.IsLeader() {
			return nil, toPeer(state.ErrNotLeader)
		}
		n.log.Info("raft: removing a node that shuts down", "peer", from)
		return nil, n.cluster.RemoveServer(ctx, from)
	})
}

// watchMembers turns membership changes into events, metrics and, on the
// leader, raft membership and clone placement.
func (n *Node) watchMembers() {
	for {
		select {
		case <-n.ctx.Done():
			return
		case ev, ok := <-n.members.Events():
			if !ok {
				return
			}
			n.publish(api.Event{Kind: api.KindMember, Node: ev.Member.Name,
				Message: fmt.Sprintf("%s is %s", ev.Member.Name, ev.Kind)})
			n.metrics.members(n.members.Members())
			if n.cluster.IsLeader() {
				n.reconcile()
			}
		}
	}
}

// leadershipLoop follows this node's raft leadership for the lease
// bookkeeping (see affirmations).
func (n *Node) leadershipLoop() {
	n.affirm.leading(n.cluster.IsLeader(), n.cluster.RaftTerm(), time.Now())
	for {
		select {
		case <-n.ctx.Done():
			return
		case l := <-n.cluster.LeaderCh():
			n.affirm.leading(l, n.cluster.RaftTerm(), time.Now())
		}
	}
}

// leaderLoop reconciles the cluster every second while this node leads.
func (n *Node) leaderLoop() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
			if n.cluster.IsLeader() {
				n.reconcile()
			}
		}
	}
}

// reconcile, on the leader: raft servers follow the gossip membership, and
// every app keeps its replica count on alive, undrained workers.
func (n *Node) reconcile() {
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	n.reconcileServers(ctx)
	n.promoteLost(ctx)
	n.reconcileClones(ctx)
	n.balanceOnce(ctx)
}

func (n *Node) reconcileServers(ctx context.Context) {
	servers, err := n.cluster.Servers()
	if err != nil {
		return
	}
	known := map[string]state.Server{}
	voters := 0
	for _, s := range servers {
		known[s.Name] = s
		if s.Voter {
			voters++
		}
	}
	for _, m := range n.members.Members() {
		s, in := known[m.Name]
		switch {
		case m.Name == n.cfg.Name:
		case m.State == membership.StateLeft && in:
			if err := n.cluster.RemoveServer(ctx, m.Name); err == nil {
				n.log.Info("raft: removed a node that left", "peer", m.Name)
			}
		case m.State != membership.StateAlive || m.Meta.Raft == "":
		case !in || s.Addr != m.Meta.Raft:
			// A newcomer first follows the log without a vote, so that an
			// unreachable one never costs the quorum; the next round
			// promotes it.
			if err := n.cluster.AddNonvoter(ctx, m.Name, m.Meta.Raft); err != nil {
				n.log.Warn("raft: add non-voter", "peer", m.Name, "err", err)
			} else {
				n.log.Info("raft: added non-voter", "peer", m.Name, "addr", m.Meta.Raft)
			}
		case !s.Voter && voters < maxVoters:
			if err := n.cluster.AddVoter(ctx, m.Name, m.Meta.Raft); err != nil {
				n.log.Warn("raft: promote to voter", "peer", m.Name, "err", err)
			} else {
				voters++
				n.log.Info("raft: promoted to voter", "peer", m.Name)
			}
		}
	}
}

func (n *Node) reconcileClones(ctx context.Context) {
	cands := n.candidates()
	for name, app := range n.cluster.State().Apps {
		if app.OP == "" {
			continue
		}
		want := PlaceClones(app.OP, app.Spec.Replicas, app.Clones, cands)
		if slices.Equal(want, app.Clones) {
			continue
		}
		_, err := n.cluster.Apply(ctx, state.Command{Type: state.CmdPlace, Name: name, OP: app.OP,
			Term: app.Term, Clones: want, ExpectTerm: app.Term})
		if err != nil {
			n.log.Warn("re-place clones", "app", name, "err", err)
			continue
		}
		n.publish(api.Event{Kind: api.KindApp, App: name,
			Message: fmt.Sprintf("clones of %s: %v → %v", name, app.Clones, want)})
	}
}

// watchState follows the cluster state: this node runs the apps placed on
// it and stops (and kills) its copy of any app placed elsewhere.
func (n *Node) watchState() {
	states, stop := n.cluster.Watch()
	defer stop()
	n.reconcileLocal(n.cluster.State())
	for {
		select {
		case <-n.ctx.Done():
			return
		case st, ok := <-states:
			if !ok {
				return
			}
			n.reconcileLocal(st)
		}
	}
}

func (n *Node) reconcileLocal(st state.State) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ctx.Err() != nil {
		return
	}
	for name, app := range st.Apps {
		r := n.runners[name]
		switch {
		case app.OP == n.cfg.Name && r == nil:
			r = n.newRunner(app)
			n.runners[name] = r
			r.start()
		case app.OP == n.cfg.Name:
			r.update(app)
		case r != nil && r.forcedAt() >= app.Term:
			// Forced here by the operator; the state has not caught up.
		case r != nil:
			delete(n.runners, name)
			n.stopRunner(r)
		default:
			n.fence(name, app)
		}
		if app.OP != n.cfg.Name && !app.IsMember(n.cfg.Name) {
			n.dropJournal(name)
		}
	}
	for name, r := range n.runners {
		if _, ok := st.Apps[name]; !ok {
			delete(n.runners, name)
			n.stopRunner(r)
		}
	}
	n.jmu.Lock()
	for name := range n.journals {
		if _, ok := st.Apps[name]; !ok {
			delete(n.journals, name)
		}
	}
	n.jmu.Unlock()
}

// stopRunner stops a runner and kills its app in the background; shutdown
// waits for it, so that the daemon never exits in the middle of a kill
// (which freezes the app first).
func (n *Node) stopRunner(r *runner) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		r.stop(true)
	}()
}

// forgetLocal removes an app that left the cluster state from this node:
// its copy, epochs and registration. It is asked for by the node that ran
// doppel rm (not derived from the log, which a node catching up replays
// after it may have imported the same app again).
func (n *Node) forgetLocal(ctx context.Context, name string) error {
	n.syncState(ctx) // the removal may not have reached this node yet
	if _, ok := n.cluster.State().Apps[name]; ok {
		return fmt.Errorf("%w: %s is in the cluster again", api.ErrConflict, name)
	}
	for {
		err := n.engine.Forget(ctx, name)
		if err == nil || errors.Is(err, replicate.ErrNoApp) {
			return nil
		}
		if !errors.Is(err, replicate.ErrBusy) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// fence kills a local copy of an app whose OP is another node (or none):
// never two copies serving.
func (n *Node) fence(name string, app *state.App) {
	st, err := n.engine.App(name)
	if err != nil || !st.Running() {
		return
	}
	n.log.Warn("killing a local copy of an app placed elsewhere", "app", name, "op", app.OP, "term", app.Term)
	if err := n.engine.Stop(n.ctx, name); err != nil {
		n.log.Error("fence", "app", name, "err", err)
		return
	}
	n.publish(api.Event{Kind: api.KindApp, App: name, Message: fmt.Sprintf("local copy of %s stopped: OP is %q at term %d", name, app.OP, app.Term)})
}

// toEngineSpec converts the cluster's app spec to the engine's.
func toEngineSpec(s state.AppSpec) replicate.Spec {
	return replicate.Spec{Name: s.Name, Args: s.Args, Dir: s.Dir, Env: s.Env, DataPaths: s.DataPaths}
}

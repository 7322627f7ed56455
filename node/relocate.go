package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"doppel/failover"
	"doppel/node/api"
	"doppel/node/peer"
	"doppel/node/peer/membership"
	"doppel/node/state"
	"doppel/replicate"
	"doppel/replicate/criu"
	"doppel/replicate/store"
	"doppel/replicate/wire"
)

const rpcRelocate = "app.relocate" // OP: move the app to a node

type relocateRequest struct {
	App string `json:"app"`
	To  string `json:"to"`
}

// Relocate implements api.Backend: the OP node runs the move.
func (n *Node) Relocate(ctx context.Context, name, to string) (api.RelocateResult, error) {
	a, err := n.lookupFresh(ctx, name)
	if err != nil {
		return api.RelocateResult{}, err
	}
	if err := n.checkTarget(a, to); err != nil {
		return api.RelocateResult{}, err
	}
	if a.OP == n.cfg.Name {
		return n.relocateLocal(ctx, name, to)
	}
	addr, err := n.peerAddr(a.OP)
	if err != nil {
		return api.RelocateResult{}, fmt.Errorf("%w: OP %s: %v", api.ErrUnavailable, a.OP, err)
	}
	var res api.RelocateResult
	if err := n.peers.Call(ctx, addr, rpcRelocate, relocateRequest{App: name, To: to}, &res); err != nil {
		return api.RelocateResult{}, fromPeer(err)
	}
	return res, nil
}

func (n *Node) handleRelocate(ctx context.Context, from string, raw json.RawMessage) (any, error) {
	var req relocateRequest
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, err
	}
	res, err := n.relocateLocal(ctx, req.App, req.To)
	return res, toPeer(err)
}

// checkTarget refuses a relocation the target cannot take, with the reason.
func (n *Node) checkTarget(a *state.App, to string) error {
	if a.OP == "" {
		return fmt.Errorf("%w: %s is stopped", api.ErrConflict, a.Spec.Name)
	}
	if a.OP == to {
		return fmt.Errorf("%w: %s already runs on %s", api.ErrConflict, a.Spec.Name, to)
	}
	if len(a.Clones) == 0 {
		return fmt.Errorf("%w: %s has no clone: run it with --replicas 1 or more to relocate it", api.ErrConflict, a.Spec.Name)
	}
	var m *membership.Member
	for _, mm := range n.members.Members() {
		if mm.Name == to {
			m = &mm
		}
	}
	switch {
	case m == nil:
		return fmt.Errorf("%w: no node %s in the cluster (doppel nodes)", api.ErrConflict, to)
	case m.State != membership.StateAlive:
		return fmt.Errorf("%w: %s is %s", api.ErrConflict, to, m.State)
	case m.Meta.Role != RoleWorker:
		return fmt.Errorf("%w: %s is a %s: it hosts no apps", api.ErrConflict, to, m.Meta.Role)
	case n.cluster.State().Drained[to] || m.Meta.Drained:
		return fmt.Errorf("%w: %s is drained (doppel undrain %s)", api.ErrConflict, to, to)
	}
	return nil
}

// relocateLocal moves an app this node runs to node to: a warm-up epoch
// while the app runs (so the target holds nearly everything), then at the
// barrier (service paused, app frozen) a last epoch that ends the app,
// its delta to the target, and a raft commit placing the app there with a
// new term. The target restores it and opens the service. If anything
// fails before the commit, the app is restored here from that last epoch
// and nothing is lost.
func (n *Node) relocateLocal(ctx context.Context, name, to string) (api.RelocateResult, error) {
	r := n.runner(name)
	if r == nil {
		return api.RelocateResult{}, fmt.Errorf("%w: %s does not run on %s", api.ErrUnavailable, name, n.cfg.Name)
	}
	if !r.beginMove() {
		return api.RelocateResult{}, fmt.Errorf("%w: %s is already being moved", api.ErrConflict, name)
	}
	defer r.endMove()
	app, _, _, _, _ := r.snapshot()
	if err := n.checkTarget(app, to); err != nil {
		return api.RelocateResult{}, err
	}
	progress := func(phase string, fields map[string]any) {
		if fields == nil {
			fields = map[string]any{}
		}
		fields["phase"], fields["to"] = phase, to
		n.publish(api.Event{Kind: api.KindRelocation, App: name, Message: fmt.Sprintf("relocating %s to %s: %s", name, to, phase), Fields: fields})
	}
	// The target becomes a clone if it is not one, and is warmed up.
	// The target goes first: the leader trims an app's clones to the
	// wanted count keeping the first ones, so an extra clone added here
	// must not be the one it drops.
	if !slices.Contains(app.Clones, to) {
		clones := append([]string{to}, app.Clones...)
		if err := n.apply(ctx, state.Command{Type: state.CmdPlace, Name: name, OP: app.OP, Term: app.Term, Clones: clones, ExpectTerm: app.Term}); err != nil {
			return api.RelocateResult{}, err
		}
		app.Clones = clones
	}
	progress("warm-up", nil)
	warm, err := retryBusy(ctx, func() (*store.Epoch, error) { return r.checkpointWith(ctx, replicate.CheckpointOptions{}) })
	if err != nil {
		return api.RelocateResult{}, fmt.Errorf("relocate %s: warm-up epoch: %w", name, err)
	}
	if st, err := r.sendEpoch(app, to, warm.Manifest.Epoch); err != nil {
		return api.RelocateResult{}, fmt.Errorf("relocate %s: warm-up to %s: %w", name, to, err)
	} else {
		progress("warm-up sent", map[string]any{"bytes": st.WireSent})
	}
	// Before the pause: the target's standby copy takes the warm-up epoch
	// (so that it neither competes with the last dump for the CPU nor
	// delays the restore), and the stream for the last epoch is opened.
	if addr, err := n.peerAddr(to); err == nil {
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		if err := n.peers.Call(sctx, addr, rpcStandby, standbyRequest{App: name, Epoch: warm.Manifest.Epoch}, nil); err != nil {
			n.log.Warn("relocation: target's standby copy not ready", "app", name, "to", to, "err", err)
		}
		cancel()
	}
	sendCtx, cancelSend := context.WithTimeout(r.ctx, 10*time.Minute)
	defer cancelSend()
	stream, err := r.openEpochStream(sendCtx, to)
	if err != nil {
		return api.RelocateResult{}, fmt.Errorf("relocate %s: open the stream to %s: %w", name, to, err)
	}
	defer stream.Close()
	// The store's GC, which a final epoch does not start, runs once the
	// app serves again (or here again).
	defer n.gcSoon()

	// The pause starts at the barrier (PSB): service held at a message
	// boundary, app frozen, dumped and ended. Until then the app serves.
	start := time.Now()
	var frozeAt atomic.Pointer[time.Time]
	svc := r.service()
	opts := replicate.CheckpointOptions{Final: true, Observer: func(ev replicate.Event) {
		if ev.Phase == replicate.PSB && !ev.End {
			t := ev.Time
			frozeAt.CompareAndSwap(nil, &t)
		}
	}}
	if svc != nil {
		opts.Barrier = svc.pause
	}
	progress("last epoch", nil)
	last, err := retryBusy(ctx, func() (*store.Epoch, error) { return r.checkpointWith(ctx, opts) })
	if err != nil {
		if svc != nil {
			svc.resume()
		}
		return api.RelocateResult{}, fmt.Errorf("relocate %s: last epoch: %w (the app keeps running here)", name, err)
	}
	epoch := last.Manifest.Epoch
	rollback := func(cause error) (api.RelocateResult, error) {
		n.log.Error("relocation failed, resuming here", "app", name, "to", to, "err", cause)
		r.closeService()
		if err := r.ensureRunning(); err != nil {
			return api.RelocateResult{}, fmt.Errorf("relocate %s: %v; and resuming it here from epoch %d failed too: %w", name, cause, epoch, err)
		}
		n.publish(api.Event{Kind: api.KindRelocation, App: name, Message: fmt.Sprintf("relocation of %s to %s failed (%v): resumed on %s from epoch %d", name, to, cause, n.cfg.Name, epoch)})
		return api.RelocateResult{}, fmt.Errorf("%w: relocate %s to %s: %v (resumed on %s, nothing lost)", api.ErrUnavailable, name, to, cause, n.cfg.Name)
	}
	stats, err := wire.Send(sendCtx, stream, n.engine.Store(), name, epoch, n.wireConfig())
	if err != nil {
		return rollback(err)
	}
	progress("last epoch sent", map[string]any{"bytes": stats.WireSent})
	// The switch: this node becomes a clone of the new term, holding the
	// same last epoch, so that it can take over again if the target fails.
	// It goes first, as it holds the newest epoch.
	clones := append([]string{n.cfg.Name}, slices.DeleteFunc(slices.Clone(app.Clones), func(c string) bool { return c == to })...)
	if err := n.apply(ctx, state.Command{Type: state.CmdPlace, Name: name, OP: to, Term: app.Term + 1, Clones: clones, ExpectTerm: app.Term, Handover: true}); err != nil {
		return rollback(err)
	}
	for _, node := range []string{to, n.cfg.Name} {
		_ = n.apply(ctx, state.Command{Type: state.CmdAck, Name: name, Node: node, Epoch: epoch, Term: app.Term + 1})
	}
	// The pause ends when the target serves.
	if err := n.waitServing(ctx, name, to, 2*time.Minute); err != nil {
		return api.RelocateResult{}, fmt.Errorf("relocate %s: placed on %s at term %d, but: %w", name, to, app.Term+1, err)
	}
	if t := frozeAt.Load(); t != nil {
		start = *t
	}
	pause := time.Since(start)
	res := api.RelocateResult{App: name, From: n.cfg.Name, To: to, Term: app.Term + 1, Epoch: epoch,
		PauseMs: float64(pause.Microseconds()) / 1000, BytesSent: stats.WireSent}
	n.publish(api.Event{Kind: api.KindRelocation, App: name, Node: to, Epoch: epoch,
		Message: fmt.Sprintf("%s relocated from %s to %s: pause %s, %d bytes in the last epoch", name, n.cfg.Name, to, pause.Round(time.Millisecond), stats.WireSent),
		Fields:  map[string]any{"pause_ms": res.PauseMs, "bytes": stats.WireSent, "from": n.cfg.Name, "to": to}})
	return res, nil
}

// retryBusy retries an epoch while a periodic one still holds the app, or
// while CRIU finds another dump in the app's working directory (another
// app of the same directory being checkpointed: criu.ErrBusy says retry).
// A failed dump leaves the app running, so the retry is safe.
func retryBusy(ctx context.Context, f func() (*store.Epoch, error)) (*store.Epoch, error) {
	for {
		ep, err := f()
		if !errors.Is(err, replicate.ErrBusy) && !errors.Is(err, criu.ErrBusy) {
			return ep, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitServing waits until the app runs on node to.
func (n *Node) waitServing(ctx context.Context, name, to string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	addr, err := n.peerAddr(to)
	if err != nil {
		return err
	}
	// A node that has yet to apply the placement, or to start its runner,
	// describes the app from the cluster state alone, as failed: only a
	// failure the target reports as OP for failGrace counts.
	const failGrace = 2 * time.Second
	var failedSince time.Time
	method := rpcInfo // what the target reports without scanning the app
	for {
		var d api.AppInfo
		cctx, c := context.WithTimeout(ctx, 2*time.Second)
		err := n.peers.Call(cctx, addr, method, name, &d)
		if errors.Is(err, peer.ErrUnknownMethod) {
			// A target of an older version.
			var dd api.AppDetail
			method = rpcDetail
			err = n.peers.Call(cctx, addr, method, name, &dd)
			d = dd.AppInfo
		}
		c()
		if err == nil && d.OP == to && d.State == api.AppRunning {
			return nil
		}
		if err == nil && d.OP == to && d.State == api.AppFailed {
			if failedSince.IsZero() {
				failedSince = time.Now()
			}
			if time.Since(failedSince) >= failGrace {
				return fmt.Errorf("%s failed to start %s", to, name)
			}
		} else {
			failedSince = time.Time{}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not report %s running in %s", to, name, timeout)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Drain implements api.Backend.
func (n *Node) Drain(ctx context.Context, node string) (api.DrainResult, error) {
	res := api.DrainResult{Node: node, Moves: []api.RelocateResult{}, Errors: []string{}}
	known := false
	for _, m := range n.members.Members() {
		known = known || m.Name == node
	}
	if !known {
		return res, fmt.Errorf("%w: no node %s in the cluster", api.ErrNotFound, node)
	}
	if err := n.apply(ctx, state.Command{Type: state.CmdSetDrained, Node: node, Drained: true}); err != nil {
		return res, err
	}
	n.publish(api.Event{Kind: api.KindMember, Node: node, Message: node + " drained: no new apps or clones"})
	for _, a := range n.cluster.State().Apps {
		if a.OP != node {
			continue
		}
		to, err := n.drainTarget(a)
		if err == nil {
			var mv api.RelocateResult
			if mv, err = n.Relocate(ctx, a.Spec.Name, to); err == nil {
				res.Moves = append(res.Moves, mv)
				continue
			}
		}
		res.Errors = append(res.Errors, fmt.Sprintf("%s: %v", a.Spec.Name, err))
	}
	if len(res.Errors) > 0 {
		return res, fmt.Errorf("%w: drain %s: %d app(s) could not move: %v", api.ErrConflict, node, len(res.Errors), res.Errors)
	}
	return res, nil
}

// drainTarget picks where a drained node's app goes: its clone holding the
// newest epoch, else the best other worker.
func (n *Node) drainTarget(a *state.App) (string, error) {
	if w, _, err := failover.Elect(n.electCandidates(a)); err == nil {
		return w.Node, nil
	}
	op, err := ChooseOP("", n.candidates())
	if err != nil {
		return "", err
	}
	if op == a.OP {
		return "", fmt.Errorf("%w: no other node can host it", ErrNoPlacement)
	}
	return op, nil
}

// Undrain implements api.Backend.
func (n *Node) Undrain(ctx context.Context, node string) error {
	if err := n.apply(ctx, state.Command{Type: state.CmdSetDrained, Node: node, Drained: false}); err != nil {
		return err
	}
	n.publish(api.Event{Kind: api.KindMember, Node: node, Message: node + " undrained"})
	return nil
}

// balanceInputs gathers what the balancer judges: per node, the higher of
// CPU load per core and memory pressure; per app, an equal share of its
// OP's load.
func (n *Node) balanceInputs() ([]failover.NodeLoad, []failover.AppLoad, map[string]float64) {
	cs := n.cluster.State()
	loads := map[string]float64{}
	var nodes []failover.NodeLoad
	perNode := map[string]int{}
	for _, a := range cs.Apps {
		if a.OP != "" {
			perNode[a.OP]++
		}
	}
	for _, m := range n.members.Members() {
		l := m.Meta.Load
		if m.Meta.CPUs > 0 {
			l /= float64(m.Meta.CPUs)
		}
		if m.Meta.MemTotal > 0 {
			l = max(l, 1-float64(m.Meta.MemFree)/float64(m.Meta.MemTotal))
		}
		if n.loadOverride != nil {
			if v, ok := n.loadOverride(m.Name); ok {
				l = v
			}
		}
		loads[m.Name] = l
		nodes = append(nodes, failover.NodeLoad{Name: m.Name, Load: l,
			Hostable: m.State == membership.StateAlive && m.Meta.Role == RoleWorker && !cs.Drained[m.Name] && !m.Meta.Drained})
	}
	var apps []failover.AppLoad
	for name, a := range cs.Apps {
		if a.OP == "" || perNode[a.OP] == 0 {
			continue
		}
		apps = append(apps, failover.AppLoad{Name: name, OP: a.OP, Share: loads[a.OP] / float64(perNode[a.OP]), Clones: a.Clones})
	}
	return nodes, apps, loads
}

// Balance implements api.Backend: the move the balancer would make now.
func (n *Node) Balance(ctx context.Context) (api.BalancePlan, error) {
	nodes, apps, loads := n.balanceInputs()
	p := api.BalancePlan{Enabled: n.cfg.Balance.Enabled, Loads: loads}
	// A dry run must not disturb the real balancer's history.
	b := n.balancer
	if b == nil {
		b = failover.NewBalancer(n.cfg.Balance.Config)
	}
	m, why := b.Preview(nodes, apps, time.Now())
	p.Reason = why
	if m != nil {
		p.Move = &api.Move{App: m.App, From: m.From, To: m.To, Reason: m.Reason}
	}
	return p, nil
}

// balanceLoop, on the leader with balancing on, makes at most one move per
// round.
func (n *Node) balanceOnce(ctx context.Context) {
	if !n.cfg.Balance.Enabled || n.balancer == nil {
		return
	}
	nodes, apps, _ := n.balanceInputs()
	now := time.Now()
	m, why := n.balancer.Plan(nodes, apps, now)
	if m == nil {
		n.log.Debug("balancer: no move", "reason", why)
		return
	}
	n.log.Info("balancer: moving an app", "app", m.App, "from", m.From, "to", m.To, "reason", m.Reason)
	n.publish(api.Event{Kind: api.KindRelocation, App: m.App, Message: "balancer: " + m.Reason,
		Fields: map[string]any{"from": m.From, "to": m.To, "balancer": true}})
	n.balancer.Moved(*m, now)
	go func() {
		if _, err := n.Relocate(n.ctx, m.App, m.To); err != nil && !errors.Is(err, context.Canceled) {
			n.log.Warn("balancer: move failed", "app", m.App, "to", m.To, "err", err)
			n.publish(api.Event{Kind: api.KindError, App: m.App, Message: fmt.Sprintf("balancer move to %s failed: %v", m.To, err)})
		}
	}()
}

package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"doppel/failover"
	"doppel/node/api"
	"doppel/node/peer/membership"
	"doppel/node/state"
)

// electCandidates describes an app's clones for the election: the epoch
// each acknowledged in the current term, and whether it can host the app.
func (n *Node) electCandidates(a *state.App) []failover.Candidate {
	members := map[string]membership.Member{}
	for _, m := range n.members.Members() {
		members[m.Name] = m
	}
	drained := n.cluster.State().Drained
	var out []failover.Candidate
	for _, c := range a.Clones {
		m, known := members[c]
		ack := a.Acked[c]
		cand := failover.Candidate{
			Node:     c,
			Alive:    known && m.State == membership.StateAlive,
			Worker:   known && m.Meta.Role == RoleWorker,
			Drained:  drained[c] || m.Meta.Drained,
			MemFree:  m.Meta.MemFree,
			Priority: m.Meta.Priority,
		}
		if ack.Term == a.Term {
			cand.Acked = ack.Epoch
		}
		out = append(out, cand)
	}
	return out
}

// promote moves an app to the elected clone (or to, when named) with a new
// term: a raft commit, so two nodes never both run it in one term. The
// promoted node restores its newest epoch, replays the journal and opens
// the service; the old OP, if it is alive, kills its copy on seeing the
// new term.
func (n *Node) promote(ctx context.Context, a *state.App, to, why string) (*state.App, error) {
	cands := n.electCandidates(a)
	var chosen failover.Candidate
	var reason string
	if to != "" {
		found := false
		for _, c := range cands {
			if c.Node == to {
				chosen, found = c, true
			}
		}
		switch {
		case !found:
			return nil, fmt.Errorf("%w: %s is not a clone of %s (clones: %v)", api.ErrConflict, to, a.Spec.Name, a.Clones)
		case !chosen.Alive:
			return nil, fmt.Errorf("%w: %s is not alive", api.ErrConflict, to)
		case chosen.Acked == 0:
			return nil, fmt.Errorf("%w: %s holds no acknowledged epoch of %s yet", api.ErrConflict, to, a.Spec.Name)
		}
		reason = fmt.Sprintf("%s chosen by the operator (epoch %d)", to, chosen.Acked)
	} else {
		var err error
		if chosen, reason, err = failover.Elect(cands); err != nil {
			return nil, fmt.Errorf("%w: %v", api.ErrConflict, err)
		}
	}
	// The old OP (if alive) becomes a clone again once it has the new
	// term's epochs; the others stay.
	rest := slices.DeleteFunc(slices.Clone(a.Clones), func(c string) bool { return c == chosen.Node })
	clones := PlaceClones(chosen.Node, a.Spec.Replicas, rest, n.candidates())
	cmd := state.Command{Type: state.CmdPlace, Name: a.Spec.Name, OP: chosen.Node, Term: a.Term + 1, Clones: clones, ExpectTerm: a.Term}
	// The old OP may serve until its lease runs out: from now on it gets
	// no renewal, and the new OP learns how much of the lease is left.
	// When this node does not lead, the new OP waits a whole lease.
	if a.OP != "" && n.cluster.IsLeader() {
		wait, release := n.affirm.revoke(a.OP, n.cfg.FenceLease, n.cluster.RaftTerm(), time.Now())
		defer release()
		cmd.LeaseWait = &wait
	}
	if err := n.apply(ctx, cmd); err != nil {
		return nil, err
	}
	wait := n.cfg.FenceLease
	if cmd.LeaseWait != nil {
		wait = *cmd.LeaseWait
	}
	n.publish(api.Event{Kind: api.KindPromotion, App: a.Spec.Name, Node: chosen.Node, Epoch: chosen.Acked,
		Message: fmt.Sprintf("%s promoted to OP of %s at term %d: %s; %s; it serves once the old OP's lease has run out (at most %s)",
			chosen.Node, a.Spec.Name, a.Term+1, why, reason, wait.Round(time.Millisecond))})
	n.log.Warn("promotion", "app", a.Spec.Name, "op", chosen.Node, "term", a.Term+1, "why", why, "reason", reason, "lease_wait", wait)
	return n.cluster.State().Apps[a.Spec.Name], nil
}

// promoteLost runs on the leader: every app whose OP is dead or gone is
// moved to its best clone. Without a majority there is no leader, hence no
// automatic promotion.
func (n *Node) promoteLost(ctx context.Context) {
	alive := map[string]membership.State{}
	for _, m := range n.members.Members() {
		alive[m.Name] = m.State
	}
	for _, a := range n.cluster.State().Apps {
		if a.OP == "" {
			continue
		}
		st, known := alive[a.OP]
		if known && st != membership.StateDead && st != membership.StateLeft {
			continue
		}
		why := fmt.Sprintf("OP %s is %s", a.OP, st)
		if !known {
			why = fmt.Sprintf("OP %s is unknown to the gossip", a.OP)
		}
		if _, err := n.promote(ctx, a, "", why); err != nil && !errors.Is(err, context.Canceled) {
			n.log.Error("cannot promote a clone", "app", a.Spec.Name, "why", why, "err", err)
			n.publish(api.Event{Kind: api.KindError, App: a.Spec.Name, Message: fmt.Sprintf("%s: no promotion: %v", why, err)})
		}
	}
}

// forcePromote starts the app on this node without a majority: the
// operator vouches that the old OP is down. The cluster state cannot record
// it until the majority is back; then this node claims the next term (or
// ends its copy if another node won).
func (n *Node) forcePromote(a *state.App, to string) (api.AppInfo, error) {
	name := a.Spec.Name
	if to != "" && to != n.cfg.Name {
		return api.AppInfo{}, fmt.Errorf("%w: without a majority only the node itself can be forced: run doppel failover %s --force on %s", api.ErrBadRequest, name, to)
	}
	if latest, err := n.engine.Store().Latest(name); err != nil || latest == 0 {
		return api.AppInfo{}, fmt.Errorf("%w: %s holds no epoch of %s", api.ErrConflict, n.cfg.Name, name)
	}
	n.mu.Lock()
	if r := n.runners[name]; r != nil {
		n.mu.Unlock()
		return api.AppInfo{}, fmt.Errorf("%w: %s already runs here", api.ErrConflict, name)
	}
	forced := a.Clone()
	forced.OP = n.cfg.Name
	r := n.newRunner(forced)
	r.forcedTerm = a.Term
	n.runners[name] = r
	r.start()
	n.mu.Unlock()
	msg := fmt.Sprintf("FORCED: %s restored on %s without a raft majority, on the operator's word that %s is down. "+
		"If %s still runs, two copies of %s serve until the majority returns; then this copy is recorded as OP at term %d, or ended if another node was chosen.",
		name, n.cfg.Name, a.OP, a.OP, name, a.Term+1)
	n.log.Warn("forced promotion", "app", name, "old_op", a.OP, "term", a.Term)
	n.publish(api.Event{Kind: api.KindPromotion, App: name, Node: n.cfg.Name, Message: msg})
	info := baseInfo(forced)
	info.State = api.AppRestoring
	return info, nil
}

// Failover implements api.Backend.
func (n *Node) Failover(ctx context.Context, name, to string, force bool) (api.AppInfo, error) {
	a, err := n.lookupFresh(ctx, name)
	if err != nil {
		return api.AppInfo{}, err
	}
	if a.OP == "" {
		return api.AppInfo{}, fmt.Errorf("%w: %s is stopped (doppel restore %s on a node that holds it)", api.ErrConflict, name, name)
	}
	if !n.cluster.HasQuorum() {
		if !force {
			return api.AppInfo{}, fmt.Errorf("%w: no raft majority: automatic and manual promotion need one; if you are sure the OP %s is down, run doppel failover %s --force on the clone to promote (risk: two copies serve if the OP is not down)", api.ErrUnavailable, a.OP, name)
		}
		return n.forcePromote(a, to)
	}
	na, err := n.promote(ctx, a, to, "operator request")
	if err != nil {
		return api.AppInfo{}, err
	}
	info := baseInfo(na)
	info.State = api.AppRestoring
	return info, nil
}

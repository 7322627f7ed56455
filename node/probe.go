package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"doppel/node/api"
	"doppel/node/peer"
	"doppel/node/peer/membership"
)

// Probe measures the link from this node to the member named name over
// the peer transport (api.Backend): incompressible bytes through the
// shared transfer.rate_limit, acknowledged by the peer, and the round trip
// of empty RPCs. The probe competes with epochs being sent meanwhile.
func (n *Node) Probe(ctx context.Context, name string, size int64) (api.ProbeResult, error) {
	if name == n.cfg.Name {
		return api.ProbeResult{}, fmt.Errorf("node %s is this node: probe another member (doppel nodes lists them): %w", name, api.ErrConflict)
	}
	var addr string
	found := false
	for _, m := range n.members.Members() {
		if m.Name != name {
			continue
		}
		found = true
		if st := n.memberState(m); st != membership.StateAlive {
			return api.ProbeResult{}, fmt.Errorf("node %s is %s: start its daemon, or probe an alive member (doppel nodes): %w", name, st, api.ErrConflict)
		}
		addr = m.Meta.Peer
	}
	if !found {
		return api.ProbeResult{}, fmt.Errorf("node %s is not a member of the cluster (doppel nodes lists them): %w", name, api.ErrNotFound)
	}
	if addr == "" {
		return api.ProbeResult{}, fmt.Errorf("node %s has not gossiped its peer address yet: retry in a few seconds: %w", name, api.ErrUnavailable)
	}
	pc := peer.DefaultProbeConfig()
	if size > 0 {
		pc.Bytes = size
	}
	r, err := n.peers.Probe(ctx, addr, pc)
	switch {
	case errors.Is(err, peer.ErrUnknownMethod) || errors.Is(err, peer.ErrUnknownKind):
		return api.ProbeResult{}, fmt.Errorf("node %s runs a doppel without the link probe: upgrade it (%w): %w", name, err, api.ErrConflict)
	case err != nil && ctx.Err() == nil:
		return api.ProbeResult{}, fmt.Errorf("probe node %s at %s: %w: %w", name, addr, err, api.ErrUnavailable)
	case err != nil:
		return api.ProbeResult{}, err
	}
	n.log.Info("link probe", "peer", name, "bytes", r.Bytes, "rate", int64(r.Rate()), "rtt", r.RTT, "capped", r.Capped())
	res := api.ProbeResult{
		From: n.cfg.Name, Node: name, Addr: addr, Bytes: r.Bytes,
		Seconds: r.Elapsed.Seconds(), PeerSeconds: r.PeerElapsed.Seconds(), Rate: r.Rate(),
		Truncated: r.Truncated, RTTMs: probeMillis(r.RTT), RTTsMs: make([]float64, 0, len(r.RTTs)),
		RateLimit: r.RateLimit, Capped: r.Capped(),
	}
	for _, d := range r.RTTs {
		res.RTTsMs = append(res.RTTsMs, probeMillis(d))
	}
	return res, nil
}

func probeMillis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

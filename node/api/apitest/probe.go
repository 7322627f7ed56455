package apitest

import (
	"context"
	"fmt"

	"doppel/node/api"
)

// FakeProbeRate is the link rate (bytes/s) the fake's probes report.
const FakeProbeRate = 100 << 20

// Probe implements api.Backend: a node the fake does not list is not
// found, the fake's own node or one not alive is a conflict; any other
// probe reports FakeProbeRate and a 1 ms round trip.
func (f *Fake) Probe(ctx context.Context, node string, size int64) (api.ProbeResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("Probe"); err != nil {
		return api.ProbeResult{}, err
	}
	if size <= 0 {
		size = api.DefaultProbeBytes
	}
	for _, n := range f.nodes {
		if n.Name != node {
			continue
		}
		if n.Self {
			return api.ProbeResult{}, fmt.Errorf("node %s is this node: probe another one: %w", node, api.ErrConflict)
		}
		if n.State != api.NodeAlive {
			return api.ProbeResult{}, fmt.Errorf("node %s is %s: %w", node, n.State, api.ErrConflict)
		}
		secs := float64(size) / FakeProbeRate
		return api.ProbeResult{
			From: f.node, Node: node, Addr: n.Addr, Bytes: size, Seconds: secs, PeerSeconds: secs,
			Rate: FakeProbeRate, RTTMs: 1, RTTsMs: []float64{1, 1, 1},
		}, nil
	}
	return api.ProbeResult{}, fmt.Errorf("node %s is not a member of the cluster: %w", node, api.ErrNotFound)
}

package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"doppel/node/api"
	"doppel/node/peer"
	"doppel/replicate/bench"
)

// checkPeerFlags validates doppel bench's --peer, --link-rate and
// --probe-size together and returns the probe's size in bytes.
func checkPeerFlags(peerName, linkRate, probeSize string) (int64, error) {
	if peerName == "" {
		return 0, nil
	}
	if linkRate != "" {
		return 0, errors.New("give --peer NODE (measure the link) or --link-rate RATE (state it), not both")
	}
	if err := peer.ValidName(peerName); err != nil {
		return 0, fmt.Errorf("--peer: %w", err)
	}
	size, err := bench.ParseSize(probeSize)
	if err != nil {
		return 0, fmt.Errorf("--probe-size: %w", err)
	}
	if size <= 0 || size > api.MaxProbeBytes {
		return 0, fmt.Errorf("--probe-size %s: want 1 byte to 1GiB", probeSize)
	}
	return size, nil
}

// probeLink asks the local daemon to measure its link to node.
func probeLink(cmd *cobra.Command, c *api.Client, node string, size int64) (*bench.Link, error) {
	defer c.Close()
	fmt.Fprintf(cmd.ErrOrStderr(), "measuring the link to %s through the daemon at %s (%s)...\n", node, c.Socket(), bench.FormatBytes(size))
	r, err := c.Probe(cmd.Context(), node, size)
	if err != nil {
		return nil, fmt.Errorf("bench --peer %s: %w", node, err)
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "link to %s: %s over %.2f s, round trip %.2f ms\n", node, bench.FormatRate(r.Rate), r.Seconds, r.RTTMs)
	return &bench.Link{
		Peer: node, Rate: r.Rate, Bytes: r.Bytes, Truncated: r.Truncated,
		RTT:       bench.Millis(time.Duration(r.RTTMs * float64(time.Millisecond))),
		RateLimit: r.RateLimit, Capped: r.Capped,
	}, nil
}

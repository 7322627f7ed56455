// Package membership tells each doppel node which nodes exist and which are
// alive, and what they are (Meta): a wrapper over hashicorp/memberlist (SWIM
// with Lifeguard) whose gossip is encrypted with a key derived from the
// cluster key, which refuses nodes speaking another protocol version, and
// which reports changes as a channel of Events.
package membership

import (
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/hashicorp/memberlist"

	"doppel/node/peer"
)

// Timing presets.
const (
	// PresetLAN is memberlist's DefaultLANConfig unchanged: probes every
	// second, a failed node is reported dead after about 5 to 10 s.
	PresetLAN = "lan"
	// PresetFast detects failures within FastDetectionBound, for tests and
	// small clusters on a quiet network; see fastConfig.
	PresetFast = "fast"
)

// FastDetectionBound is how long, at most, PresetFast takes from a node's
// failure to every other node of a cluster of up to 10 nodes reporting it
// dead, on a network that delivers packets within a few milliseconds: one
// probe round of each survivor to reach the dead node (up to 2 probe
// intervals in a 3-node cluster), the probe itself (one interval), the
// longest suspicion timeout (2 × 3 × 200 ms = 1.2 s, shortened to 0.6 s by
// a second suspecting node) and a few gossip intervals to spread the
// verdict.
const FastDetectionBound = 2500 * time.Millisecond

// Config configures a Membership. See DefaultConfig.
type Config struct {
	// Name is this node's name in the cluster (peer.ValidName).
	Name string
	// BindAddr is the IP address gossip listens on (TCP and UDP).
	BindAddr string
	// BindPort is the gossip port; 0 picks a free port (see Addr).
	BindPort int
	// AdvertiseAddr and AdvertisePort are the address others reach this
	// node at, when it differs from the bound one (NAT). Empty and 0:
	// memberlist's choice (the bound address, or the first private IP
	// when bound to 0.0.0.0).
	AdvertiseAddr string
	AdvertisePort int
	// Key is the cluster key; gossip is encrypted and authenticated with
	// Key.GossipKey() (AES-GCM), and unencrypted or foreign packets are
	// dropped. The zero key is refused.
	Key peer.Key
	// Preset is PresetLAN or PresetFast.
	Preset string
	// Join lists host:port addresses of existing members to join at start;
	// empty starts a new cluster.
	Join []string
	// Meta returns this node's metadata. It is called at start and by
	// UpdateMeta, never from memberlist's goroutines. Nil: an empty Meta.
	// Meta.Proto must equal the cluster's: nodes with another Proto are
	// refused.
	Meta func() Meta
	// Logger receives memberlist's log (at its levels) and membership
	// changes. Nil: slog.Default().
	Logger *slog.Logger
	// EventBuffer is the capacity of the Events channel.
	EventBuffer int
	// Retain is how long dead and left nodes stay in Members.
	Retain time.Duration
	// UpdateTimeout bounds how long UpdateMeta waits for its broadcast.
	UpdateTimeout time.Duration
}

// DefaultConfig is a production node: gossip on 0.0.0.0:7946 with the LAN
// preset. Zero fields of a Config passed to JoinCluster take these values,
// except BindPort (0 picks a free port).
func DefaultConfig() Config {
	return Config{
		BindAddr:      "0.0.0.0",
		BindPort:      7946,
		Preset:        PresetLAN,
		EventBuffer:   256,
		Retain:        time.Hour,
		UpdateTimeout: 5 * time.Second,
	}
}

// label separates doppel's gossip from any other memberlist user on the
// same port; it is authenticated as part of each encrypted message.
const label = "doppel"

// memberlistConfig builds memberlist's configuration for a preset.
func memberlistConfig(preset string) (*memberlist.Config, error) {
	switch preset {
	case PresetLAN:
		return memberlist.DefaultLANConfig(), nil
	case PresetFast:
		return fastConfig(), nil
	}
	return nil, fmt.Errorf("membership: unknown preset %q (want %q or %q)", preset, PresetLAN, PresetFast)
}

// fastConfig starts from memberlist's DefaultLocalConfig and shortens
// failure detection to about a second (see FastDetectionBound).
func fastConfig() *memberlist.Config {
	c := memberlist.DefaultLocalConfig()
	c.ProbeInterval = 200 * time.Millisecond // each node probes one other node per interval
	c.ProbeTimeout = 100 * time.Millisecond  // then asks IndirectChecks others to probe it
	c.IndirectChecks = 2
	// Suspicion lasts SuspicionMult × ProbeInterval × max(1, log10 n),
	// 0.6 s up to 10 nodes, and starts at SuspicionMaxTimeoutMult times
	// that until other nodes confirm the suspicion.
	c.SuspicionMult = 3
	c.SuspicionMaxTimeoutMult = 2
	c.GossipInterval = 50 * time.Millisecond
	c.GossipNodes = 3
	c.RetransmitMult = 3
	c.PushPullInterval = 5 * time.Second
	c.TCPTimeout = time.Second
	c.GossipToTheDeadTime = 5 * time.Second
	return c
}

// suspicionMax is the longest a node stays suspect before memberlist
// declares it dead, for a cluster of up to n nodes.
func suspicionMax(c *memberlist.Config, n int) time.Duration {
	scale := math.Max(1, math.Log10(float64(n)))
	return time.Duration(float64(c.SuspicionMult*c.SuspicionMaxTimeoutMult) * scale * float64(c.ProbeInterval))
}

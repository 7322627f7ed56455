package membership

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/hashicorp/memberlist"
)

// Meta is what a node tells the cluster about itself, carried in every
// memberlist alive message as compact JSON of at most MaxMetaSize bytes.
type Meta struct {
	// Role is "worker" (hosts apps and clones) or "witness" (votes only).
	Role string `json:"role,omitempty"`
	// Version is the doppel release.
	Version string `json:"ver,omitempty"`
	// Proto is the cluster protocol version; a node whose Proto differs
	// from this node's is refused.
	Proto int `json:"proto"`
	// CRIU is the CRIU version, empty if none.
	CRIU string `json:"criu,omitempty"`
	// Caps are capabilities (CRIU features and the like).
	Caps []string `json:"caps,omitempty"`
	// Load is the 1-minute load average; MemFree and MemTotal are bytes.
	Load     float64 `json:"load,omitempty"`
	CPUs     int     `json:"cpus,omitempty"`
	MemFree  uint64  `json:"mfree,omitempty"`
	MemTotal uint64  `json:"mtot,omitempty"`
	// API, Peer and Raft are addresses: the local API socket, the peer
	// Transport (ip:port) and raft (ip:port).
	API  string `json:"api,omitempty"`
	Peer string `json:"peer,omitempty"`
	Raft string `json:"raft,omitempty"`
	// Drained nodes accept no new apps or clones.
	Drained bool `json:"drained,omitempty"`
	// Priority ranks the node among clones of equal state when one is
	// promoted: higher first.
	Priority int `json:"prio,omitempty"`
}

// MaxMetaSize is memberlist's limit for node metadata.
const MaxMetaSize = memberlist.MetaMaxSize

// ErrMetaTooLarge is wrapped when encoded Meta exceeds MaxMetaSize.
var ErrMetaTooLarge = errors.New("node meta too large")

// wireMeta is Meta as gossiped: Bye announces a graceful leave, so that
// the following departure is reported as "left" rather than "dead".
type wireMeta struct {
	Meta
	Bye bool `json:"bye,omitempty"`
}

func encodeMeta(m Meta, bye bool) ([]byte, error) {
	b, err := json.Marshal(wireMeta{Meta: m, Bye: bye})
	if err != nil {
		return nil, fmt.Errorf("membership: encode meta: %w", err)
	}
	if len(b) > MaxMetaSize {
		return nil, fmt.Errorf("%w: %d bytes of JSON, limit %d (shorten Caps or the addresses)", ErrMetaTooLarge, len(b), MaxMetaSize)
	}
	return b, nil
}

func decodeMeta(b []byte) (wireMeta, error) {
	var w wireMeta
	if len(b) == 0 {
		return w, errors.New("no meta")
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return w, err
	}
	return w, nil
}

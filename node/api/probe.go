package api

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
)

// Bounds of a probe's size (POST /v1/nodes/{name}/probe?bytes=N).
const (
	DefaultProbeBytes = 64 << 20
	MaxProbeBytes     = 1 << 30
)

// ProbeResult is a measurement of the link from this node to a peer
// (POST /v1/nodes/{name}/probe?bytes=N): the daemon sends N bytes of random
// (incompressible) data over the peer transport, through the same shared
// rate limit (transfer.rate_limit) as its epochs, and the peer discards
// them and acknowledges; a few empty RPCs time the round trip.
type ProbeResult struct {
	// From is this node, Node the peer probed at Addr.
	From string `json:"from"`
	Node string `json:"node"`
	Addr string `json:"addr"`
	// Bytes is what the peer acknowledged; Seconds the sender's time from
	// the first byte to the acknowledgement, PeerSeconds the receiver's
	// from the first byte to the last.
	Bytes       int64   `json:"bytes"`
	Seconds     float64 `json:"seconds"`
	PeerSeconds float64 `json:"peer_seconds"`
	// Rate is Bytes over Seconds, in bytes per second.
	Rate float64 `json:"rate"`
	// Truncated: the transfer was cut at its time bound on a slow link.
	Truncated bool `json:"truncated"`
	// RTTMs is the median round trip of RTTsMs.
	RTTMs  float64   `json:"rtt_ms"`
	RTTsMs []float64 `json:"rtts_ms"`
	// RateLimit is this node's transfer.rate_limit (bytes/s, 0: none)
	// and Capped whether it set the rate (the rate reached 90% of it).
	RateLimit int64 `json:"rate_limit"`
	Capped    bool  `json:"capped"`
}

func postProbe(s *Server, r *http.Request) (int, any, error) {
	n, err := nodeName(r)
	if err != nil {
		return 0, nil, err
	}
	size := int64(DefaultProbeBytes)
	if v := r.URL.Query().Get("bytes"); v != "" {
		size, err = strconv.ParseInt(v, 10, 64)
		if err != nil || size <= 0 || size > MaxProbeBytes {
			return 0, nil, badRequest("bytes %q: want 1 to %d", v, MaxProbeBytes)
		}
	}
	res, err := s.backend.Probe(r.Context(), n, size)
	return http.StatusOK, res, err
}

// Probe measures the transfer rate and round trip from the daemon's node
// to node, sending size bytes (0: DefaultProbeBytes).
func (c *Client) Probe(ctx context.Context, node string, size int64) (ProbeResult, error) {
	var q url.Values
	if size != 0 {
		q = url.Values{"bytes": {strconv.FormatInt(size, 10)}}
	}
	var res ProbeResult
	err := c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(node)+"/probe", q, nil, &res)
	return res, err
}

package bench

import "fmt"

// Link is the link to a clone node as measured by the node's daemon over
// its peer transport (doppel bench --peer NODE): random, incompressible
// bytes through the node's shared transfer.rate_limit, as an epoch's LZ4
// frames travel.
type Link struct {
	// Peer is the node probed.
	Peer string `json:"peer"`
	// Rate is the measured transfer rate, bytes per second; Bytes what
	// was sent to measure it (less than asked when Truncated: the link
	// was too slow for the probe's time bound).
	Rate      float64 `json:"rate"`
	Bytes     int64   `json:"bytes"`
	Truncated bool    `json:"truncated"`
	// RTT is the median round trip of an RPC.
	RTT Millis `json:"rtt_ms"`
	// RateLimit is the node's transfer.rate_limit (bytes/s, 0: none) and
	// Capped whether it, not the network, set Rate.
	RateLimit int64 `json:"rate_limit"`
	Capped    bool  `json:"capped"`
}

// describe is the link's line of the text report.
func (l *Link) describe() string {
	s := fmt.Sprintf("%s measured to %s (%s sent over the peer transport, round trip %.2f ms)",
		FormatRate(l.Rate), l.Peer, FormatBytes(l.Bytes), float64(l.RTT)/1e6)
	switch {
	case l.Capped:
		s += fmt.Sprintf("; capped by transfer.rate_limit %s: the network may be faster", FormatRate(float64(l.RateLimit)))
	case l.RateLimit > 0:
		s += fmt.Sprintf("; below transfer.rate_limit %s: the network sets it", FormatRate(float64(l.RateLimit)))
	default:
		s += "; no transfer.rate_limit"
	}
	return s
}

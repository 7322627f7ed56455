package peer

import (
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"time"

	"golang.org/x/time/rate"
)

// The probe measures the link to a peer over this transport: a stream of
// kind ProbeStream whose opener writes incompressible bytes and ends it with
// CloseWrite, and whose receiver discards them and answers one JSON
// probeAck; and an RPC ProbePing that answers at once, timed for the round
// trip. Both are served once HandleProbes was called.
const (
	ProbeStream = "probe"      // stream: bytes to discard, answered by a probeAck
	ProbePing   = "probe.ping" // RPC: empty answer, for the round trip
)

// MaxProbeBytes bounds what one probe sends and what a receiver accepts.
const MaxProbeBytes = 1 << 30

// ProbeConfig configures Transport.Probe. Zero fields take their
// DefaultProbeConfig value.
type ProbeConfig struct {
	// Bytes is how much to send, at most MaxProbeBytes.
	Bytes int64
	// MaxDuration ends the transfer early on a slow link: the probe
	// reports what was sent until then.
	MaxDuration time.Duration
	// Pings is the number of timed round trips (after one untimed call
	// that opens the connection).
	Pings int
	// Timeout bounds the wait for the peer's acknowledgement after the
	// last byte.
	Timeout time.Duration
}

// DefaultProbeConfig sends 64 MiB, for at most 15 s, and times 5 pings.
func DefaultProbeConfig() ProbeConfig {
	return ProbeConfig{Bytes: 64 << 20, MaxDuration: 15 * time.Second, Pings: 5, Timeout: 30 * time.Second}
}

// ProbeResult is one probe of the link to a peer.
type ProbeResult struct {
	// Addr is the peer's transport address, Peer its node name.
	Addr string `json:"addr"`
	Peer string `json:"peer"`
	// Bytes is what the peer acknowledged having received.
	Bytes int64 `json:"bytes"`
	// Elapsed is the sender's time from its first write to the peer's
	// acknowledgement (it includes one round trip); PeerElapsed the
	// receiver's time from the first byte to the end of the stream.
	Elapsed     time.Duration `json:"elapsed_ns"`
	PeerElapsed time.Duration `json:"peer_elapsed_ns"`
	// Truncated: MaxDuration ended the transfer before Bytes were sent.
	Truncated bool `json:"truncated"`
	// RTT is the median of RTTs, the round trips of empty RPCs.
	RTT  time.Duration   `json:"rtt_ns"`
	RTTs []time.Duration `json:"rtts_ns"`
	// RateLimit is this transport's shared stream cap (bytes/s, 0: none)
	// while the probe ran; the probe's bytes pass through it like an
	// epoch's.
	RateLimit int64 `json:"rate_limit"`
}

// Rate is the measured transfer rate in bytes per second (sender's view).
func (r ProbeResult) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Bytes) / r.Elapsed.Seconds()
}

// Capped reports whether the rate limit, not the link, set the rate: the
// rate reached 90% of the limit.
func (r ProbeResult) Capped() bool {
	return r.RateLimit > 0 && r.Rate() >= 0.9*float64(r.RateLimit)
}

// probeAck is the receiver's answer on a probe stream.
type probeAck struct {
	Bytes     int64  `json:"bytes"`
	ElapsedNs int64  `json:"elapsed_ns"`
	Err       string `json:"err,omitempty"`
}

// RateLimit is the shared outgoing stream limit now (bytes/s, 0:
// unlimited); see SetRateLimit.
func (t *Transport) RateLimit() int64 {
	l := t.limiter.Limit()
	if l == rate.Inf || l <= 0 {
		return 0
	}
	return int64(l)
}

// HandleProbes makes this transport answer probes from its peers (see
// Probe): it registers the ProbeStream and ProbePing handlers.
func (t *Transport) HandleProbes() {
	t.Handle(ProbePing, func(context.Context, string, json.RawMessage) (any, error) { return nil, nil })
	t.HandleStream(ProbeStream, serveProbe)
}

// serveProbe discards a probe's bytes (at most MaxProbeBytes) and answers
// with their count and the time they took to arrive.
func serveProbe(ctx context.Context, s *Stream) {
	buf := make([]byte, 256<<10)
	var ack probeAck
	var first time.Time
	for {
		n, err := s.Read(buf)
		if n > 0 && first.IsZero() {
			first = time.Now()
		}
		ack.Bytes += int64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return // the opener went away: nobody to answer
		}
		if ack.Bytes > MaxProbeBytes {
			ack.Err = fmt.Sprintf("probe of more than %d bytes refused", int64(MaxProbeBytes))
			break
		}
	}
	if !first.IsZero() {
		ack.ElapsedNs = int64(time.Since(first))
	}
	b, _ := json.Marshal(ack)
	s.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.Write(append(b, '\n')); err == nil {
		s.CloseWrite()
	}
}

// Probe measures the link to the peer at addr: cfg.Pings round trips of an
// empty RPC, then a stream of cfg.Bytes of random (incompressible) bytes
// through the shared rate limiter, which the peer discards and
// acknowledges. The peer must have called HandleProbes (else the error
// wraps ErrUnknownKind or ErrUnknownMethod). It returns when the peer
// acknowledged, ctx ends, or the stream fails.
func (t *Transport) Probe(ctx context.Context, addr string, cfg ProbeConfig) (ProbeResult, error) {
	def := DefaultProbeConfig()
	if cfg.Bytes <= 0 {
		cfg.Bytes = def.Bytes
	}
	if cfg.Bytes > MaxProbeBytes {
		return ProbeResult{}, fmt.Errorf("peer: probe of %d bytes: at most %d", cfg.Bytes, int64(MaxProbeBytes))
	}
	if cfg.MaxDuration <= 0 {
		cfg.MaxDuration = def.MaxDuration
	}
	if cfg.Pings <= 0 {
		cfg.Pings = def.Pings
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = def.Timeout
	}
	res := ProbeResult{Addr: addr, RateLimit: t.RateLimit()}

	// The first call opens the pooled connection; the timed ones reuse it.
	if err := t.Call(ctx, addr, ProbePing, nil, nil); err != nil {
		return res, fmt.Errorf("peer: probe %s: %w", addr, err)
	}
	for range cfg.Pings {
		t0 := time.Now()
		if err := t.Call(ctx, addr, ProbePing, nil, nil); err != nil {
			return res, fmt.Errorf("peer: probe %s: %w", addr, err)
		}
		res.RTTs = append(res.RTTs, time.Since(t0))
	}
	sorted := slices.Clone(res.RTTs)
	slices.Sort(sorted)
	res.RTT = sorted[len(sorted)/2]

	s, err := t.OpenStream(ctx, addr, ProbeStream, "")
	if err != nil {
		return res, fmt.Errorf("peer: probe %s: %w", addr, err)
	}
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	res.Peer = s.Peer()

	// Random bytes: the transport does not compress, and real epochs are
	// LZ4 frames, so the wire carries what an epoch of this size would.
	var seed [32]byte
	_, _ = crand.Read(seed[:])
	buf := make([]byte, 256<<10)
	_, _ = rand.NewChaCha8(seed).Read(buf)

	start := time.Now()
	end := start.Add(cfg.MaxDuration)
	var sent int64
	for sent < cfg.Bytes {
		if time.Now().After(end) {
			res.Truncated = true
			break
		}
		n := int(min(int64(len(buf)), cfg.Bytes-sent))
		s.SetWriteDeadline(end.Add(cfg.Timeout))
		if _, err := s.Write(buf[:n]); err != nil {
			return res, probeErr(ctx, addr, err)
		}
		sent += int64(n)
	}
	if err := s.CloseWrite(); err != nil {
		return res, probeErr(ctx, addr, err)
	}
	s.SetReadDeadline(time.Now().Add(cfg.Timeout))
	var ack probeAck
	if err := json.NewDecoder(s).Decode(&ack); err != nil {
		return res, probeErr(ctx, addr, fmt.Errorf("no acknowledgement: %w", err))
	}
	res.Elapsed = time.Since(start)
	if ack.Err != "" {
		return res, fmt.Errorf("peer: probe %s: %w: %s", addr, ErrRemote, ack.Err)
	}
	if ack.Bytes != sent {
		return res, fmt.Errorf("peer: probe %s: %w: peer received %d bytes of %d", addr, ErrProtocol, ack.Bytes, sent)
	}
	res.Bytes = ack.Bytes
	res.PeerElapsed = time.Duration(ack.ElapsedNs)
	return res, nil
}

func probeErr(ctx context.Context, addr string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("peer: probe %s: %w", addr, ctx.Err())
	}
	return fmt.Errorf("peer: probe %s: %w", addr, err)
}

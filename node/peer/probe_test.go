package peer

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestProbeUncapped probes between two real transports without a limit:
// every byte is acknowledged, the round trips are timed, nothing is capped.
func TestProbeUncapped(t *testing.T) {
	checkGoroutines(t)
	key, _ := NewKey()
	a := newNode(t, "127.0.0.41", "a", key, nil)
	b := newNode(t, "127.0.0.42", "b", key, nil)
	a.HandleProbes()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := b.Probe(ctx, a.Addr(), ProbeConfig{Bytes: 16 << 20, Pings: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%.1f MiB/s, rtt %v %v, peer %v of %v", res.Rate()/(1<<20), res.RTT, res.RTTs, res.PeerElapsed, res.Elapsed)
	if res.Bytes != 16<<20 || res.Truncated {
		t.Errorf("bytes %d truncated %v, want 16 MiB complete", res.Bytes, res.Truncated)
	}
	if res.Peer != "a" || res.Addr != a.Addr() {
		t.Errorf("peer %q at %s, want a at %s", res.Peer, res.Addr, a.Addr())
	}
	if len(res.RTTs) != 3 || res.RTT <= 0 || res.RTT > time.Second {
		t.Errorf("rtts %v median %v", res.RTTs, res.RTT)
	}
	if res.PeerElapsed <= 0 || res.PeerElapsed > res.Elapsed {
		t.Errorf("peer elapsed %v, sender %v", res.PeerElapsed, res.Elapsed)
	}
	if res.RateLimit != 0 || res.Capped() || res.Rate() <= 0 {
		t.Errorf("limit %d capped %v rate %.0f", res.RateLimit, res.Capped(), res.Rate())
	}
}

// TestProbeCapped: with the sender's transport capped at 8 MiB/s the
// measured rate is the cap (within the limiter's tolerance and one round
// trip) and the result says the cap set it.
func TestProbeCapped(t *testing.T) {
	checkGoroutines(t)
	const limit = 8 << 20
	key, _ := NewKey()
	a := newNode(t, "127.0.0.41", "a", key, nil)
	b := newNode(t, "127.0.0.42", "b", key, func(c *Config) { c.RateLimit = limit })
	a.HandleProbes()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := b.Probe(ctx, a.Addr(), ProbeConfig{Bytes: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%.2f MiB/s in %v", res.Rate()/(1<<20), res.Elapsed)
	if res.RateLimit != limit {
		t.Errorf("rate limit %d, want %d", res.RateLimit, limit)
	}
	// The cap cannot be beaten by more than the first burst; a loaded
	// host may fall below it, but not to half.
	if r := res.Rate(); r > tolerance*limit || r < 0.5*limit {
		t.Errorf("rate %.0f bytes/s with a cap of %d", r, limit)
	}
	if !res.Capped() && res.Rate() >= 0.9*limit {
		t.Errorf("not reported capped at %.0f bytes/s", res.Rate())
	}
}

// TestProbeMaxDuration: a slow link ends the transfer at MaxDuration and
// the probe reports what was sent.
func TestProbeMaxDuration(t *testing.T) {
	checkGoroutines(t)
	key, _ := NewKey()
	a := newNode(t, "127.0.0.41", "a", key, nil)
	b := newNode(t, "127.0.0.42", "b", key, func(c *Config) { c.RateLimit = 2 << 20 })
	a.HandleProbes()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := b.Probe(ctx, a.Addr(), ProbeConfig{Bytes: 64 << 20, MaxDuration: 300 * time.Millisecond, Pings: 1})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Truncated || res.Bytes <= 0 || res.Bytes >= 64<<20 {
		t.Errorf("truncated %v after %d bytes", res.Truncated, res.Bytes)
	}
	if res.Elapsed > 5*time.Second {
		t.Errorf("took %v", res.Elapsed)
	}
}

// TestProbeBadInput: a peer that does not serve probes, a dead address,
// too many bytes and an ended context are errors that say so.
func TestProbeBadInput(t *testing.T) {
	checkGoroutines(t)
	key, _ := NewKey()
	a := newNode(t, "127.0.0.41", "a", key, nil) // no HandleProbes
	b := newNode(t, "127.0.0.42", "b", key, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := b.Probe(ctx, a.Addr(), ProbeConfig{}); !errors.Is(err, ErrUnknownMethod) {
		t.Errorf("peer without probes: %v, want ErrUnknownMethod", err)
	}
	if _, err := b.Probe(ctx, a.Addr(), ProbeConfig{Bytes: MaxProbeBytes + 1}); err == nil {
		t.Error("probe of more than MaxProbeBytes accepted")
	}
	if _, err := b.Probe(ctx, "127.0.0.43:1", ProbeConfig{}); err == nil {
		t.Error("probe of a dead address succeeded")
	}
	a.HandleProbes()
	done, cancelDone := context.WithCancel(ctx)
	cancelDone()
	if _, err := b.Probe(done, a.Addr(), ProbeConfig{}); !errors.Is(err, context.Canceled) {
		t.Errorf("ended context: %v", err)
	}
}

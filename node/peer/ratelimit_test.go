package peer

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"
)

const (
	limitCap  = 4 << 20 // bytes/s
	tolerance = 1.10    // achieved rate may exceed the cap by 10% (timer slack, first burst)
)

// transfer opens n streams from b to a at once, writes size bytes on each,
// and returns the time until a has read all of them.
func transfer(t *testing.T, a, b node, streams, size int) time.Duration {
	t.Helper()
	var got sync.WaitGroup
	got.Add(streams)
	counts := make(chan int64, streams)
	a.HandleStream("bulk", func(ctx context.Context, s *Stream) {
		defer got.Done()
		n, err := io.Copy(io.Discard, s)
		if err != nil {
			t.Errorf("receiver: %v", err)
		}
		counts <- n
	})
	var ss []*Stream
	var srcs []io.Reader
	for i := range streams {
		srcs = append(srcs, pattern(uint64(i), size))
		s, err := b.OpenStream(context.Background(), a.Addr(), "bulk", "")
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		ss = append(ss, s)
	}
	t0 := time.Now()
	for i, s := range ss {
		go func() {
			if _, err := io.Copy(s, srcs[i]); err != nil {
				t.Errorf("sender: %v", err)
			}
			s.CloseWrite()
		}()
	}
	got.Wait()
	d := time.Since(t0)
	for range streams {
		if n := <-counts; n != int64(size) {
			t.Fatalf("receiver got %d bytes, want %d", n, size)
		}
	}
	return d
}

func mibps(bytes int, d time.Duration) float64 { return float64(bytes) / d.Seconds() / (1 << 20) }

// checkCapped asserts that bytes moved in d respect the cap (burst
// included) and were not absurdly slow.
func checkCapped(t *testing.T, what string, bytes int, d time.Duration, limit int64) {
	t.Helper()
	rate := float64(bytes) / d.Seconds()
	t.Logf("%s: %d bytes in %v = %.2f MiB/s (cap %.2f MiB/s)", what, bytes, d.Round(time.Millisecond), rate/(1<<20), float64(limit)/(1<<20))
	if rate > float64(limit)*tolerance {
		t.Errorf("%s: %.2f MiB/s exceeds the cap of %.2f MiB/s", what, rate/(1<<20), float64(limit)/(1<<20))
	}
	if rate < float64(limit)/4 {
		t.Errorf("%s: %.2f MiB/s is far below the cap of %.2f MiB/s", what, rate/(1<<20), float64(limit)/(1<<20))
	}
}

func TestRateLimit(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	a := newNode(t, "127.0.0.11", "a", key, nil)
	b := newNode(t, "127.0.0.12", "b", key, func(c *Config) { c.RateLimit = limitCap })

	// One stream: 2 MiB at 4 MiB/s takes about half a second. (-short
	// stops after this and the unlimited case.)
	d := transfer(t, a, b, 1, 2<<20)
	checkCapped(t, "one stream", 2<<20, d, limitCap)

	// Lifting the limit at run time.
	b.SetRateLimit(0)
	const big = 32 << 20
	d = transfer(t, a, b, 1, big)
	rate := float64(big) / d.Seconds()
	t.Logf("unlimited: %d bytes in %v = %.1f MiB/s", big, d.Round(time.Millisecond), mibps(big, d))
	if rate < 5*limitCap {
		t.Errorf("unlimited stream ran at %.1f MiB/s, want far above the %d MiB/s cap", mibps(big, d), limitCap>>20)
	}
	if testing.Short() {
		return
	}
	b.SetRateLimit(limitCap)

	// Two streams share the limit: together they get the cap.
	d = transfer(t, a, b, 2, 1<<20)
	checkCapped(t, "two streams", 2<<20, d, limitCap)

	// The limit also applies to streams this node accepted.
	src := pattern(9, 2<<20)
	a.HandleStream("download", func(ctx context.Context, s *Stream) {
		io.Copy(s, src)
		s.CloseWrite()
	})
	a.SetRateLimit(limitCap)
	t0 := time.Now()
	s, err := b.OpenStream(context.Background(), a.Addr(), "download", "")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	n, err := io.Copy(io.Discard, s)
	if err != nil || n != 2<<20 {
		t.Fatalf("download: %d bytes, %v", n, err)
	}
	checkCapped(t, "accepted stream", 2<<20, time.Since(t0), limitCap)

	// And setting another limit at run time.
	b.SetRateLimit(limitCap / 2)
	d = transfer(t, a, b, 1, 1<<20)
	checkCapped(t, "limit changed at run time", 1<<20, d, limitCap/2)
}

func TestRateLimitBurst(t *testing.T) {
	key := mustKey(t)
	tr := newNode(t, "127.0.0.11", "a", key, nil)
	for _, c := range []struct {
		limit int64
		burst int
	}{
		{0, maxBurst},
		{1, minBurst},
		{4 << 20, 4 << 20 / 100},
		{1 << 30, maxBurst},
	} {
		tr.SetRateLimit(c.limit)
		if got := tr.limiter.Burst(); got != c.burst {
			t.Errorf("limit %d: burst %d, want %d", c.limit, got, c.burst)
		}
	}
}

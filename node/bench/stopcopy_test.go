package bench

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	rbench "doppel/replicate/bench"
)

// TestStopAndCopyTiny moves an 8 MiB app the naive way over a link capped
// at 40 MB/s and checks the timings add up, the cap holds, and nothing is
// left running.
func TestStopAndCopyTiny(t *testing.T) {
	requireCRIU(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := DefaultConfig()
	cfg.StateDir = t.TempDir()
	cfg.AppCommand = testAppCommand(t)
	cfg.App = rbench.AppConfig{Size: 8 << 20, DirtyRate: 0.01, Listen: addr}
	cfg.Warmup = 200 * time.Millisecond
	const rate = 40e6
	cfg.RateLimit = rate
	cfg.Timeout = 3 * time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	res, err := StopAndCopy(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.ImageBytes < 8<<20 {
		t.Errorf("images %d bytes, want at least the app's 8 MiB", res.ImageBytes)
	}
	for name, d := range map[string]rbench.Millis{"dump": res.Dump, "transfer": res.Transfer, "restore": res.Restore} {
		if d <= 0 {
			t.Errorf("%s: %v", name, d.D())
		}
	}
	if sum := res.Dump + res.Transfer + res.Restore + res.Answer; res.Pause < sum-rbench.Millis(time.Millisecond) {
		t.Errorf("pause %v shorter than its parts %v", res.Pause.D(), sum.D())
	}
	// The cap holds: the transfer cannot beat the rate (less one burst
	// of 10 ms).
	if floor := time.Duration(float64(res.ImageBytes)/rate*float64(time.Second)) - 10*time.Millisecond; res.Transfer.D() < floor {
		t.Errorf("transfer of %d bytes took %v, below %v at %.0f bytes/s", res.ImageBytes, res.Transfer.D(), floor, rate)
	}
	// The restored app is gone, and so are the directories.
	if err := rbench.Ping(context.Background(), addr, time.Second); err == nil {
		t.Errorf("the restored app still answers at %s", addr)
	}
	if left, _ := filepath.Glob(filepath.Join(cfg.StateDir, "*")); len(left) > 0 {
		t.Errorf("left in the state directory: %v", left)
	}
}

func TestStopAndCopyNeedsFixedPort(t *testing.T) {
	cfg := DefaultConfig()
	cfg.StateDir = t.TempDir()
	cfg.AppCommand = func(rbench.AppConfig) []string { return []string{"/bin/true"} }
	cfg.App.Listen = "127.0.0.1:0"
	if _, err := StopAndCopy(context.Background(), cfg); err == nil {
		t.Fatal("StopAndCopy accepted an app on port 0")
	}
}

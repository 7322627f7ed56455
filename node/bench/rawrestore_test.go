package bench

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	rbench "doppel/replicate/bench"
)

// TestRawRestoreTiny dumps an 8 MiB app, kills it and restores it with
// CRIU alone, and checks the timings add up and nothing is left running.
func TestRawRestoreTiny(t *testing.T) {
	requireCRIU(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := DefaultRestoreConfig()
	cfg.StateDir = t.TempDir()
	cfg.Args = testAppCommand(t)(rbench.AppConfig{Size: 8 << 20, DirtyRate: 0.01, Listen: addr, Seed: 1})
	cfg.Addr = addr
	cfg.Warmup = 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := RawRestore(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.ImageBytes < 8<<20 {
		t.Errorf("images %d bytes, want at least the app's 8 MiB", res.ImageBytes)
	}
	if res.Dump <= 0 || res.Restore <= 0 {
		t.Errorf("dump %v restore %v", res.Dump.D(), res.Restore.D())
	}
	if sum := res.Exit + res.Restore + res.Answer; res.Total < sum-rbench.Millis(time.Millisecond) {
		t.Errorf("total %v shorter than its parts %v", res.Total.D(), sum.D())
	}
	if err := rbench.Ping(context.Background(), addr, time.Second); err == nil {
		t.Errorf("the restored app still answers at %s", addr)
	}
	if left, _ := filepath.Glob(filepath.Join(cfg.StateDir, "*")); len(left) > 0 {
		t.Errorf("left in the state directory: %v", left)
	}
}

func TestRawRestoreBadInput(t *testing.T) {
	cfg := DefaultRestoreConfig()
	cfg.StateDir = t.TempDir()
	if _, err := RawRestore(context.Background(), cfg); err == nil {
		t.Error("RawRestore accepted no app command")
	}
	cfg.Args = []string{"/bin/true"}
	cfg.Addr = "127.0.0.1:0"
	if _, err := RawRestore(context.Background(), cfg); err == nil {
		t.Error("RawRestore accepted an app on port 0")
	}
}

package chaos

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"doppel/failover/journal"
	"doppel/failover/proxy"
)

// startKVApp runs the reference app directly (no doppel) on a free
// loopback port and returns its address.
func startKVApp(t testing.TB, extra ...string) string {
	t.Helper()
	requireKVApp(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	args := append([]string{"-listen", addr, "-data", filepath.Join(t.TempDir(), "data")}, extra...)
	cmd := exec.Command(build.kvapp, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	waitFor(t, 10*time.Second, "kvapp listens on "+addr, func() (bool, string) {
		_, err := kvInt(addr, "GET x")
		return err == nil, ""
	})
	return addr
}

// startLocalProxy serves a proxy in front of target with the journal mode,
// streaming its journal to clones in-process clone journals over loopback
// TCP (no TLS). It returns the service address.
func startLocalProxy(t testing.TB, target, mode string, clones int) string {
	t.Helper()
	j := journal.New(0)
	cfg := proxy.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Target = target
	cfg.Journal = mode
	p, err := proxy.New(cfg, j)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 2*clones)
	for i := range clones {
		go func() {
			c, err := ln.Accept()
			if err != nil {
				done <- struct{}{}
				return
			}
			context.AfterFunc(ctx, func() { c.Close() })
			_ = journal.Receive(ctx, c, journal.New(0))
			done <- struct{}{}
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		context.AfterFunc(ctx, func() { c.Close() })
		go func() {
			_ = journal.Send(ctx, c, j, "clone"+string(rune('a'+i)))
			done <- struct{}{}
		}()
	}
	t.Cleanup(func() {
		p.Close()
		cancel()
		ln.Close()
		for range 2 * clones {
			<-done
		}
	})
	return p.Addr().String()
}

// BenchmarkProxyInProcess is the throughput benchmark without the
// cluster: the reference app run directly, and the ingress proxy of
// package proxy in this process with its journal streamed to two clone
// journals over loopback TCP (no TLS, no daemons). Set against
// BenchmarkServiceThroughput it separates the proxy's own cost from the
// daemons'.
func BenchmarkProxyInProcess(b *testing.B) {
	app := startKVApp(b)
	var direct float64
	b.Run("direct", func(b *testing.B) {
		direct = hammer(b, app, "d"+randomHex(4), b.N, benchConns)
		b.ReportMetric(direct, "req/s")
	})
	for _, mode := range []string{proxy.JournalOff, proxy.JournalAsync, proxy.JournalSync} {
		clones := 2
		if mode == proxy.JournalOff {
			clones = 0
		}
		addr := startLocalProxy(b, app, mode, clones)
		var rate float64
		b.Run(mode, func(b *testing.B) {
			rate = hammer(b, addr, mode+randomHex(4), b.N, benchConns)
			b.ReportMetric(rate, "req/s")
		})
		b.Logf("journal %s, %d clone stream(s): ratio to direct %.2f", mode, clones, rate/direct)
	}
}

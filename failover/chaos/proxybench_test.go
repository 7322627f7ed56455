package chaos

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
// daemons'. Three floors come first: the least a relay in Go does (io.Copy
// both ways), the least one in C does (testdata/crelay, one thread, epoll;
// built with cc when there is one), and a relay in the kernel (a sockmap,
// no userspace on the data path; needs root). What they reach is the most
// any relay through this machine's loopback can reach.
func BenchmarkProxyInProcess(b *testing.B) {
	app := startKVApp(b)
	var direct float64
	b.Run("direct", func(b *testing.B) {
		direct = hammer(b, app, "d"+randomHex(4), b.N, benchConns)
		b.ReportMetric(direct, "req/s")
	})
	// ready, when set, returns what hammer runs once its connections are
	// open (it is called before they are).
	floor := func(name, addr string, ready func(b *testing.B) func()) {
		b.Run(name, func(b *testing.B) {
			var then []func()
			if ready != nil {
				then = append(then, ready(b))
			}
			rate := hammer(b, addr, "r"+randomHex(4), b.N, benchConns, then...)
			b.ReportMetric(rate, "req/s")
			b.Logf("%s, no journal: ratio to direct %.2f", name, rate/direct)
		})
	}
	floor("go-relay", startGoRelay(b, app), nil)
	if addr, err := startCRelay(b, app); err != nil {
		b.Logf("no C relay floor: %v", err)
	} else {
		floor("c-relay", addr, nil)
	}
	if r, err := startSockmapRelay(b, app); err != nil {
		b.Logf("no sockmap relay floor: %v", err)
	} else {
		floor("sockmap-relay", r.addr, func(b *testing.B) func() {
			n := r.relayed()
			return func() { r.waitRelayed(b, n+benchConns) }
		})
	}
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

// startGoRelay serves the least a relay in Go does in front of target:
// per client connection, one connection to target and two io.Copy loops,
// no framing, no journal. It returns its address.
func startGoRelay(t testing.TB, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				go func() {
					_, _ = io.Copy(u, c)
					_ = u.(*net.TCPConn).CloseWrite()
				}()
				_, _ = io.Copy(c, u)
			}()
		}
	}()
	return ln.Addr().String()
}

// startCRelay builds testdata/crelay with cc and runs it in front of
// target, returning its address.
func startCRelay(t testing.TB, target string) (string, error) {
	t.Helper()
	cc, err := exec.LookPath("cc")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(t.TempDir(), "crelay")
	if out, err := exec.Command(cc, "-O2", "-o", bin, "testdata/crelay/crelay.c").CombinedOutput(); err != nil {
		return "", fmt.Errorf("cc crelay.c: %v\n%s", err, out)
	}
	_, port, err := net.SplitHostPort(target)
	if err != nil {
		return "", err
	}
	cmd := exec.Command(bin, port)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("crelay did not print its port: %v", err)
	}
	return net.JoinHostPort("127.0.0.1", strings.TrimSpace(line)), nil
}

package peer

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// checkGoroutines fails the test if, after every later cleanup (transports
// closed), more goroutines run than when it was called. Register it first.
func checkGoroutines(t *testing.T) {
	t.Helper()
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= base {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutine leak: %d running, %d before the test\n%s", n, base, buf)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// logBuf collects log output for assertions.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuf) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitLog waits until the log contains all of subs.
func (l *logBuf) waitLog(t *testing.T, subs ...string) {
	t.Helper()
	waitFor(t, 5*time.Second, "log to contain "+strings.Join(subs, ", "), func() bool {
		s := l.String()
		for _, sub := range subs {
			if !strings.Contains(s, sub) {
				return false
			}
		}
		return true
	})
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type node struct {
	*Transport
	logs *logBuf
}

// newNode starts a Transport on ip (127.0.0.x) with a free port; mod may
// change its Config. It is closed when the test ends.
func newNode(t *testing.T, ip, name string, key Key, mod func(*Config)) node {
	t.Helper()
	logs := &logBuf{}
	cfg := DefaultConfig()
	cfg.BindAddr = ip + ":0"
	cfg.Key = key
	cfg.NodeName = name
	cfg.Logger = logs.logger()
	if mod != nil {
		mod(&cfg)
	}
	tr, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("close %s: %v", name, err)
		}
	})
	return node{tr, logs}
}

// rawClient dials addr with the key's TLS and the transport's ALPN, so a
// test can speak the wire protocol by hand.
func rawClient(t *testing.T, addr string, key Key) *tls.Conn {
	t.Helper()
	cfg := key.TLS()
	cfg.NextProtos = []string{alpn}
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

package demoapp

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// start serves a Server until the returned stop is called (or the test
// ends); stop returns Serve's error and may be called more than once.
func start(t *testing.T, dir, addr string) (*Server, func() error) {
	t.Helper()
	cfg := DefaultConfig(dir)
	cfg.Listen = addr
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	var once sync.Once
	var serveErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			serveErr = <-done
		})
		return serveErr
	}
	t.Cleanup(func() { stop() })
	return s, stop
}

func ask(t *testing.T, c net.Conn, r *bufio.Reader, line string) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(c, line); err != nil {
		t.Fatal(err)
	}
	ans, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(ans)
}

func TestProtocolAndLog(t *testing.T) {
	dir := t.TempDir()
	s, stop := start(t, dir, "127.0.0.1:0")
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	for _, step := range []struct{ in, want string }{
		{"PING", "PONG"},
		{"GET a", "(nil)"},
		{"SET a one", "OK"},
		{"GET a", "one"},
		{"INCR n", "1"},
		{"INCR n", "2"},
		{"STATS", "keys 2 writes 3"},
		{"SET a", "ERR usage: SET key value"},
		{"NOPE", "ERR unknown command NOPE"},
	} {
		if got := ask(t, c, r, step.in); got != step.want {
			t.Errorf("%s: got %q, want %q", step.in, got, step.want)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, LogName))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), "SET a one\nSET n 1\nSET n 2\n"; got != want {
		t.Errorf("log %q, want %q", got, want)
	}
	// A cold start replays the log.
	if err := stop(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	s2, _ := start(t, dir, "127.0.0.1:0")
	if got := s2.Do("GET n"); got != "2" {
		t.Errorf("after restart: n = %q, want 2", got)
	}
	if got := s2.Do("INCR n"); got != "3" {
		t.Errorf("after restart: INCR n = %q, want 3", got)
	}
}

func TestLoadSurvivesServerRestart(t *testing.T) {
	dir := t.TempDir()
	s, stopServer := start(t, dir, "127.0.0.1:0")
	addr := s.Addr()
	l := NewLoad(addr, 10*time.Millisecond)
	ctx, stop := context.WithCancel(context.Background())
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		l.Run(ctx)
	}()
	defer func() {
		stop()
		<-finished
	}()
	waitFor(t, "requests", func() bool { return l.Stats().OK >= 10 })
	if err := stopServer(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	waitFor(t, "a failure", func() bool { return l.Stats().Failed > 0 && !l.Stats().Connected })
	before := l.Stats().Counter
	// The server comes back on the same address (as a restored app does).
	start(t, dir, addr)
	waitFor(t, "requests again", func() bool { st := l.Stats(); return st.Connected && st.Counter > before+5 })
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

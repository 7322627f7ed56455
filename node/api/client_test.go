package api_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"doppel/node/api"
	"doppel/node/api/apitest"
)

func TestNoDaemon(t *testing.T) {
	sock := filepath.Join(socketDir(t), "missing", "doppel.sock")
	c := api.NewClient(sock)
	want := "no doppel daemon at " + sock + " (start one with: doppel node ..., or pass --socket)"
	calls := map[string]func() error{
		"Status":     func() error { _, err := c.Status(ctxT(t)); return err },
		"Nodes":      func() error { _, err := c.Nodes(ctxT(t)); return err },
		"Apps":       func() error { _, err := c.Apps(ctxT(t)); return err },
		"App":        func() error { _, err := c.App(ctxT(t), "a"); return err },
		"Epochs":     func() error { _, err := c.Epochs(ctxT(t), "a"); return err },
		"Run":        func() error { _, err := c.Run(ctxT(t), api.RunRequest{Name: "a", Args: []string{"x"}}); return err },
		"Checkpoint": func() error { _, err := c.Checkpoint(ctxT(t), "a"); return err },
		"Restore":    func() error { _, err := c.Restore(ctxT(t), "a", 1, true); return err },
		"Stop":       func() error { return c.Stop(ctxT(t), "a") },
		"Remove":     func() error { return c.Remove(ctxT(t), "a") },
		"Events":     func() error { _, err := c.Events(ctxT(t)); return err },
		"Subscribe":  func() error { _, err := c.Subscribe(ctxT(t)); return err },
	}
	for name, call := range calls {
		err := call()
		if !errors.Is(err, api.ErrNoDaemon) {
			t.Errorf("%s: %v, want ErrNoDaemon", name, err)
			continue
		}
		if err.Error() != want {
			t.Errorf("%s: message %q, want %q", name, err, want)
		}
		if !errors.Is(err, syscall.ENOENT) {
			t.Errorf("%s: %v does not wrap ENOENT", name, err)
		}
	}
	if c.Socket() != sock {
		t.Errorf("Socket() = %q", c.Socket())
	}
	if got := api.NewClient("").Socket(); got != api.DefaultSocket {
		t.Errorf("default socket %q", got)
	}
}

// countingBackend counts Status calls.
type countingBackend struct {
	*apitest.Fake
	status atomic.Int64
}

func (b *countingBackend) Status(ctx context.Context) (api.Status, error) {
	b.status.Add(1)
	return b.Fake.Status(ctx)
}

// TestWaitReady: WaitReady started before the daemon returns once it
// answers; it keeps polling while the daemon says unavailable.
func TestWaitReady(t *testing.T) {
	sock := filepath.Join(socketDir(t), "run", "doppel.sock")
	c := api.NewClient(sock)
	defer c.Close()
	ready := make(chan error, 1)
	go func() { ready <- c.WaitReady(ctxT(t)) }()

	b := &countingBackend{Fake: newFake()}
	b.Fail("Status", fmt.Errorf("raft starting: %w", api.ErrUnavailable))
	srv := api.NewServer(b, testConfig(t))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sock) }()
	t.Cleanup(func() {
		if err := srv.Shutdown(ctxT(t)); err != nil {
			t.Error(err)
		}
		if err := <-served; err != nil {
			t.Error(err)
		}
	})
	waitFor(t, "WaitReady to poll an unavailable daemon twice", func() bool { return b.status.Load() >= 2 })
	select {
	case err := <-ready:
		t.Fatalf("WaitReady returned %v while the daemon is unavailable", err)
	default:
	}
	b.Fail("Status", nil)
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("WaitReady: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("WaitReady did not return once the daemon was ready")
	}
}

func TestWaitReadyTimeout(t *testing.T) {
	c := api.NewClient(filepath.Join(socketDir(t), "doppel.sock"))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := c.WaitReady(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, api.ErrNoDaemon) {
		t.Fatalf("WaitReady without a daemon: %v, want DeadlineExceeded and ErrNoDaemon", err)
	}
	if !strings.Contains(err.Error(), "no doppel daemon at") {
		t.Errorf("message %q lacks the last error", err)
	}
}

func TestWaitReadyOtherError(t *testing.T) {
	f := newFake()
	d := startDaemon(t, f, testConfig(t))
	f.Fail("Status", errors.New("broken"))
	err := d.client.WaitReady(ctxT(t))
	wantAPIError(t, err, api.CodeInternal, nil, "broken")
}

package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"doppel/node/api"
	"doppel/node/api/apitest"
)

// testTimeout bounds every wait of a test.
const testTimeout = 10 * time.Second

// socketDir returns a short fresh directory (unix socket paths are limited
// to 107 bytes), removed at the end of the test.
func socketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dpapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// daemon is a Server serving a Backend on a socket in a fresh directory.
type daemon struct {
	srv    *api.Server
	socket string
	client *api.Client
	served chan error // Serve's result
}

func testConfig(t *testing.T) api.Config {
	cfg := api.DefaultConfig()
	cfg.Logger = testLogger(t)
	return cfg
}

// startDaemon serves b with cfg, waits until it answers, and shuts it down
// (checking that Shutdown and Serve return nil) at the end of the test.
func startDaemon(t *testing.T, b api.Backend, cfg api.Config) *daemon {
	t.Helper()
	sock := filepath.Join(socketDir(t), "run", "doppel.sock")
	d := &daemon{srv: api.NewServer(b, cfg), socket: sock, served: make(chan error, 1)}
	go func() { d.served <- d.srv.Serve(sock) }()
	d.client = api.NewClient(sock)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := d.client.WaitReady(ctx); err != nil {
		select {
		case serr := <-d.served:
			t.Fatalf("Serve: %v", serr)
		default:
		}
		t.Fatalf("WaitReady: %v", err)
	}
	t.Cleanup(func() { d.stop(t) })
	return d
}

// stop shuts the daemon down once; later calls do nothing.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	if d.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := d.srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	select {
	case err := <-d.served:
		if err != nil {
			t.Errorf("Serve returned %v after Shutdown, want nil", err)
		}
	case <-ctx.Done():
		t.Errorf("Serve did not return after Shutdown")
	}
	d.client.Close()
	d.srv = nil
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// rawClient is a plain HTTP client of the socket, for requests the typed
// client cannot make.
func rawClient(t *testing.T, sock string) *http.Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: testTimeout}
}

// rawDo makes a request and returns status, headers and body.
func rawDo(t *testing.T, sock, method, path, body string) (int, http.Header, []byte) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctxT(t), method, "http://doppel"+path, r)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := rawClient(t, sock).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// wantAPIError checks that err is an *api.Error with code, wrapping
// sentinel (nil for internal), whose message contains msg.
func wantAPIError(t *testing.T, err error, code string, sentinel error, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %s", code)
	}
	var ae *api.Error
	if !errors.As(err, &ae) {
		t.Fatalf("error %v (%T) is not an *api.Error", err, err)
	}
	if ae.Code != code {
		t.Errorf("code %q, want %q (error: %v)", ae.Code, code, err)
	}
	if sentinel != nil && !errors.Is(err, sentinel) {
		t.Errorf("error %v does not wrap %v", err, sentinel)
	}
	for _, s := range []error{api.ErrNotFound, api.ErrBadRequest, api.ErrConflict, api.ErrUnavailable} {
		if s != sentinel && errors.Is(err, s) {
			t.Errorf("error %v wraps %v too", err, s)
		}
	}
	if !strings.Contains(err.Error(), msg) {
		t.Errorf("message %q does not contain %q", err.Error(), msg)
	}
}

// wantErrorBody checks a raw error answer: status, code, and a one-line
// message containing msg.
func wantErrorBody(t *testing.T, status int, body []byte, wantStatus int, code, msg string) {
	t.Helper()
	if status != wantStatus {
		t.Errorf("status %d, want %d (body %s)", status, wantStatus, body)
	}
	var e struct {
		Error string `json:"error"`
		Code  string `json:"code"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	if e.Code != code {
		t.Errorf("code %q, want %q (body %s)", e.Code, code, body)
	}
	if strings.ContainsAny(e.Error, "\r\n") {
		t.Errorf("message %q spans lines", e.Error)
	}
	if !strings.Contains(e.Error, msg) {
		t.Errorf("message %q does not contain %q", e.Error, msg)
	}
}

// newFake returns a fake backend of node "n1".
func newFake() *apitest.Fake { return apitest.NewFake("n1") }

// waitFor polls cond until it holds or the test's deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

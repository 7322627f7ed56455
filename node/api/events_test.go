package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"doppel/node/api"
)

// next calls w.Next in a goroutine so that a stuck stream fails the test
// instead of hanging it.
func next(t *testing.T, w *api.Watcher) (api.Event, error) {
	t.Helper()
	type result struct {
		ev  api.Event
		err error
	}
	ch := make(chan result, 1)
	go func() {
		ev, err := w.Next()
		ch <- result{ev, err}
	}()
	select {
	case r := <-ch:
		return r.ev, r.err
	case <-time.After(testTimeout):
		w.Close()
		t.Fatal("Next blocked")
		return api.Event{}, nil
	}
}

func watch(t *testing.T, c *api.Client, ctx context.Context) *api.Watcher {
	t.Helper()
	w, err := c.Events(ctx)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

func TestEventsInOrder(t *testing.T) {
	f := newFake()
	d := startDaemon(t, f, testConfig(t))
	w := watch(t, d.client, ctxT(t))
	at := time.Date(2025, 1, 2, 3, 4, 5, 6000, time.UTC)
	var sent []api.Event
	for i := range 200 {
		sent = append(sent, f.Publish(api.Event{
			Time: at, Kind: api.KindPhase, Node: "n1", App: "a", Epoch: uint64(i), Phase: "PRM",
			End: i%2 == 1, DurationMs: 1.5, Message: fmt.Sprintf("event %d", i), Fields: map[string]any{"pages": float64(i)},
		}))
	}
	for i, want := range sent {
		got, err := next(t, w)
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("event %d:\n got %+v\nwant %+v", i, got, want)
		}
	}
}

// TestEventsHeartbeat checks that the stream outlives several heartbeat
// intervals (longer than the write timeout, which each write renews), that
// Next skips the heartbeats, and the heartbeat's wire form.
func TestEventsHeartbeat(t *testing.T) {
	cfg := testConfig(t)
	cfg.Heartbeat = 100 * time.Millisecond
	cfg.WriteTimeout = 50 * time.Millisecond
	f := newFake()
	d := startDaemon(t, f, cfg)
	w := watch(t, d.client, ctxT(t))
	e1 := f.Publish(api.Event{Kind: api.KindApp, App: "a", Message: "one"})
	if got, err := next(t, w); err != nil || got.Seq != e1.Seq {
		t.Fatalf("first event: %+v, %v", got, err)
	}
	type result struct {
		ev  api.Event
		err error
	}
	ch := make(chan result, 1)
	go func() {
		ev, err := w.Next()
		ch <- result{ev, err}
	}()
	waitFor(t, "3 heartbeats", func() bool { return w.Heartbeats() >= 3 })
	select {
	case r := <-ch:
		t.Fatalf("Next returned %+v, %v before any event", r.ev, r.err)
	default:
	}
	e2 := f.Publish(api.Event{Kind: api.KindApp, App: "a", Message: "two"})
	select {
	case r := <-ch:
		if r.err != nil || r.ev.Seq != e2.Seq || r.ev.Message != "two" {
			t.Fatalf("after heartbeats: %+v, %v, want event two", r.ev, r.err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Next did not return the event after heartbeats")
	}

	// The wire form, read by a plain HTTP client.
	req, _ := http.NewRequestWithContext(ctxT(t), "GET", "http://doppel/v1/events", nil)
	resp, err := rawClient(t, d.socket).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Errorf("Content-Type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	if !sc.Scan() {
		t.Fatalf("no line: %v", sc.Err())
	}
	var hb map[string]any
	if err := json.Unmarshal(sc.Bytes(), &hb); err != nil {
		t.Fatalf("heartbeat line %q: %v", sc.Bytes(), err)
	}
	if len(hb) != 2 || hb["kind"] != "heartbeat" {
		t.Errorf("heartbeat line %s, want {\"time\":...,\"kind\":\"heartbeat\"}", sc.Bytes())
	}
	if ts, _ := hb["time"].(string); ts == "" {
		t.Errorf("heartbeat without time: %s", sc.Bytes())
	} else if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
		t.Errorf("heartbeat time: %v", err)
	}
}

func TestEventsTwoWatchers(t *testing.T) {
	f := newFake()
	d := startDaemon(t, f, testConfig(t))
	w1 := watch(t, d.client, ctxT(t))
	w2 := watch(t, api.NewClient(d.socket), ctxT(t))
	if n := f.Subscribers(); n != 2 {
		t.Fatalf("%d subscribers after two Events calls, want 2", n)
	}
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, w := range []*api.Watcher{w1, w2} {
		wg.Go(func() {
			for i := range n {
				ev, err := w.Next()
				if err != nil {
					errs <- fmt.Errorf("event %d: %w", i, err)
					return
				}
				if ev.Seq != uint64(i+1) {
					errs <- fmt.Errorf("event %d has seq %d", i, ev.Seq)
					return
				}
			}
		})
	}
	for i := range n {
		f.Publish(api.Event{Kind: api.KindEpoch, App: "a", Epoch: uint64(i)})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("watchers did not receive every event")
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Closing one watcher leaves the other streaming.
	w1.Close()
	waitFor(t, "one subscriber", func() bool { return f.Subscribers() == 1 })
	e := f.Publish(api.Event{Kind: api.KindApp, App: "b"})
	if got, err := next(t, w2); err != nil || got.Seq != e.Seq {
		t.Errorf("second watcher after the first closed: %+v, %v", got, err)
	}
}

func TestEventsEvents(t *testing.T) {
	f := newFake()
	d := startDaemon(t, f, testConfig(t))
	w := watch(t, d.client, ctxT(t))
	run(t, d.client, "a")
	if _, err := d.client.Checkpoint(ctxT(t), "a"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct{ kind, msg string }{{api.KindApp, "started"}, {api.KindEpoch, ""}} {
		ev, err := next(t, w)
		if err != nil || ev.Kind != want.kind || ev.App != "a" || ev.Message != want.msg {
			t.Errorf("event %+v, %v; want kind %s message %q", ev, err, want.kind, want.msg)
		}
	}
}

func TestWatcherClose(t *testing.T) {
	f := newFake()
	d := startDaemon(t, f, testConfig(t))
	w := watch(t, d.client, ctxT(t))
	ch := make(chan error, 1)
	go func() {
		_, err := w.Next()
		ch <- err
	}()
	w.Close()
	select {
	case err := <-ch:
		if !errors.Is(err, api.ErrClosed) {
			t.Errorf("Next after Close: %v, want ErrClosed", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Close did not end Next")
	}
	if _, err := w.Next(); !errors.Is(err, api.ErrClosed) {
		t.Errorf("second Next after Close: %v, want ErrClosed", err)
	}
	w.Close()
	waitFor(t, "the server to drop the subscription", func() bool { return f.Subscribers() == 0 })
}

func TestWatcherContext(t *testing.T) {
	f := newFake()
	d := startDaemon(t, f, testConfig(t))
	ctx, cancel := context.WithCancel(ctxT(t))
	w := watch(t, d.client, ctx)
	cancel()
	_, err := next(t, w)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Next after cancel: %v, want context.Canceled", err)
	}
	waitFor(t, "the server to drop the subscription", func() bool { return f.Subscribers() == 0 })
}

func TestEventsBackendEnds(t *testing.T) {
	f := newFake()
	d := startDaemon(t, f, testConfig(t))
	w := watch(t, d.client, ctxT(t))
	e := f.Publish(api.Event{Kind: api.KindApp})
	f.EndSubscriptions()
	if got, err := next(t, w); err != nil || got.Seq != e.Seq {
		t.Fatalf("event before the end: %+v, %v", got, err)
	}
	if _, err := next(t, w); err != io.EOF {
		t.Errorf("Next at the end: %v, want io.EOF", err)
	}
}

func TestEventsSubscribeError(t *testing.T) {
	f := newFake()
	d := startDaemon(t, f, testConfig(t))
	f.Fail("Subscribe", fmt.Errorf("events not ready: %w", api.ErrUnavailable))
	_, err := d.client.Events(ctxT(t))
	wantAPIError(t, err, api.CodeUnavailable, api.ErrUnavailable, "events not ready")
}

// TestShutdownEndsWatchers: Shutdown with watchers open returns promptly,
// their Next returns io.EOF, Serve returns nil and the socket is gone.
func TestShutdownEndsWatchers(t *testing.T) {
	cfg := testConfig(t)
	cfg.Heartbeat = time.Hour // nothing but the shutdown ends the streams
	f := newFake()
	d := startDaemon(t, f, cfg)
	w1 := watch(t, d.client, ctxT(t))
	w2 := watch(t, d.client, ctxT(t))
	ch := make(chan error, 1)
	go func() {
		_, err := w1.Next()
		ch <- err
	}()
	start := time.Now()
	d.stop(t)
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("Shutdown took %v with watchers open", el)
	}
	select {
	case err := <-ch:
		if err != io.EOF {
			t.Errorf("blocked Next after Shutdown: %v, want io.EOF", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Shutdown did not end the blocked Next")
	}
	if _, err := next(t, w2); err != io.EOF {
		t.Errorf("Next after Shutdown: %v, want io.EOF", err)
	}
	if _, err := os.Lstat(d.socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after Shutdown: %v, want it removed", err)
	}
	_, err := api.NewClient(d.socket).Status(ctxT(t))
	if !errors.Is(err, api.ErrNoDaemon) {
		t.Errorf("Status after Shutdown: %v, want ErrNoDaemon", err)
	}
	waitFor(t, "subscriptions to end", func() bool { return f.Subscribers() == 0 })
}

// TestClientSubscribe: a Client is a Backend; its channel carries the events
// and closes when ctx ends.
func TestClientSubscribe(t *testing.T) {
	f := newFake()
	d := startDaemon(t, f, testConfig(t))
	ctx, cancel := context.WithCancel(ctxT(t))
	var b api.Backend = d.client
	ch, err := b.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e := f.Publish(api.Event{Kind: api.KindMember, Node: "n2"})
	select {
	case got := <-ch:
		if got.Seq != e.Seq || got.Node != "n2" {
			t.Errorf("got %+v, want %+v", got, e)
		}
	case <-time.After(testTimeout):
		t.Fatal("no event")
	}
	cancel()
	deadline := time.After(testTimeout)
	for closed := false; !closed; {
		select {
		case _, ok := <-ch:
			closed = !ok
		case <-deadline:
			t.Fatal("channel not closed after cancel")
		}
	}
	waitFor(t, "the server to drop the subscription", func() bool { return f.Subscribers() == 0 })
}

// fakeStream serves one raw HTTP answer on a unix socket: the headers of an
// event stream, then body, then it closes the connection.
func fakeStream(t *testing.T, body string) string {
	t.Helper()
	sock := filepath.Join(socketDir(t), "doppel.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for { // the request's headers
			line, err := br.ReadString('\n')
			if err != nil || line == "\r\n" {
				break
			}
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
		io.WriteString(c, body)
	}()
	return sock
}

func chunk(s string) string { return fmt.Sprintf("%x\r\n%s\r\n", len(s), s) }

// TestWatcherCut: a stream cut without its final chunk (the daemon died) is
// an error wrapping ErrUnavailable, not io.EOF; so is a line that is not an
// event. Heartbeats, blank lines and unknown members are skipped.
func TestWatcherCut(t *testing.T) {
	lines := chunk(`{"kind":"heartbeat","time":"2025-01-01T00:00:00Z"}`+"\n\n") +
		chunk(`{"seq":1,"time":"2025-01-01T00:00:00Z","kind":"app","app":"a","from_the_future":true}`+"\n")
	for _, tc := range []struct {
		name, tail string
		wantEOF    bool
	}{
		{"clean end", "0\r\n\r\n", true},
		{"cut", chunk(`{"seq":2,"ki`), false},
		{"garbage", chunk("not json\n") + "0\r\n\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := api.NewClient(fakeStream(t, lines+tc.tail))
			defer c.Close()
			w := watch(t, c, ctxT(t))
			ev, err := next(t, w)
			if err != nil || ev.Seq != 1 || ev.App != "a" {
				t.Fatalf("first event: %+v, %v", ev, err)
			}
			if w.Heartbeats() != 1 {
				t.Errorf("Heartbeats() = %d, want 1", w.Heartbeats())
			}
			_, err = next(t, w)
			if tc.wantEOF {
				if err != io.EOF {
					t.Errorf("Next: %v, want io.EOF", err)
				}
				return
			}
			if !errors.Is(err, api.ErrUnavailable) || err == io.EOF {
				t.Errorf("Next: %v, want ErrUnavailable", err)
			}
			if _, err2 := w.Next(); err2 != err {
				t.Errorf("error not sticky: %v then %v", err, err2)
			}
		})
	}
}

package api

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// maxEventLine bounds one line of the event stream on the client.
const maxEventLine = 8 << 20

// serveEvents streams the backend's events as NDJSON: one Event per line,
// flushed at once, and a {"kind":"heartbeat","time":...} line every
// Heartbeat. The backend is subscribed before the answer's headers are
// sent, so every event emitted after the client has the headers reaches it.
// The stream ends (cleanly, with the final chunk) when the server shuts
// down or the backend closes its channel, and when the client goes away.
func (s *Server) serveEvents(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	events, err := s.backend.Subscribe(ctx)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	s.log.Debug("event stream opened")
	heartbeat := time.NewTicker(s.cfg.Heartbeat)
	defer heartbeat.Stop()
	write := func(ev Event) bool {
		b, err := json.Marshal(ev)
		if err != nil {
			s.log.Error("encode event", "err", err, "app", ev.App)
			return true
		}
		_ = rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		if _, err := w.Write(append(b, '\n')); err != nil {
			s.log.Debug("event stream cut", "err", err)
			return false
		}
		if err := rc.Flush(); err != nil {
			s.log.Debug("event stream cut", "err", err)
			return false
		}
		return true
	}
	for {
		select {
		case <-s.closing:
			s.log.Debug("event stream ended by shutdown")
			return
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				s.log.Debug("event stream ended by the backend")
				return
			}
			if !write(ev) {
				return
			}
		case now := <-heartbeat.C:
			if !write(Event{Kind: KindHeartbeat, Time: now}) {
				return
			}
		}
	}
}

// Watcher reads the event stream of a daemon. Next is not safe for
// concurrent use with itself; Close may be called from any goroutine, at
// any time, more than once.
type Watcher struct {
	socket     string
	ctx        context.Context
	cancel     context.CancelFunc
	body       io.ReadCloser
	scan       *bufio.Scanner
	heartbeats atomic.Uint64
	closed     atomic.Bool
	closeOnce  sync.Once
	err        error // sticky error of Next
}

// Next blocks until the next event and returns it. Heartbeat lines are
// skipped (Heartbeats counts them), as are blank lines; members a newer
// daemon adds are ignored. Errors are final, every later call returns the
// same one:
//
//   - io.EOF: the daemon ended the stream (it shut down or its backend
//     stopped);
//   - ErrClosed: Close was called;
//   - the context's error (wrapped) when the ctx given to Events ended;
//   - an error wrapping ErrUnavailable when the connection was cut or a
//     line is not an event.
func (w *Watcher) Next() (Event, error) {
	if w.err != nil {
		return Event{}, w.err
	}
	for w.scan.Scan() {
		line := w.scan.Bytes()
		if len(line) == 0 || (len(line) == 1 && line[0] == '\r') {
			continue
		}
		var ev Event
		if err := json.Unmarshal(line, &ev); err != nil {
			w.err = fmt.Errorf("event stream from %s: bad line: %w: %w", w.socket, ErrUnavailable, err)
			return Event{}, w.err
		}
		if ev.Kind == KindHeartbeat {
			w.heartbeats.Add(1)
			continue
		}
		return ev, nil
	}
	err := w.scan.Err()
	switch {
	case w.closed.Load():
		w.err = ErrClosed
	case w.ctx.Err() != nil:
		w.err = fmt.Errorf("event stream from %s: %w", w.socket, context.Cause(w.ctx))
	case err == nil:
		w.err = io.EOF
	default:
		w.err = fmt.Errorf("event stream from %s cut: %w: %w", w.socket, ErrUnavailable, err)
	}
	return Event{}, w.err
}

// Heartbeats is the number of heartbeat lines Next has skipped: a sign of
// life of the daemon even when nothing happens.
func (w *Watcher) Heartbeats() uint64 { return w.heartbeats.Load() }

// Close ends the stream; a Next blocked in another goroutine returns
// ErrClosed.
func (w *Watcher) Close() error {
	w.closeOnce.Do(func() {
		w.closed.Store(true)
		w.cancel()
		w.body.Close()
	})
	return nil
}

// Events opens the daemon's event stream. Every event the daemon emits after
// Events returns is delivered by Next, in order. The stream lives until ctx
// ends, Close is called or the daemon ends it; the caller must Close the
// watcher.
func (c *Client) Events(ctx context.Context) (*Watcher, error) {
	sctx, cancel := context.WithCancel(ctx)
	resp, err := c.send(sctx, http.MethodGet, "/v1/events", nil, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer cancel()
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	scan := bufio.NewScanner(resp.Body)
	scan.Buffer(make([]byte, 0, 64<<10), maxEventLine)
	return &Watcher{socket: c.socket, ctx: sctx, cancel: cancel, body: resp.Body, scan: scan}, nil
}

// Subscribe is Events as a channel, so that a Client is a Backend (a proxy
// or a test double of one). The channel closes when ctx ends or the stream
// ends for any reason; the reason is lost.
func (c *Client) Subscribe(ctx context.Context) (<-chan Event, error) {
	w, err := c.Events(ctx)
	if err != nil {
		return nil, err
	}
	ch := make(chan Event, 64)
	go func() {
		defer close(ch)
		defer w.Close()
		for {
			ev, err := w.Next()
			if err != nil {
				return
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

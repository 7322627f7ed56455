package peer

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"syscall"
	"time"
)

// Handler serves one RPC method. ctx is cancelled when the caller goes away
// (its connection closes) or the Transport closes; from is the caller's node
// name; req is the request's JSON (null when the caller sent nil). The result
// is JSON-encoded into the response; a non-nil error is returned to the
// caller as a *RemoteError carrying err.Error() and the code set with
// WithCode, if any. Handlers run concurrently, one per connection.
type Handler func(ctx context.Context, from string, req json.RawMessage) (any, error)

// Errors of RPCs; returned errors wrap them.
var (
	// ErrUnknownMethod: the peer has no handler for the method.
	ErrUnknownMethod = errors.New("unknown RPC method")
	// ErrUnknownKind: the peer has no stream handler for the kind.
	ErrUnknownKind = errors.New("unknown stream kind")
	// ErrRemote: the peer's handler returned an error (see RemoteError).
	ErrRemote = errors.New("remote error")
)

// RemoteError is an error returned by a peer: by its handler (Code is what
// the handler set with WithCode, or empty), or by its RPC layer (Code
// "unknown_method", "bad_request" or "internal"). It wraps ErrRemote, and
// ErrUnknownMethod for an unknown method.
type RemoteError struct {
	Addr, Method string
	Code         string
	Message      string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("peer %s: %s: %s", e.Addr, e.Method, e.Message)
}

// Is makes errors.Is(err, ErrRemote) true, and errors.Is(err,
// ErrUnknownMethod) for an unknown method.
func (e *RemoteError) Is(target error) bool {
	return target == ErrRemote || (target == ErrUnknownMethod && e.Code == codeUnknownMethod)
}

// WithCode marks a handler's error with a short machine-readable code (for
// example "not_leader") that the caller finds in RemoteError.Code.
func WithCode(code string, err error) error {
	if err == nil {
		return nil
	}
	return &codedError{code: code, err: err}
}

type codedError struct {
	code string
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

// Handle registers h for method, replacing any earlier handler.
func (t *Transport) Handle(method string, h Handler) {
	t.mu.Lock()
	t.handlers[method] = h
	t.mu.Unlock()
}

// Call sends req (JSON-encoded; nil sends null) to method on the peer at
// addr and decodes the answer into resp (nil discards it). It returns when
// the answer arrives, ctx ends (ctx.Err() is wrapped; the connection is
// dropped so the peer's handler sees its context cancelled) or the
// connection fails. Connections are pooled per address and reused one call
// at a time. A call that fails on a reused connection because the peer had
// just closed it (EOF or reset before any answer) is retried once on a new
// connection; a request can therefore reach a peer twice only if the peer
// closed the connection after reading it and before answering, which a live
// peer does only while closing its Transport.
func (t *Transport) Call(ctx context.Context, addr, method string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("peer: encode %s request: %w", method, err)
	}
	msg, err := json.Marshal(rpcRequest{Method: method, Body: body})
	if err != nil {
		return fmt.Errorf("peer: encode %s request: %w", method, err)
	}
	if len(msg) > MaxMessage {
		return fmt.Errorf("peer: %s request: %w: %d bytes, limit %d", method, ErrTooLarge, len(msg), MaxMessage)
	}
	for attempt := 0; ; attempt++ {
		rc, reused, err := t.getConn(ctx, addr)
		if err != nil {
			return err
		}
		out, reusable, err := rc.roundTrip(ctx, msg)
		if err != nil {
			rc.close()
			if ctx.Err() != nil {
				return fmt.Errorf("peer: call %s on %s: %w", method, addr, ctx.Err())
			}
			if reused && attempt == 0 && errors.Is(err, errStale) {
				continue
			}
			if t.ctx.Err() != nil {
				return fmt.Errorf("peer: call %s on %s: %w", method, addr, ErrClosed)
			}
			return fmt.Errorf("peer: call %s on %s: %w", method, addr, err)
		}
		if reusable {
			t.putConn(rc)
		} else {
			rc.close()
		}
		var r rpcResponse
		if err := json.Unmarshal(out, &r); err != nil {
			return fmt.Errorf("peer: call %s on %s: %w: bad response: %w", method, addr, ErrProtocol, err)
		}
		if r.Err != "" || r.Code != "" {
			return &RemoteError{Addr: addr, Method: method, Code: r.Code, Message: r.Err}
		}
		if resp == nil {
			return nil
		}
		if err := json.Unmarshal(r.Body, resp); err != nil {
			return fmt.Errorf("peer: call %s on %s: decode response: %w", method, addr, err)
		}
		return nil
	}
}

// errStale marks a reused connection the peer had closed before answering.
var errStale = errors.New("connection closed by peer before answering")

// rpcConn is a client RPC connection.
type rpcConn struct {
	t        *Transport
	addr     string
	c        *tls.Conn
	raw      net.Conn
	lastUsed time.Time
	timer    *time.Timer // closes the connection when it idles in the pool
}

func (rc *rpcConn) close() {
	rc.t.untrack(rc.raw)
	rc.raw.Close()
}

// roundTrip writes one request and reads its response.
func (rc *rpcConn) roundTrip(ctx context.Context, msg []byte) (out []byte, reusable bool, err error) {
	// Only ctx ends the wait, so that an expired ctx is always reported
	// as ctx.Err() rather than as a connection timeout.
	rc.raw.SetDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { rc.raw.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		// If ctx ended meanwhile its func may still set a deadline on
		// the connection: never reuse it then.
		reusable = stop() && err == nil
	}()
	if err := writeFrame(rc.c, frameRequest, msg); err != nil {
		if isConnGone(err) {
			return nil, false, fmt.Errorf("%w: %w", errStale, err)
		}
		return nil, false, err
	}
	typ, out, err := readFrame(rc.c, MaxMessage)
	if err != nil {
		// io.EOF (not ErrUnexpectedEOF) or a reset: not one byte of the
		// answer arrived.
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			return nil, false, fmt.Errorf("%w: %w", errStale, err)
		}
		return nil, false, describeReadErr(err)
	}
	if typ != frameResponse {
		return nil, false, fmt.Errorf("%w: got frame type %d, want a response", ErrProtocol, typ)
	}
	return out, true, nil
}

// maxIdlePerAddr bounds the pooled connections to one peer.
const maxIdlePerAddr = 4

// getConn takes a pooled connection to addr or dials a new one.
func (t *Transport) getConn(ctx context.Context, addr string) (*rpcConn, bool, error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, false, ErrClosed
	}
	list := t.idle[addr]
	for len(list) > 0 {
		rc := list[len(list)-1]
		list = list[:len(list)-1]
		t.idle[addr] = list
		if !rc.timer.Stop() {
			continue // its timer is closing it
		}
		if time.Since(rc.lastUsed) > t.cfg.IdleTimeout/2 {
			go rc.close()
			continue
		}
		t.mu.Unlock()
		return rc, true, nil
	}
	t.mu.Unlock()
	c, raw, _, err := t.dial(ctx, addr, hello{Type: purposeRPC})
	if err != nil {
		return nil, false, err
	}
	return &rpcConn{t: t, addr: addr, c: c, raw: raw}, false, nil
}

// putConn returns a healthy connection to the pool.
func (t *Transport) putConn(rc *rpcConn) {
	rc.raw.SetDeadline(time.Time{})
	rc.lastUsed = time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || len(t.idle[rc.addr]) >= maxIdlePerAddr {
		go rc.close()
		return
	}
	rc.timer = time.AfterFunc(t.cfg.IdleTimeout/2, func() { t.dropIdle(rc) })
	t.idle[rc.addr] = append(t.idle[rc.addr], rc)
}

// dropIdle removes rc from the pool and closes it.
func (t *Transport) dropIdle(rc *rpcConn) {
	t.mu.Lock()
	list := t.idle[rc.addr]
	for i, x := range list {
		if x == rc {
			t.idle[rc.addr] = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(t.idle[rc.addr]) == 0 {
		delete(t.idle, rc.addr)
	}
	t.mu.Unlock()
	rc.close()
}

// serveRPC serves requests on one connection, one at a time, until the
// caller closes it, it idles for IdleTimeout or the Transport closes.
func (t *Transport) serveRPC(c *tls.Conn, from string, log *slog.Logger) {
	ctx, cancel := context.WithCancel(t.ctx)
	defer cancel()
	reqs := make(chan []byte)
	readerDone := make(chan struct{})
	// The reader notices the caller leaving while a handler runs and
	// cancels the handler's context.
	go func() {
		defer close(readerDone)
		defer close(reqs)
		defer cancel()
		for {
			typ, body, err := readFrame(c, MaxMessage)
			if err != nil {
				if !isConnGone(err) && !isTimeout(err) && ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
					log.Warn("peer RPC read failed", "err", err)
				}
				return
			}
			if typ != frameRequest {
				log.Warn("peer RPC protocol error", "err", fmt.Sprintf("frame type %d, want a request", typ))
				return
			}
			c.SetReadDeadline(time.Time{})
			select {
			case reqs <- body:
			case <-ctx.Done():
				return
			}
		}
	}()
	c.SetReadDeadline(time.Now().Add(t.cfg.IdleTimeout))
	for body := range reqs {
		resp := t.dispatch(ctx, from, body, log)
		c.SetWriteDeadline(time.Now().Add(t.cfg.IdleTimeout))
		if err := writeJSON(c, frameResponse, resp); err != nil {
			if ctx.Err() == nil {
				log.Warn("peer RPC answer failed", "err", err)
			}
			break
		}
		c.SetReadDeadline(time.Now().Add(t.cfg.IdleTimeout))
	}
	// Unblock the reader if the loop ended on a write error.
	c.SetReadDeadline(time.Unix(1, 0))
	<-readerDone
}

// dispatch runs the handler of one request and builds its response.
func (t *Transport) dispatch(ctx context.Context, from string, body []byte, log *slog.Logger) (resp rpcResponse) {
	var req rpcRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return rpcResponse{Err: fmt.Sprintf("bad request: %v", err), Code: codeBadRequest}
	}
	t.mu.Lock()
	h := t.handlers[req.Method]
	t.mu.Unlock()
	if h == nil {
		return rpcResponse{Err: fmt.Sprintf("node %s has no RPC method %q", t.cfg.NodeName, req.Method), Code: codeUnknownMethod}
	}
	if len(req.Body) == 0 {
		req.Body = json.RawMessage("null")
	}
	defer func() {
		if r := recover(); r != nil {
			log.Error("peer RPC handler panicked", "method", req.Method, "err", fmt.Sprint(r))
			resp = rpcResponse{Err: fmt.Sprintf("handler of %s failed: %v", req.Method, r), Code: codeInternal}
		}
	}()
	out, err := h(ctx, from, req.Body)
	if err != nil {
		var ce *codedError
		code := ""
		if errors.As(err, &ce) {
			code = ce.code
		}
		return rpcResponse{Err: err.Error(), Code: code}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return rpcResponse{Err: fmt.Sprintf("encode result of %s: %v", req.Method, err), Code: codeInternal}
	}
	if len(b) > MaxMessage-64 {
		return rpcResponse{Err: fmt.Sprintf("result of %s is %d bytes, limit %d", req.Method, len(b), MaxMessage), Code: codeInternal}
	}
	return rpcResponse{Body: b}
}

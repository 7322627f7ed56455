package peer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Hello describes a stream: what the opening node said when it opened it.
type Hello struct {
	// Kind selects the handler (e.g. "epoch").
	Kind string
	// From is the name of the node that opened the stream.
	From string
	// App is the application the stream is about; may be empty.
	App string
	// Proto is the peer protocol version of the opener (ProtoVersion).
	Proto int
}

// StreamHandler serves streams of one kind. It owns s until it returns; the
// Transport then closes s (Close, not CloseWrite: a handler that wants its
// peer to see a clean end calls CloseWrite itself). ctx is cancelled when s
// is closed or the Transport closes. Handlers run concurrently.
type StreamHandler func(ctx context.Context, s *Stream)

// Errors of streams; returned errors wrap them.
var (
	// ErrStreamCut: the connection ended before the peer ended the stream
	// with CloseWrite (the peer closed, crashed, or the network failed).
	ErrStreamCut = errors.New("stream cut before its end")
	// ErrStreamIdle: the peer sent nothing, not even a keepalive, or read
	// nothing of what this side wrote, for IdleTimeout.
	ErrStreamIdle = errors.New("stream peer idle")
)

// maxChunk is the largest data frame payload a stream writes.
const maxChunk = 64 << 10

// Stream is a bidirectional byte stream to a peer, carried by its own TLS
// connection. It behaves like a net.Conn with two additions:
//
//   - CloseWrite ends this side of the stream; the peer's Read then returns
//     io.EOF once it has read everything. io.EOF from Read therefore means
//     the peer ended the stream on purpose: a connection that ends any other
//     way makes Read return an error wrapping ErrStreamCut, so a truncated
//     transfer is never mistaken for a complete one.
//   - While open, a Stream sends a keepalive every IdleTimeout/3 when it has
//     written nothing else, and its Read fails with ErrStreamIdle when the
//     peer sent nothing for IdleTimeout; a Write that cannot hand its bytes
//     to the peer for IdleTimeout fails the same way.
//
// Writes pass through the Transport's shared rate limiter. One goroutine may
// Read while another Writes; concurrent Writes are serialised. After a Write
// error (including a write deadline) the write side is unusable, as with
// crypto/tls; a read deadline error is not sticky.
type Stream struct {
	t     *Transport
	c     *tls.Conn
	raw   net.Conn
	hello Hello
	peer  string

	ctx    context.Context // cancelled by Close or Transport.Close
	cancel context.CancelFunc

	dlmu   sync.Mutex
	readDL time.Time
	wrDL   time.Time

	rmu    sync.Mutex
	hdr    [headerSize]byte
	hdrN   int
	remain int
	rerr   error

	wmu       sync.Mutex
	wbuf      []byte
	werr      error
	wclosed   bool
	lastWrite atomic.Int64 // unix nanoseconds

	kaMu sync.Mutex
	ka   *time.Timer // keepalive; nil once stopped

	closeOnce sync.Once
	closed    atomic.Bool
}

var _ net.Conn = (*Stream)(nil)

// HandleStream registers h for streams of kind, replacing any earlier
// handler. A peer opening a stream of a kind without handler gets an error
// wrapping ErrUnknownKind.
func (t *Transport) HandleStream(kind string, h StreamHandler) {
	t.mu.Lock()
	t.streams[kind] = h
	t.mu.Unlock()
}

// OpenStream opens a stream of kind about app to the peer at addr. ctx bounds
// only the opening (dial, handshake, hello); the stream lives until Close or
// Transport.Close.
func (t *Transport) OpenStream(ctx context.Context, addr, kind, app string) (*Stream, error) {
	c, raw, w, err := t.dial(ctx, addr, hello{Type: purposeStream, Kind: kind, App: app})
	if err != nil {
		return nil, err
	}
	return t.newStream(c, raw, Hello{Kind: kind, From: t.cfg.NodeName, App: app, Proto: ProtoVersion}, w.From), nil
}

func (t *Transport) newStream(c *tls.Conn, raw net.Conn, h Hello, peer string) *Stream {
	ctx, cancel := context.WithCancel(t.ctx)
	s := &Stream{t: t, c: c, raw: raw, hello: h, peer: peer, ctx: ctx, cancel: cancel}
	s.lastWrite.Store(time.Now().UnixNano())
	s.kaMu.Lock()
	s.ka = time.AfterFunc(t.cfg.IdleTimeout/3, s.keepalive)
	s.kaMu.Unlock()
	return s
}

// Hello is what the opener said: kind, opener node, app, protocol version.
func (s *Stream) Hello() Hello { return s.hello }

// Peer is the name of the node at the other end.
func (s *Stream) Peer() string { return s.peer }

// LocalAddr is the local network address.
func (s *Stream) LocalAddr() net.Addr { return s.raw.LocalAddr() }

// RemoteAddr is the peer's network address.
func (s *Stream) RemoteAddr() net.Addr { return s.raw.RemoteAddr() }

// SetDeadline sets both the read and the write deadline.
func (s *Stream) SetDeadline(t time.Time) error {
	s.SetReadDeadline(t)
	return s.SetWriteDeadline(t)
}

// SetReadDeadline sets the deadline of pending and future Reads; zero means
// none (the idle timeout still applies). Expiry returns an error wrapping
// os.ErrDeadlineExceeded.
func (s *Stream) SetReadDeadline(t time.Time) error {
	s.dlmu.Lock()
	s.readDL = t
	s.dlmu.Unlock()
	return s.raw.SetReadDeadline(s.effective(t))
}

// SetWriteDeadline sets the deadline of pending and future Writes,
// including their wait for rate-limit tokens; zero means none.
func (s *Stream) SetWriteDeadline(t time.Time) error {
	s.dlmu.Lock()
	s.wrDL = t
	s.dlmu.Unlock()
	return s.raw.SetWriteDeadline(s.effective(t))
}

func (s *Stream) deadlines() (read, write time.Time) {
	s.dlmu.Lock()
	defer s.dlmu.Unlock()
	return s.readDL, s.wrDL
}

// effective is the earlier of the user deadline and the idle deadline.
func (s *Stream) effective(user time.Time) time.Time {
	idle := time.Now().Add(s.t.cfg.IdleTimeout)
	if !user.IsZero() && user.Before(idle) {
		return user
	}
	return idle
}

// Read reads stream payload. It returns io.EOF after the peer's CloseWrite,
// an error wrapping ErrStreamCut if the connection ended otherwise,
// ErrStreamIdle after IdleTimeout without anything from the peer,
// ErrProtocol on bytes that are not stream frames, and net.ErrClosed after
// Close.
func (s *Stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if s.rerr != nil {
		return 0, s.rerr
	}
	for s.remain == 0 {
		for s.hdrN < headerSize {
			n, err := s.readRaw(s.hdr[s.hdrN:])
			s.hdrN += n
			if err != nil && s.hdrN < headerSize {
				return 0, s.readErr(err)
			}
		}
		s.hdrN = 0
		typ, n := parseHeader(s.hdr[:])
		switch {
		case typ == frameData:
			s.remain = n
		case typ == framePing && n == 0:
		case typ == frameEnd && n == 0:
			s.rerr = io.EOF
			return 0, io.EOF
		default:
			s.rerr = fmt.Errorf("%w: stream from %s: frame type %d length %d", ErrProtocol, s.peer, typ, n)
			return 0, s.rerr
		}
	}
	if len(p) > s.remain {
		p = p[:s.remain]
	}
	n, err := s.readRaw(p)
	s.remain -= n
	if err != nil {
		err = s.readErr(err)
		if n > 0 {
			return n, nil // the error comes back on the next Read
		}
		return 0, err
	}
	return n, nil
}

func (s *Stream) readRaw(p []byte) (int, error) {
	user, _ := s.deadlines()
	s.raw.SetReadDeadline(s.effective(user))
	if s.closed.Load() {
		// Close may have woken Reads just before the deadline above.
		return 0, net.ErrClosed
	}
	return s.c.Read(p)
}

// readErr classifies a read error; every error but a user deadline sticks.
func (s *Stream) readErr(err error) error {
	switch {
	case s.closed.Load():
		err = fmt.Errorf("peer: read from closed stream: %w", net.ErrClosed)
	case s.t.ctx.Err() != nil:
		err = fmt.Errorf("peer: stream from %s: %w", s.peer, ErrClosed)
	case isTimeout(err):
		user, _ := s.deadlines()
		if !user.IsZero() && !time.Now().Before(user) {
			return fmt.Errorf("peer: read from %s: %w", s.peer, os.ErrDeadlineExceeded)
		}
		err = fmt.Errorf("%w: nothing from %s for %v", ErrStreamIdle, s.peer, s.t.cfg.IdleTimeout)
	case isConnGone(err):
		err = fmt.Errorf("%w: connection from %s ended without the end of stream: %w", ErrStreamCut, s.peer, err)
	default:
		err = fmt.Errorf("peer: read from %s: %w", s.peer, err)
	}
	s.rerr = err
	return err
}

// Write sends p to the peer, waiting for rate-limit tokens chunk by chunk
// (see Transport.SetRateLimit).
func (s *Stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.werr != nil {
		return 0, s.werr
	}
	if s.wclosed {
		return 0, fmt.Errorf("peer: write after CloseWrite: %w", net.ErrClosed)
	}
	total := 0
	for len(p) > 0 {
		n, err := s.waitTokens(min(len(p), maxChunk))
		if err != nil {
			return total, err
		}
		if cap(s.wbuf) < headerSize+n {
			s.wbuf = make([]byte, headerSize+maxChunk)
		}
		buf := s.wbuf[:headerSize+n]
		putHeader(buf, frameData, n)
		copy(buf[headerSize:], p[:n])
		if err := s.writeRaw(buf); err != nil {
			return total, err
		}
		total += n
		p = p[n:]
	}
	return total, nil
}

// waitTokens takes up to want tokens from the shared limiter (never more
// than its burst) and returns how many it took.
func (s *Stream) waitTokens(want int) (int, error) {
	for {
		n := min(want, s.t.limiter.Burst())
		ctx := s.ctx
		_, user := s.deadlines()
		if !user.IsZero() {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, user)
			defer cancel()
		}
		err := s.t.limiter.WaitN(ctx, n)
		switch {
		case err == nil:
			return n, nil
		case s.closed.Load():
			return 0, fmt.Errorf("peer: write to closed stream: %w", net.ErrClosed)
		case s.t.ctx.Err() != nil:
			return 0, fmt.Errorf("peer: stream to %s: %w", s.peer, ErrClosed)
		case !user.IsZero():
			// Nothing was written: the stream stays usable.
			return 0, fmt.Errorf("peer: write to %s: waiting for rate limit: %w", s.peer, os.ErrDeadlineExceeded)
		}
		// The burst shrank between Burst and WaitN; try again.
	}
}

// writeRaw writes one frame; the caller holds wmu.
func (s *Stream) writeRaw(frame []byte) error {
	_, user := s.deadlines()
	s.raw.SetWriteDeadline(s.effective(user))
	if _, err := s.c.Write(frame); err != nil {
		s.werr = s.writeErr(err)
		return s.werr
	}
	s.lastWrite.Store(time.Now().UnixNano())
	return nil
}

func (s *Stream) writeErr(err error) error {
	switch {
	case s.closed.Load():
		return fmt.Errorf("peer: write to closed stream: %w", net.ErrClosed)
	case s.t.ctx.Err() != nil:
		return fmt.Errorf("peer: stream to %s: %w", s.peer, ErrClosed)
	case isTimeout(err):
		_, user := s.deadlines()
		if !user.IsZero() && !time.Now().Before(user) {
			return fmt.Errorf("peer: write to %s: %w", s.peer, os.ErrDeadlineExceeded)
		}
		return fmt.Errorf("%w: %s read nothing for %v", ErrStreamIdle, s.peer, s.t.cfg.IdleTimeout)
	case isConnGone(err):
		return fmt.Errorf("%w: connection to %s ended: %w", ErrStreamCut, s.peer, err)
	}
	return fmt.Errorf("peer: write to %s: %w", s.peer, err)
}

// pingFrame is a keepalive.
var pingFrame = []byte{byte(framePing), 0, 0, 0}

// keepalive runs every IdleTimeout/3 and sends a ping unless something was
// written meanwhile or a Write is in progress.
func (s *Stream) keepalive() {
	if s.closed.Load() {
		return
	}
	period := s.t.cfg.IdleTimeout / 3
	since := time.Since(time.Unix(0, s.lastWrite.Load()))
	if since >= period*9/10 && s.wmu.TryLock() {
		if !s.wclosed && s.werr == nil {
			s.writeRaw(pingFrame)
		}
		s.wmu.Unlock()
		since = 0
	}
	s.kaMu.Lock()
	if s.ka != nil {
		s.ka.Reset(max(period-since, period/4))
	}
	s.kaMu.Unlock()
}

// CloseWrite ends this side of the stream: the peer reads io.EOF after the
// data written so far. Reading is still possible. It is idempotent.
func (s *Stream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.wclosed {
		return nil
	}
	if s.werr != nil {
		return s.werr
	}
	if s.closed.Load() {
		return fmt.Errorf("peer: CloseWrite on closed stream: %w", net.ErrClosed)
	}
	if err := s.writeRaw([]byte{byte(frameEnd), 0, 0, 0}); err != nil {
		return err
	}
	s.wclosed = true
	return nil
}

// lingerMax bounds how long a closed stream drains its connection.
const lingerMax = 10 * time.Second

// Close closes the stream; pending Reads and Writes fail with net.ErrClosed.
// Without a prior CloseWrite the peer sees ErrStreamCut. After CloseWrite,
// Close half-closes the TCP connection and drains what the peer still sends
// (in the background, up to min(IdleTimeout, 10 s)) before closing it, so
// that unread keepalives cannot turn the close into a reset that would
// destroy data the peer has not read yet. Close is idempotent.
func (s *Stream) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.cancel()
		s.kaMu.Lock()
		s.ka.Stop()
		s.ka = nil
		s.kaMu.Unlock()
		ended := s.wmu.TryLock()
		if ended {
			ended = s.wclosed && s.werr == nil
			s.wmu.Unlock()
		}
		if ended && s.linger() {
			return
		}
		s.raw.Close()
		s.t.untrack(s.raw)
	})
	return nil
}

// linger half-closes the connection and drains it in the background;
// false if that is not possible.
func (s *Stream) linger() bool {
	tcp, ok := s.raw.(*net.TCPConn)
	if !ok || tcp.CloseWrite() != nil {
		return false
	}
	s.t.mu.Lock()
	if s.t.closed {
		s.t.mu.Unlock()
		return false
	}
	s.t.wg.Add(1)
	s.t.mu.Unlock()
	// Wake a Read still blocked on the connection; it sees the closed
	// stream.
	tcp.SetReadDeadline(time.Unix(1, 0))
	go func() {
		defer s.t.wg.Done()
		defer s.t.untrack(tcp)
		defer tcp.Close()
		s.rmu.Lock() // after any pending Read has returned
		defer s.rmu.Unlock()
		tcp.SetReadDeadline(time.Now().Add(min(s.t.cfg.IdleTimeout, lingerMax)))
		io.Copy(io.Discard, tcp)
	}()
	return true
}

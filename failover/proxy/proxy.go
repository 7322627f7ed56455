// Package proxy is the ingress proxy of an app's service: it listens on the
// service address on the OP node, forwards each client connection to the
// app's own port, and journals every inbound message (a line, a 32-bit
// length-prefixed frame, or a raw read) before the app sees it. At a
// checkpoint barrier it pauses between messages, so the journal position
// recorded in the epoch splits the messages cleanly into those the epoch
// contains and those a promoted clone must replay.
package proxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"doppel/failover/journal"
)

// Framing says how the client byte stream is cut into messages.
const (
	FramingLine  = "line"  // up to and including '\n'
	FramingLen32 = "len32" // a 4-byte big-endian length, then that many bytes
	FramingRaw   = "raw"   // whatever one read returns
)

// Journal modes.
const (
	// JournalSync forwards a message only once a clone stored it: every
	// message the app may have acted on survives the loss of the OP.
	JournalSync = "sync"
	// JournalAsync forwards at once and streams the journal behind.
	JournalAsync = "async"
	// JournalOff forwards without journaling (no replay after failover).
	JournalOff = "off"
)

// ErrLeaseExpired means the OP's lease ran out: the message was not
// forwarded and the client connection is closed.
var ErrLeaseExpired = errors.New("the OP's lease expired")

// ErrTooLarge means a client sent a message over Config.MaxMessage; its
// connection is closed.
var ErrTooLarge = errors.New("message larger than the framing limit")

// Config configures a Proxy.
type Config struct {
	// Listen is the service address clients connect to.
	Listen string
	// Target is the app's own address.
	Target string
	// Framing is FramingLine, FramingLen32 or FramingRaw.
	Framing string
	// Journal is JournalSync, JournalAsync or JournalOff.
	Journal string
	// MaxMessage bounds one message (and one raw read).
	MaxMessage int
	// StoreTimeout bounds the wait for a clone to store a message in sync
	// mode; past it the client connection is closed (the message was not
	// forwarded, so the client sees an error and nothing is lost).
	StoreTimeout time.Duration
	// DialTimeout bounds connecting to Target.
	DialTimeout time.Duration
	// Lease, when set, is asked before each message goes to the app: false
	// (this OP lost its standing in the cluster) closes the client
	// connection without journaling or forwarding the message.
	Lease  func() bool
	Logger *slog.Logger
}

// DefaultConfig is line framing, sync journal, 1 MiB messages.
func DefaultConfig() Config {
	return Config{
		Framing:      FramingLine,
		Journal:      JournalSync,
		MaxMessage:   1 << 20,
		StoreTimeout: 5 * time.Second,
		DialTimeout:  5 * time.Second,
	}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch c.Framing {
	case FramingLine, FramingLen32, FramingRaw:
	default:
		return fmt.Errorf("framing %q: use line, len32 or raw", c.Framing)
	}
	switch c.Journal {
	case JournalSync, JournalAsync, JournalOff:
	default:
		return fmt.Errorf("journal %q: use sync, async or off", c.Journal)
	}
	if c.MaxMessage <= 0 || c.MaxMessage > journal.MaxFrame-32 {
		return fmt.Errorf("max message %d: use 1..%d bytes", c.MaxMessage, journal.MaxFrame-32)
	}
	if c.Target == "" {
		return errors.New("no target address")
	}
	return nil
}

// Proxy forwards client connections to the app and journals their
// messages. Safe for concurrent use.
type Proxy struct {
	cfg Config
	j   *journal.Journal
	log *slog.Logger
	ln  net.Listener

	mu       sync.Mutex
	cond     *sync.Cond
	paused   bool
	inflight int // messages appended but not yet written to the app
	conns    map[*clientConn]struct{}
	closed   bool

	nextConn atomic.Uint64
	wg       sync.WaitGroup
	// ctx ends at Close: messages waiting for a clone give up.
	ctx    context.Context
	cancel context.CancelFunc
}

// New returns a proxy that journals into j (which may be nil with
// JournalOff). It does not listen yet.
func New(cfg Config, j *journal.Journal) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if j == nil && cfg.Journal != JournalOff {
		return nil, errors.New("proxy: a journal is needed unless journal is off")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	p := &Proxy{cfg: cfg, j: j, log: log, conns: map[*clientConn]struct{}{}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.cond = sync.NewCond(&p.mu)
	p.nextConn.Store(uint64(time.Now().UnixNano()))
	return p, nil
}

// Serve accepts clients on ln until Close.
func (p *Proxy) Serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.handle(c)
			}()
		}
	}()
}

// Listen opens the service address and serves on it.
func (p *Proxy) Listen() error {
	ln, err := net.Listen("tcp", p.cfg.Listen)
	if err != nil {
		return fmt.Errorf("service listen %s: %w", p.cfg.Listen, err)
	}
	p.Serve(ln)
	return nil
}

// Addr is the listening address, once serving.
func (p *Proxy) Addr() net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln == nil {
		return nil
	}
	return p.ln.Addr()
}

// Pause stops forwarding at a message boundary: it waits until every
// message already journaled has been written to the app and holds new ones
// back. It returns the journal position: every message up to it reached the
// app, none after it did. Resume must follow.
func (p *Proxy) Pause(ctx context.Context) (uint64, error) {
	p.mu.Lock()
	p.paused = true
	stop := context.AfterFunc(ctx, func() {
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	defer stop()
	for p.inflight > 0 && ctx.Err() == nil {
		p.cond.Wait()
	}
	p.mu.Unlock()
	if err := ctx.Err(); err != nil {
		p.Resume()
		return 0, fmt.Errorf("proxy pause: %w", err)
	}
	if p.j == nil {
		return 0, nil
	}
	return p.j.Last(), nil
}

// Resume lets messages flow again.
func (p *Proxy) Resume() {
	p.mu.Lock()
	p.paused = false
	p.cond.Broadcast()
	p.mu.Unlock()
}

// Close stops listening and closes every client connection.
func (p *Proxy) Close() error {
	p.cancel()
	p.mu.Lock()
	p.closed = true
	ln := p.ln
	for c := range p.conns {
		c.client.Close()
		if c.app != nil {
			c.app.Close()
		}
	}
	p.paused = false
	p.cond.Broadcast()
	p.mu.Unlock()
	var err error
	if ln != nil {
		err = ln.Close()
	}
	p.wg.Wait()
	return err
}

// Clients is the number of open client connections.
func (p *Proxy) Clients() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

type clientConn struct {
	id     uint64
	client net.Conn
	app    net.Conn
}

func (p *Proxy) handle(client net.Conn) {
	cc := &clientConn{id: p.nextConn.Add(1), client: client}
	defer client.Close()
	app, err := net.DialTimeout("tcp", p.cfg.Target, p.cfg.DialTimeout)
	if err != nil {
		p.log.Warn("service: cannot reach the app", "target", p.cfg.Target, "err", err)
		return
	}
	cc.app = app
	defer app.Close()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.conns[cc] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, cc)
		p.mu.Unlock()
	}()

	// Replies go straight back.
	go func() {
		_, _ = io.Copy(client, app)
		client.Close()
	}()
	r := bufio.NewReaderSize(client, 64<<10)
	for {
		msg, err := p.read(r)
		if len(msg) > 0 {
			if ferr := p.forward(cc, msg); ferr != nil {
				p.log.Warn("service: message not forwarded", "conn", cc.id, "err", ferr)
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				p.log.Info("service: client connection ends", "conn", cc.id, "err", err)
			}
			if p.cfg.Journal != JournalOff && errors.Is(err, io.EOF) {
				p.j.Append(cc.id, journal.KindClose, nil)
			}
			if tcp, ok := app.(*net.TCPConn); ok {
				_ = tcp.CloseWrite()
			}
			return
		}
	}
}

// read returns the next complete message. A message cut by the end of the
// stream is dropped: it never reached the app.
func (p *Proxy) read(r *bufio.Reader) ([]byte, error) {
	max := p.cfg.MaxMessage
	switch p.cfg.Framing {
	case FramingLine:
		var msg []byte
		for {
			chunk, err := r.ReadSlice('\n')
			msg = append(msg, chunk...)
			if len(msg) > max {
				return nil, fmt.Errorf("%w: line over %d bytes", ErrTooLarge, max)
			}
			if err == nil {
				return msg, nil
			}
			if !errors.Is(err, bufio.ErrBufferFull) {
				return nil, err
			}
		}
	case FramingLen32:
		var hdr [4]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil, err
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if int64(n) > int64(max)-4 {
			return nil, fmt.Errorf("%w: frame of %d bytes, limit %d", ErrTooLarge, n, max-4)
		}
		msg := make([]byte, 4+int(n))
		copy(msg, hdr[:])
		if _, err := io.ReadFull(r, msg[4:]); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				err = io.EOF
			}
			return nil, err
		}
		return msg, nil
	default:
		buf := make([]byte, min(max, 64<<10))
		n, err := r.Read(buf)
		return buf[:n], err
	}
}

// forward journals msg and writes it to the app, holding it while paused.
func (p *Proxy) forward(cc *clientConn, msg []byte) error {
	p.mu.Lock()
	for p.paused && !p.closed {
		p.cond.Wait()
	}
	if p.closed {
		p.mu.Unlock()
		return net.ErrClosed
	}
	if p.cfg.Lease != nil && !p.cfg.Lease() {
		p.mu.Unlock()
		return ErrLeaseExpired
	}
	p.inflight++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.inflight--
		p.cond.Broadcast()
		p.mu.Unlock()
	}()
	if p.cfg.Journal != JournalOff {
		seq := p.j.Append(cc.id, journal.KindData, msg)
		if p.cfg.Journal == JournalSync {
			if err := p.j.WaitStored(p.ctx, seq, p.cfg.StoreTimeout); err != nil {
				// Journaled but never acted on: a replay may still deliver
				// it, which is what a client that got no reply must assume.
				return fmt.Errorf("no clone stored message %d in %s: %w", seq, p.cfg.StoreTimeout, err)
			}
		}
	}
	_, err := cc.app.Write(msg)
	return err
}

// Replay re-injects journaled messages into the app at target, in order,
// through fresh connections (one per original client connection); replies
// are read and discarded. It returns once every message was written and the
// app has closed each connection after reading to its end (so it has acted
// on every message), or when ctx ends.
func Replay(ctx context.Context, target string, entries []journal.Entry, dialTimeout time.Duration) (int, error) {
	conns := map[uint64]net.Conn{}
	var wg sync.WaitGroup
	defer func() {
		for _, c := range conns {
			if tcp, ok := c.(*net.TCPConn); ok {
				_ = tcp.CloseWrite()
			}
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
		}
		for _, c := range conns {
			c.Close()
		}
		<-done
	}()
	n := 0
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		c := conns[e.Conn]
		if e.Kind == journal.KindClose {
			if c != nil {
				if tcp, ok := c.(*net.TCPConn); ok {
					_ = tcp.CloseWrite()
				}
			}
			continue
		}
		if c == nil {
			d := net.Dialer{Timeout: dialTimeout}
			var err error
			if c, err = d.DialContext(ctx, "tcp", target); err != nil {
				return n, fmt.Errorf("replay: dial %s: %w", target, err)
			}
			conns[e.Conn] = c
			wg.Add(1)
			go func(c net.Conn) {
				defer wg.Done()
				_, _ = io.Copy(io.Discard, c)
			}(c)
		}
		if _, err := c.Write(e.Data); err != nil {
			return n, fmt.Errorf("replay message %d: %w", e.Seq, err)
		}
		n++
	}
	return n, nil
}

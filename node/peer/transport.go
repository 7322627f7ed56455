package peer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"sync"
	"syscall"
	"time"

	"golang.org/x/time/rate"
)

// alpn is the TLS application protocol of the Transport; a client offering
// another one (raft on the wrong port, say) is refused at the handshake.
const alpn = "doppel-peer/1"

// Config configures a Transport. Zero durations take the DefaultConfig value.
type Config struct {
	// BindAddr is the ip:port to listen on; port 0 picks a free port (see
	// Transport.Addr).
	BindAddr string
	// Key is the cluster key; the zero key is refused.
	Key Key
	// NodeName names this node to its peers (in hellos); it must match
	// NameRE.
	NodeName string
	// RateLimit caps the bytes per second of all outgoing stream payload of
	// this Transport together (streams it opened and streams it accepted);
	// 0 means unlimited. RPCs and keepalives are not limited.
	RateLimit int64
	// DialTimeout bounds connecting to a peer.
	DialTimeout time.Duration
	// HandshakeTimeout bounds the TLS handshake plus the hello exchange, on
	// both sides.
	HandshakeTimeout time.Duration
	// IdleTimeout is how long a connection may carry nothing before it is
	// closed: an idle pooled RPC connection (the server closes it after
	// IdleTimeout, the client stops reusing it after IdleTimeout/2), and a
	// stream whose peer sends neither data nor keepalive (streams send a
	// keepalive every IdleTimeout/3 while open) or does not read what this
	// side writes for IdleTimeout.
	IdleTimeout time.Duration
	// Logger receives handshake failures, protocol errors and handler
	// panics. Nil: slog.Default().
	Logger *slog.Logger
}

// DefaultConfig is the configuration of a production node: the peer port
// 7948 on all addresses, no rate limit.
func DefaultConfig() Config {
	return Config{
		BindAddr:         ":7948",
		DialTimeout:      5 * time.Second,
		HandshakeTimeout: 10 * time.Second,
		IdleTimeout:      30 * time.Second,
	}
}

// NameRE is the syntax of node names.
var NameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidName returns an error if name is not a valid node name.
func ValidName(name string) error {
	if !NameRE.MatchString(name) {
		return fmt.Errorf("peer: node name %q is not valid: want 1-63 of A-Z a-z 0-9 . _ - starting with a letter or digit", name)
	}
	return nil
}

// ErrClosed is wrapped by operations on a closed Transport.
var ErrClosed = errors.New("peer transport closed")

// Transport is one node's TLS listener and its outgoing connections. It
// carries JSON RPCs (see Handle, Call) and raw named streams (see
// HandleStream, OpenStream). All methods are safe for concurrent use.
type Transport struct {
	cfg     Config
	log     *slog.Logger
	tls     *tls.Config
	ln      net.Listener
	limiter *rate.Limiter

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // accept loop and every served connection

	mu       sync.Mutex
	closed   bool
	conns    map[net.Conn]struct{} // every open raw connection, both directions
	handlers map[string]Handler
	streams  map[string]StreamHandler
	idle     map[string][]*rpcConn // pooled client RPC connections by address
}

// Listen validates cfg, starts listening on cfg.BindAddr and serves peers
// until Close.
func Listen(cfg Config) (*Transport, error) {
	def := DefaultConfig()
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = def.DialTimeout
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = def.HandshakeTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = def.IdleTimeout
	}
	if cfg.Key.IsZero() {
		return nil, errors.New("peer: Config.Key is the zero key (load the cluster key first)")
	}
	if err := ValidName(cfg.NodeName); err != nil {
		return nil, err
	}
	if cfg.RateLimit < 0 {
		return nil, fmt.Errorf("peer: RateLimit %d is negative (0 means unlimited)", cfg.RateLimit)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	tc := cfg.Key.TLS()
	tc.NextProtos = []string{alpn}
	ln, err := net.Listen("tcp", cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("peer: listen on %s: %w", cfg.BindAddr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t := &Transport{
		cfg:      cfg,
		log:      log.With("node", cfg.NodeName),
		tls:      tc,
		ln:       ln,
		limiter:  rate.NewLimiter(rate.Inf, minBurst),
		ctx:      ctx,
		cancel:   cancel,
		conns:    make(map[net.Conn]struct{}),
		handlers: make(map[string]Handler),
		streams:  make(map[string]StreamHandler),
		idle:     make(map[string][]*rpcConn),
	}
	t.SetRateLimit(cfg.RateLimit)
	t.wg.Add(1)
	go t.acceptLoop()
	return t, nil
}

// Addr is the address the Transport listens on (ip:port, the real port when
// BindAddr had port 0).
func (t *Transport) Addr() string { return t.ln.Addr().String() }

// NodeName is the name this Transport announces.
func (t *Transport) NodeName() string { return t.cfg.NodeName }

// Burst bounds of the stream rate limiter.
const (
	minBurst = 16 << 10
	maxBurst = 1 << 20
)

// SetRateLimit changes the shared outgoing stream limit at run time
// (bytes/s, 0 = unlimited). The token bucket's burst is 10 ms of traffic at
// the limit, at least 16 KiB and at most 1 MiB; stream writes are cut into
// chunks of at most the burst, each waiting for its tokens, so no stream
// exceeds the limit by more than one burst over any interval.
func (t *Transport) SetRateLimit(bytesPerSec int64) {
	if bytesPerSec <= 0 {
		t.limiter.SetLimit(rate.Inf)
		t.limiter.SetBurst(maxBurst)
		return
	}
	burst := min(max(bytesPerSec/100, minBurst), maxBurst)
	t.limiter.SetBurst(int(burst))
	t.limiter.SetLimit(rate.Limit(bytesPerSec))
}

// Close stops accepting, closes every open connection (served, pooled and
// streams in both directions), cancels the contexts given to handlers and
// waits for the handlers to return. Handlers must return once their context
// is done. Close is idempotent.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	conns := make([]net.Conn, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	for _, list := range t.idle {
		for _, rc := range list {
			rc.timer.Stop()
		}
	}
	t.idle = nil
	t.mu.Unlock()

	t.cancel()
	err := t.ln.Close()
	for _, c := range conns {
		c.Close()
	}
	t.wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("peer: close listener: %w", err)
	}
	return nil
}

// track registers an open connection so Close can close it; it fails once
// the Transport is closed. serve adds one to the wait group under the same
// lock, so Close never waits on a group that can still grow.
func (t *Transport) track(c net.Conn, serve bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.conns[c] = struct{}{}
	if serve {
		t.wg.Add(1)
	}
	return true
}

func (t *Transport) untrack(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

func (t *Transport) acceptLoop() {
	defer t.wg.Done()
	var backoff time.Duration
	for {
		c, err := t.ln.Accept()
		if err != nil {
			if t.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, keep serving.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			t.log.Warn("peer accept failed", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-t.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		if !t.track(c, true) {
			c.Close()
			return
		}
		go func() {
			defer t.wg.Done()
			t.serveConn(c)
		}()
	}
}

// serveConn runs the TLS handshake and the hello, then serves the connection
// as an RPC connection or a stream until either side closes it.
// It closes raw, or hands it to a Stream whose Close does.
func (t *Transport) serveConn(raw net.Conn) {
	owned := true
	defer func() {
		if owned {
			raw.Close()
			t.untrack(raw)
		}
	}()
	remote := raw.RemoteAddr().String()
	log := t.log.With("addr", remote)
	raw.SetDeadline(time.Now().Add(t.cfg.HandshakeTimeout))
	c := tls.Server(raw, t.tls)
	if err := c.HandshakeContext(t.ctx); err != nil {
		if t.ctx.Err() == nil {
			log.Warn("peer TLS handshake failed", "err", err)
		}
		return
	}
	var h hello
	if err := readJSON(c, frameHello, maxHelloSize, &h); err != nil {
		if t.ctx.Err() == nil {
			log.Warn("peer sent no valid hello", "err", describeReadErr(err))
		}
		return
	}
	w := welcome{V: ProtoVersion, From: t.cfg.NodeName}
	var sh StreamHandler
	switch {
	case h.V != ProtoVersion:
		w.Err = fmt.Sprintf("peer protocol version %d is not supported by node %s (it speaks %d)", h.V, t.cfg.NodeName, ProtoVersion)
		w.Code = codeVersion
	case ValidName(h.From) != nil:
		w.Err = fmt.Sprintf("invalid node name %q in hello", h.From)
		w.Code = codeBadRequest
	case h.Type == purposeRPC:
	case h.Type == purposeStream:
		t.mu.Lock()
		sh = t.streams[h.Kind]
		t.mu.Unlock()
		if sh == nil {
			w.Err = fmt.Sprintf("node %s has no stream handler for kind %q", t.cfg.NodeName, h.Kind)
			w.Code = codeUnknownKind
		}
	default:
		w.Err = fmt.Sprintf("unknown connection type %q", h.Type)
		w.Code = codeBadRequest
	}
	if err := writeJSON(c, frameWelcome, w); err != nil {
		log.Warn("peer hello answer failed", "err", err)
		return
	}
	if w.Err != "" {
		log.Warn("peer hello refused", "err", w.Err, "from", h.From)
		// Let the welcome reach the peer before the close.
		c.CloseWrite()
		return
	}
	raw.SetDeadline(time.Time{})
	log = log.With("from", h.From)
	if h.Type == purposeRPC {
		t.serveRPC(c, h.From, log)
		return
	}
	owned = false
	s := t.newStream(c, raw, Hello{Kind: h.Kind, From: h.From, App: h.App, Proto: h.V}, h.From)
	defer s.Close()
	func() {
		defer func() {
			if r := recover(); r != nil {
				log.Error("peer stream handler panicked", "kind", h.Kind, "app", h.App, "err", fmt.Sprint(r))
			}
		}()
		sh(s.ctx, s)
	}()
}

// dial connects to a peer, runs the TLS handshake and the hello exchange. The
// returned connection is tracked; the caller untracks and closes it.
func (t *Transport) dial(ctx context.Context, addr string, h hello) (*tls.Conn, net.Conn, welcome, error) {
	var w welcome
	if t.ctx.Err() != nil {
		return nil, nil, w, ErrClosed
	}
	d := net.Dialer{Timeout: t.cfg.DialTimeout}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, w, fmt.Errorf("peer: dial %s: %w", addr, err)
	}
	if !t.track(raw, false) {
		raw.Close()
		return nil, nil, w, ErrClosed
	}
	fail := func(err error) (*tls.Conn, net.Conn, welcome, error) {
		t.untrack(raw)
		raw.Close()
		return nil, nil, w, err
	}
	hctx, cancel := context.WithTimeout(ctx, t.cfg.HandshakeTimeout)
	defer cancel()
	c := tls.Client(raw, t.tls)
	if err := c.HandshakeContext(hctx); err != nil {
		return fail(fmt.Errorf("peer: TLS handshake with %s: %w", addr, ctxErr(hctx, err)))
	}
	stop := context.AfterFunc(hctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	h.V = ProtoVersion
	h.From = t.cfg.NodeName
	err = writeJSON(c, frameHello, h)
	if err == nil {
		err = readJSON(c, frameWelcome, maxHelloSize, &w)
	}
	if !stop() && err == nil {
		// hctx ended just now; its func may still set a deadline.
		err = hctx.Err()
	}
	if err != nil {
		if isBadCertAlert(err) {
			return fail(fmt.Errorf("peer: %s refused this node: %w (check the key file on both nodes)", addr, ErrUnauthenticated))
		}
		return fail(fmt.Errorf("peer: hello with %s: %w", addr, ctxErr(hctx, describeReadErr(err))))
	}
	if w.Err != "" {
		err := fmt.Errorf("peer: %s refused the connection: %s", addr, w.Err)
		switch w.Code {
		case codeVersion:
			err = fmt.Errorf("%w: %w", ErrVersion, err)
		case codeUnknownKind:
			err = fmt.Errorf("%w: %w", ErrUnknownKind, err)
		}
		return fail(err)
	}
	if w.V != ProtoVersion {
		return fail(fmt.Errorf("%w: %s speaks peer protocol %d, this node %d", ErrVersion, addr, w.V, ProtoVersion))
	}
	raw.SetDeadline(time.Time{})
	return c, raw, w, nil
}

// isBadCertAlert reports a "bad certificate" alert from the peer: in TLS 1.3
// the server checks the client's certificate after the client's handshake
// has completed, so the client learns of its rejection on its first read.
func isBadCertAlert(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error" && op.Err != nil && op.Err.Error() == "tls: bad certificate"
}

// ctxErr prefers the context's error when the context ended.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%w)", cerr, err)
	}
	return err
}

// describeReadErr turns an EOF in the middle of the protocol into an error
// that says so.
func describeReadErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: connection closed by peer: %w", ErrProtocol, err)
	}
	return err
}

// isTimeout reports a deadline error from a connection.
func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// isConnGone reports errors meaning the peer closed or reset the connection.
func isConnGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

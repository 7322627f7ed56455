package state

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// streamLayer is the raft.StreamLayer under the network transport: TCP,
// with TLS when a tls.Config is given. Incoming TLS handshakes run in their
// own goroutines with a deadline, so a peer that stalls or fails the
// handshake never reaches raft nor holds up other connections; failures
// are logged at Warn.
type streamLayer struct {
	ln        net.Listener
	advertise net.Addr
	tls       *tls.Config // nil: plain TCP
	timeout   time.Duration
	log       *slog.Logger

	conns  chan net.Conn
	mu     sync.Mutex
	open   map[*trackedConn]struct{} // accepted, not yet closed
	ctx    context.Context           // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

var _ raft.StreamLayer = (*streamLayer)(nil)

// newStreamLayer serves raft on ln. advertise is the address other nodes
// dial (nil: ln's address). timeout bounds dials and handshakes.
func newStreamLayer(ln net.Listener, advertise net.Addr, cfg *tls.Config, timeout time.Duration, log *slog.Logger) *streamLayer {
	if advertise == nil {
		advertise = ln.Addr()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &streamLayer{
		ln: ln, advertise: advertise, tls: cfg, timeout: timeout, log: log,
		conns: make(chan net.Conn), open: map[*trackedConn]struct{}{}, ctx: ctx, cancel: cancel,
	}
	s.wg.Add(1)
	go s.acceptLoop()
	return s
}

func (s *streamLayer) acceptLoop() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("raft: accept failed", "err", err)
			select {
			case <-time.After(delay):
				continue
			case <-s.ctx.Done():
				return
			}
		}
		delay = 0
		if s.tls == nil {
			s.deliver(c)
			continue
		}
		s.wg.Add(1)
		go s.handshake(c)
	}
}

func (s *streamLayer) handshake(c net.Conn) {
	defer s.wg.Done()
	tc := tls.Server(c, s.tls)
	ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		if s.ctx.Err() == nil {
			s.log.Warn("raft: refused connection: TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		}
		c.Close()
		return
	}
	s.deliver(tc)
}

func (s *streamLayer) deliver(c net.Conn) {
	tc := &trackedConn{Conn: c, s: s}
	s.mu.Lock()
	s.open[tc] = struct{}{}
	s.mu.Unlock()
	select {
	case s.conns <- tc:
	case <-s.ctx.Done():
		tc.Close()
	}
}

// trackedConn is an accepted connection that Close of the stream layer
// closes if raft has not.
type trackedConn struct {
	net.Conn
	s    *streamLayer
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.open, c)
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}

// Accept returns the next connection that passed the handshake.
func (s *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close stops accepting, aborts handshakes in progress, waits for them and
// closes every accepted connection still open.
func (s *streamLayer) Close() error {
	var err error
	s.once.Do(func() {
		s.cancel()
		err = s.ln.Close()
		s.wg.Wait()
		s.mu.Lock()
		open := make([]*trackedConn, 0, len(s.open))
		for c := range s.open {
			open = append(open, c)
		}
		s.mu.Unlock()
		for _, c := range open {
			c.Close()
		}
	})
	return err
}

// Addr is the advertised address.
func (s *streamLayer) Addr() net.Addr { return s.advertise }

// Dial connects to a raft peer and, with TLS, completes the handshake
// within timeout.
func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if timeout <= 0 {
		timeout = s.timeout
	}
	d := &net.Dialer{Timeout: timeout}
	if s.tls == nil {
		c, err := d.Dial("tcp", string(address))
		if err != nil {
			return nil, fmt.Errorf("raft: dial %s: %w", address, err)
		}
		return c, nil
	}
	cfg := s.tls
	if cfg.ServerName == "" && !cfg.InsecureSkipVerify {
		host, _, err := net.SplitHostPort(string(address))
		if err != nil {
			return nil, fmt.Errorf("raft: dial %s: %w", address, err)
		}
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	c, err := tls.DialWithDialer(d, "tcp", string(address), cfg)
	if err != nil {
		return nil, fmt.Errorf("raft: dial %s: TLS: %w", address, err)
	}
	return c, nil
}

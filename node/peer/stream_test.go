package peer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"
)

// pattern is a deterministic pseudo-random byte source: a random block of
// a length that is not a multiple of any frame or record size, repeated
// (fast enough not to limit throughput measurements, even under -race).
func pattern(seed uint64, n int) io.Reader {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	block := make([]byte, 1<<20+7)
	for i := range block {
		block[i] = byte(r.Uint32())
	}
	off := 0
	return io.LimitReader(readerFunc(func(p []byte) (int, error) {
		n := copy(p, block[off:])
		off = (off + n) % len(block)
		return n, nil
	}), int64(n))
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func sum(r io.Reader) ([32]byte, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s, n, err
}

type streamResult struct {
	hello    Hello
	peer     string
	got      [32]byte
	n        int64
	readErr  error
	writeErr error
}

func TestStreamBothWays(t *testing.T) {
	checkGoroutines(t)
	const up, down = 8 << 20, 6 << 20
	key := mustKey(t)
	a := newNode(t, "127.0.0.11", "a", key, nil)
	b := newNode(t, "127.0.0.12", "b", key, nil)
	res := make(chan streamResult, 1)
	a.HandleStream("epoch", func(ctx context.Context, s *Stream) {
		var r streamResult
		r.hello, r.peer = s.Hello(), s.Peer()
		done := make(chan struct{})
		go func() { // write while reading: both directions at once
			defer close(done)
			if _, err := io.Copy(s, pattern(2, down)); err != nil {
				r.writeErr = err
				return
			}
			r.writeErr = s.CloseWrite()
		}()
		r.got, r.n, r.readErr = sum(s)
		<-done
		res <- r
	})

	s, err := b.OpenStream(context.Background(), a.Addr(), "epoch", "web")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Peer() != "a" || s.Hello() != (Hello{Kind: "epoch", From: "b", App: "web", Proto: ProtoVersion}) {
		t.Errorf("opener sees peer %q hello %+v", s.Peer(), s.Hello())
	}
	wrote := make(chan error, 1)
	go func() {
		if _, err := io.Copy(s, pattern(1, up)); err != nil {
			wrote <- err
			return
		}
		wrote <- s.CloseWrite()
	}()
	got, n, err := sum(s)
	if err != nil || n != down {
		t.Fatalf("read %d bytes, err %v; want %d and EOF", n, err, down)
	}
	if want, _, _ := sum(pattern(2, down)); got != want {
		t.Error("downstream bytes differ")
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	r := <-res
	if r.readErr != nil || r.writeErr != nil || r.n != up {
		t.Fatalf("handler: read %d bytes (%v), write %v", r.n, r.readErr, r.writeErr)
	}
	if want, _, _ := sum(pattern(1, up)); r.got != want {
		t.Error("upstream bytes differ")
	}
	if r.peer != "b" || r.hello != (Hello{Kind: "epoch", From: "b", App: "web", Proto: ProtoVersion}) {
		t.Errorf("handler sees peer %q hello %+v", r.peer, r.hello)
	}
	// After EOF reads keep returning EOF; writes after CloseWrite fail.
	if _, err := s.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("read after EOF: %v", err)
	}
	if _, err := s.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after CloseWrite: %v", err)
	}
	if err := s.CloseWrite(); err != nil {
		t.Errorf("second CloseWrite: %v", err)
	}
}

func TestStreamUnknownKind(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	a := newNode(t, "127.0.0.11", "a", key, nil)
	b := newNode(t, "127.0.0.12", "b", key, nil)
	if _, err := b.OpenStream(context.Background(), a.Addr(), "nope", ""); !errors.Is(err, ErrUnknownKind) {
		t.Errorf("unknown kind: %v, want ErrUnknownKind", err)
	}
	// Another key cannot open streams.
	c := newNode(t, "127.0.0.13", "c", mustKey(t), nil)
	a.HandleStream("epoch", func(ctx context.Context, s *Stream) { t.Error("foreign stream reached its handler") })
	if _, err := c.OpenStream(context.Background(), a.Addr(), "epoch", ""); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("stream with another key: %v, want ErrUnauthenticated", err)
	}
}

// TestStreamCut: a peer that closes (or dies) mid-stream without CloseWrite
// makes Read fail with ErrStreamCut after the data it sent, in both
// directions.
func TestStreamCut(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	a := newNode(t, "127.0.0.11", "a", key, nil)
	b := newNode(t, "127.0.0.12", "b", key, nil)
	const n = 1 << 20

	// The handler writes 1 MiB and returns without CloseWrite.
	a.HandleStream("cut-down", func(ctx context.Context, s *Stream) {
		io.Copy(s, pattern(3, n))
	})
	s, err := b.OpenStream(context.Background(), a.Addr(), "cut-down", "")
	if err != nil {
		t.Fatal(err)
	}
	got, read, err := sum(s)
	if !errors.Is(err, ErrStreamCut) || read != n {
		t.Errorf("read %d bytes then %v; want %d then ErrStreamCut", read, err, n)
	}
	if want, _, _ := sum(pattern(3, n)); got != want {
		t.Error("bytes before the cut differ")
	}
	s.Close()

	// The opener writes and closes without CloseWrite; the handler sees
	// the cut.
	res := make(chan error, 1)
	a.HandleStream("cut-up", func(ctx context.Context, s *Stream) {
		_, _, err := sum(s)
		res <- err
	})
	s, err = b.OpenStream(context.Background(), a.Addr(), "cut-up", "")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(s, pattern(4, n))
	s.Close()
	select {
	case err := <-res:
		if !errors.Is(err, ErrStreamCut) {
			t.Errorf("handler read: %v, want ErrStreamCut", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler never saw the cut")
	}
	// Reading and writing a closed stream fail cleanly.
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after Close: %v", err)
	}
	if _, err := s.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after Close: %v", err)
	}
}

// TestStreamPeerStops: a peer that stops sending (no data, no keepalive)
// is detected after IdleTimeout; a peer that stops reading fails the
// writer after IdleTimeout; a stream where both sides are alive but quiet
// stays open thanks to keepalives.
func TestStreamPeerStops(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	const idle = 400 * time.Millisecond
	a := newNode(t, "127.0.0.11", "a", key, func(c *Config) { c.IdleTimeout = idle })
	b := newNode(t, "127.0.0.12", "b", key, func(c *Config) { c.IdleTimeout = idle })

	// A hand-made peer sends a hello and 10 bytes, then hangs.
	res := make(chan error, 1)
	a.HandleStream("epoch", func(ctx context.Context, s *Stream) {
		_, _, err := sum(s)
		res <- err
	})
	raw := rawClient(t, a.Addr(), key)
	writeJSON(raw, frameHello, hello{V: ProtoVersion, Type: purposeStream, From: "hung", Kind: "epoch"})
	var w welcome
	if err := readJSON(raw, frameWelcome, maxHelloSize, &w); err != nil || w.Err != "" {
		t.Fatalf("hello: %v %+v", err, w)
	}
	writeFrame(raw, frameData, []byte("0123456789"))
	t0 := time.Now()
	select {
	case err := <-res:
		if !errors.Is(err, ErrStreamIdle) {
			t.Errorf("read from a hung peer: %v, want ErrStreamIdle", err)
		}
		if d := time.Since(t0); d < idle/2 || d > 10*idle {
			t.Errorf("hung peer detected after %v, idle timeout %v", d, idle)
		}
	case <-time.After(20 * idle):
		t.Fatal("hung peer never detected")
	}

	// A handler that never reads: the writer fails once the socket
	// buffers are full and nothing moves for IdleTimeout.
	a.HandleStream("sink", func(ctx context.Context, s *Stream) { <-ctx.Done() })
	s, err := b.OpenStream(context.Background(), a.Addr(), "sink", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(s, pattern(5, 1<<30))
	if !errors.Is(err, ErrStreamIdle) {
		t.Errorf("writing to a peer that does not read: %v, want ErrStreamIdle", err)
	}
	s.Close()

	// Two live peers quiet for several idle timeouts stay connected.
	got := make(chan []byte, 1)
	a.HandleStream("quiet", func(ctx context.Context, s *Stream) {
		b, err := io.ReadAll(s)
		if err != nil {
			b = []byte(err.Error())
		}
		got <- b
	})
	s, err = b.OpenStream(context.Background(), a.Addr(), "quiet", "")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	select {
	case b := <-got:
		t.Fatalf("quiet stream ended early: %s", b)
	case <-time.After(3 * idle):
	}
	s.Write([]byte("late"))
	s.CloseWrite()
	select {
	case b := <-got:
		if string(b) != "late" {
			t.Errorf("quiet stream delivered %q", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("quiet stream never delivered")
	}
}

func TestStreamGarbageFrame(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	a := newNode(t, "127.0.0.11", "a", key, nil)
	res := make(chan error, 1)
	a.HandleStream("epoch", func(ctx context.Context, s *Stream) {
		_, _, err := sum(s)
		res <- err
	})
	raw := rawClient(t, a.Addr(), key)
	writeJSON(raw, frameHello, hello{V: ProtoVersion, Type: purposeStream, From: "x", Kind: "epoch"})
	var w welcome
	readJSON(raw, frameWelcome, maxHelloSize, &w)
	writeFrame(raw, frameData, []byte("fine"))
	raw.Write([]byte{0xee, 1, 2, 3, 4, 5})
	select {
	case err := <-res:
		if !errors.Is(err, ErrProtocol) {
			t.Errorf("garbage frame: %v, want ErrProtocol", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("garbage frame not detected")
	}
}

func TestStreamDeadlines(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	a := newNode(t, "127.0.0.11", "a", key, nil)
	b := newNode(t, "127.0.0.12", "b", key, func(c *Config) { c.RateLimit = 64 << 10 })
	send := make(chan []byte)
	a.HandleStream("echo", func(ctx context.Context, s *Stream) {
		for {
			select {
			case p := <-send:
				s.Write(p)
			case <-ctx.Done():
				return
			}
		}
	})
	s, err := b.OpenStream(context.Background(), a.Addr(), "echo", "")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 10)
	if _, err := s.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past deadline: %v", err)
	}
	// The deadline error does not stick.
	s.SetReadDeadline(time.Time{})
	send <- []byte("hello")
	if n, err := io.ReadFull(s, buf[:5]); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read after clearing the deadline: %q %v", buf[:n], err)
	}
	// A deadline set while a Read waits wakes it.
	errc := make(chan error, 1)
	go func() {
		_, err := s.Read(buf)
		errc <- err
	}()
	select {
	case err := <-errc:
		t.Fatalf("read without data or deadline returned: %v", err)
	case <-time.After(100 * time.Millisecond): // the Read is now pending
	}
	s.SetReadDeadline(time.Now())
	select {
	case err := <-errc:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("woken read: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("SetReadDeadline did not wake a pending Read")
	}
	// A write deadline also bounds the wait for rate-limit tokens: at 64
	// KiB/s, 1 MiB cannot go out in 100 ms.
	s.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	t0 := time.Now()
	n, err := s.Write(make([]byte, 1<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) || n >= 1<<20 {
		t.Errorf("rate-limited write past deadline: %d bytes, %v", n, err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("write deadline of 100ms returned after %v", d)
	}
}

// TestTransportCloseEndsStreams: Close cancels stream handlers, fails the
// opener's pending Read and leaves no goroutine behind.
func TestTransportCloseEndsStreams(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	cfg := DefaultConfig()
	cfg.BindAddr, cfg.Key, cfg.NodeName = "127.0.0.11:0", key, "a"
	a, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b := newNode(t, "127.0.0.12", "b", key, nil)
	started := make(chan struct{}, 4)
	handlerDone := make(chan error, 4)
	a.HandleStream("epoch", func(ctx context.Context, s *Stream) {
		started <- struct{}{}
		_, err := io.Copy(io.Discard, s)
		handlerDone <- err
	})
	var streams []*Stream
	for range 3 {
		s, err := b.OpenStream(context.Background(), a.Addr(), "epoch", "")
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		s.Write(bytes.Repeat([]byte("x"), 1000))
		streams = append(streams, s)
		<-started
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := streams[0].Read(make([]byte, 1))
		readErr <- err
	}()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := <-handlerDone; !errors.Is(err, ErrClosed) {
			t.Errorf("handler read after Close: %v, want ErrClosed", err)
		}
	}
	select {
	case err := <-readErr:
		if !errors.Is(err, ErrStreamCut) {
			t.Errorf("opener read when the peer closed: %v, want ErrStreamCut", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("opener's Read did not fail when the peer closed")
	}
}

// TestStreamCloseAfterCloseWriteDeliversAll: the opener writes, ends and
// closes its stream while data from the peer sits unread in its socket; the
// peer, reading only afterwards, still gets every byte and a clean EOF (a
// plain close would have sent a TCP reset and destroyed the unread tail).
func TestStreamCloseAfterCloseWriteDeliversAll(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	a := newNode(t, "127.0.0.11", "a", key, nil)
	b := newNode(t, "127.0.0.12", "b", key, nil)
	const n = 2 << 20
	opened := make(chan struct{})
	wrote := make(chan struct{})
	gate := make(chan struct{})
	type result struct {
		got [32]byte
		n   int64
		err error
	}
	res := make(chan result, 1)
	a.HandleStream("epoch", func(ctx context.Context, s *Stream) {
		// A small receive buffer keeps most of the data in the opener's
		// send buffer until this side reads.
		s.raw.(*net.TCPConn).SetReadBuffer(64 << 10)
		// Answer only once the opener has consumed the welcome, so the
		// answer stays in its socket rather than in its TLS buffer.
		<-opened
		s.Write([]byte("an answer the opener never reads"))
		close(wrote)
		<-gate
		var r result
		r.got, r.n, r.err = sum(s)
		res <- r
	})
	s, err := b.OpenStream(context.Background(), a.Addr(), "epoch", "")
	if err != nil {
		t.Fatal(err)
	}
	s.raw.(*net.TCPConn).SetWriteBuffer(4 << 20)
	close(opened)
	<-wrote
	// The data must fit in the socket buffers while the peer does not
	// read, yet not all of it can have left this side's send buffer.
	s.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(s, pattern(6, n)); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	close(gate)
	r := <-res
	if r.err != nil || r.n != n {
		t.Fatalf("peer read %d bytes, %v; want %d and EOF", r.n, r.err, n)
	}
	if want, _, _ := sum(pattern(6, n)); r.got != want {
		t.Error("bytes differ")
	}
}

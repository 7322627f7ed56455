package peer

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

type echoReq struct {
	Text string
	N    int
}

type echoResp struct {
	Text string
	From string
	N    int
}

func echoHandler(ctx context.Context, from string, req json.RawMessage) (any, error) {
	var r echoReq
	if err := json.Unmarshal(req, &r); err != nil {
		return nil, err
	}
	return echoResp{Text: r.Text, From: from, N: r.N + 1}, nil
}

func TestRPC(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	a := newNode(t, "127.0.0.11", "a", key, nil)
	b := newNode(t, "127.0.0.12", "b", key, nil)
	a.Handle("echo", echoHandler)
	a.Handle("fail", func(ctx context.Context, from string, req json.RawMessage) (any, error) {
		return nil, fmt.Errorf("cannot do that for %s", from)
	})
	a.Handle("coded", func(ctx context.Context, from string, req json.RawMessage) (any, error) {
		return nil, WithCode("not_leader", errors.New("leader is c"))
	})
	a.Handle("nil", func(ctx context.Context, from string, req json.RawMessage) (any, error) {
		if string(req) != "null" {
			return nil, fmt.Errorf("request %q, want null", req)
		}
		return nil, nil
	})
	a.Handle("panic", func(ctx context.Context, from string, req json.RawMessage) (any, error) {
		var m map[string]int
		m["x"] = 1 // nil map: the handler panics
		return nil, nil
	})
	ctx := context.Background()

	var resp echoResp
	if err := b.Call(ctx, a.Addr(), "echo", echoReq{Text: "hi", N: 41}, &resp); err != nil {
		t.Fatal(err)
	}
	if resp != (echoResp{Text: "hi", From: "b", N: 42}) {
		t.Fatalf("echo answered %+v", resp)
	}

	err := b.Call(ctx, a.Addr(), "fail", nil, nil)
	var re *RemoteError
	if !errors.As(err, &re) || !errors.Is(err, ErrRemote) || re.Message != "cannot do that for b" || re.Code != "" {
		t.Errorf("handler error came back as %#v", err)
	}
	if !strings.Contains(err.Error(), "cannot do that for b") || !strings.Contains(err.Error(), "fail") {
		t.Errorf("handler error message %q lacks the handler's message or method", err)
	}

	err = b.Call(ctx, a.Addr(), "coded", nil, nil)
	if !errors.As(err, &re) || re.Code != "not_leader" || re.Message != "leader is c" {
		t.Errorf("coded error came back as %#v", err)
	}

	err = b.Call(ctx, a.Addr(), "nope", nil, nil)
	if !errors.Is(err, ErrUnknownMethod) || !errors.Is(err, ErrRemote) || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("unknown method: %v, want ErrUnknownMethod naming the method", err)
	}

	if err := b.Call(ctx, a.Addr(), "nil", nil, nil); err != nil {
		t.Errorf("nil request: %v", err)
	}

	err = b.Call(ctx, a.Addr(), "panic", nil, nil)
	if !errors.As(err, &re) || re.Code != codeInternal {
		t.Errorf("panicking handler: %v, want an internal remote error", err)
	}
	a.logs.waitLog(t, "peer RPC handler panicked", "method=panic")

	// The connection survived all of these and is reused.
	if err := b.Call(ctx, a.Addr(), "echo", echoReq{Text: "again"}, &resp); err != nil || resp.Text != "again" {
		t.Fatalf("echo after errors: %v %+v", err, resp)
	}
	b.mu.Lock()
	pooled := len(b.idle[a.Addr()])
	b.mu.Unlock()
	if pooled != 1 {
		t.Errorf("%d pooled connections after sequential calls, want 1", pooled)
	}

	// A response that does not fit the given type is an error.
	var wrong []int
	if err := b.Call(ctx, a.Addr(), "echo", echoReq{}, &wrong); err == nil {
		t.Error("decoding an object into a slice succeeded")
	}
}

func TestRPCConcurrentCalls(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	a := newNode(t, "127.0.0.11", "a", key, nil)
	b := newNode(t, "127.0.0.12", "b", key, nil)
	a.Handle("echo", echoHandler)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for g := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				var resp echoResp
				text := fmt.Sprintf("%d-%d", g, i)
				if err := b.Call(context.Background(), a.Addr(), "echo", echoReq{Text: text, N: i}, &resp); err != nil {
					errs <- err
					return
				}
				if resp.Text != text || resp.N != i+1 {
					errs <- fmt.Errorf("call %s answered %+v", text, resp)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	b.mu.Lock()
	pooled := len(b.idle[a.Addr()])
	b.mu.Unlock()
	if pooled > maxIdlePerAddr {
		t.Errorf("%d pooled connections, limit %d", pooled, maxIdlePerAddr)
	}
}

func TestRPCContext(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	a := newNode(t, "127.0.0.11", "a", key, nil)
	b := newNode(t, "127.0.0.12", "b", key, nil)
	started := make(chan struct{}, 1)
	handlerErr := make(chan error, 1)
	a.Handle("block", func(ctx context.Context, from string, req json.RawMessage) (any, error) {
		started <- struct{}{}
		select {
		case <-ctx.Done():
			handlerErr <- ctx.Err()
			return nil, ctx.Err()
		case <-time.After(20 * time.Second):
			handlerErr <- errors.New("handler context never cancelled")
			return nil, nil
		}
	})
	a.Handle("echo", echoHandler)

	// Cancel while the handler runs: the call returns at once and the
	// handler's context is cancelled because the caller went away.
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- b.Call(ctx, a.Addr(), "block", nil, nil) }()
	<-started
	t0 := time.Now()
	cancel()
	select {
	case err := <-res:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled call: %v, want context.Canceled", err)
		}
		if d := time.Since(t0); d > 2*time.Second {
			t.Errorf("cancelled call took %v to return", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancelled call did not return")
	}
	select {
	case err := <-handlerErr:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("handler: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler was not cancelled when the caller left")
	}

	// A deadline.
	ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := b.Call(ctx, a.Addr(), "block", nil, nil)
	<-started
	<-handlerErr
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("call past deadline: %v, want context.DeadlineExceeded", err)
	}

	// An already cancelled context never reaches the peer.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if err := b.Call(ctx, a.Addr(), "echo", echoReq{}, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("call with cancelled context: %v", err)
	}

	// Calls still work afterwards.
	if err := b.Call(context.Background(), a.Addr(), "echo", echoReq{}, nil); err != nil {
		t.Errorf("call after cancellations: %v", err)
	}
}

func TestRPCRetriesConnectionClosedByIdlePeer(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	a := newNode(t, "127.0.0.11", "a", key, func(c *Config) { c.IdleTimeout = 100 * time.Millisecond })
	b := newNode(t, "127.0.0.12", "b", key, func(c *Config) { c.IdleTimeout = time.Minute })
	calls := 0
	var mu sync.Mutex
	a.Handle("count", func(ctx context.Context, from string, req json.RawMessage) (any, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		return calls, nil
	})
	var n int
	if err := b.Call(context.Background(), a.Addr(), "count", nil, &n); err != nil || n != 1 {
		t.Fatalf("first call: %v %d", err, n)
	}
	// a closes the idle connection; b still holds it in its pool.
	waitFor(t, 5*time.Second, "a to close the idle connection", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return len(a.conns) == 0
	})
	if err := b.Call(context.Background(), a.Addr(), "count", nil, &n); err != nil || n != 2 {
		t.Fatalf("call on a connection the peer closed: %v %d, want a transparent retry", err, n)
	}
}

func TestRPCPeerDown(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	b := newNode(t, "127.0.0.12", "b", key, nil)
	ln, err := net.Listen("tcp", "127.0.0.11:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	err = b.Call(context.Background(), addr, "echo", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "dial "+addr) {
		t.Errorf("call to a closed port: %v", err)
	}
}

func TestRPCForeignKey(t *testing.T) {
	checkGoroutines(t)
	a := newNode(t, "127.0.0.11", "a", mustKey(t), nil)
	b := newNode(t, "127.0.0.12", "b", mustKey(t), nil)
	a.Handle("echo", echoHandler)
	err := b.Call(context.Background(), a.Addr(), "echo", echoReq{}, nil)
	if !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("call with another key: %v, want ErrUnauthenticated", err)
	}
	a.logs.waitLog(t, "peer TLS handshake failed")

	// A client that trusts anything but holds another key is refused by
	// the server; it learns so at the hello.
	c := rawClientTrustingAll(t, a.Addr(), mustKey(t))
	err = writeJSON(c, frameHello, hello{V: ProtoVersion, Type: purposeRPC, From: "x"})
	if err == nil {
		var w welcome
		err = readJSON(c, frameWelcome, maxHelloSize, &w)
	}
	if err == nil || !isBadCertAlert(err) {
		t.Errorf("foreign client hello: %v, want a bad certificate alert", err)
	}
	a.logs.waitLog(t, "peer does not hold this cluster")
}

func rawClientTrustingAll(t *testing.T, addr string, key Key) net.Conn {
	cfg := trustAll(key.TLS())
	cfg.NextProtos = []string{alpn}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("client trusting all: %v", err)
	}
	return tc
}

func TestGarbageFromPeer(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	a := newNode(t, "127.0.0.11", "a", key, func(c *Config) { c.HandshakeTimeout = 300 * time.Millisecond })
	b := newNode(t, "127.0.0.12", "b", key, nil)
	a.Handle("echo", echoHandler)

	// Random bytes instead of a TLS handshake: a closes the connection.
	c, err := net.Dial("tcp", a.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	junk := make([]byte, 4096)
	rand.Read(junk)
	c.Write(junk)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil && !isConnGone(err) {
		t.Errorf("garbage connection: %v, want it closed by the peer", err)
	}
	a.logs.waitLog(t, "peer TLS handshake failed")

	// A peer that connects and says nothing is dropped after the
	// handshake timeout.
	idle, err := net.Dial("tcp", a.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, idle); err != nil && !isConnGone(err) {
		t.Errorf("silent connection: %v, want it closed by the peer", err)
	}

	// Authenticated garbage: a valid TLS client with the key, then junk.
	tc := rawClient(t, a.Addr(), key)
	tc.Write(junk)
	if _, err := io.Copy(io.Discard, tc); err != nil && !isConnGone(err) {
		t.Errorf("authenticated garbage: %v, want the connection closed", err)
	}
	a.logs.waitLog(t, "peer sent no valid hello")

	// Junk inside an RPC connection after a valid hello.
	tc = rawClient(t, a.Addr(), key)
	if err := writeJSON(tc, frameHello, hello{V: ProtoVersion, Type: purposeRPC, From: "x"}); err != nil {
		t.Fatal(err)
	}
	var w welcome
	if err := readJSON(tc, frameWelcome, maxHelloSize, &w); err != nil || w.Err != "" {
		t.Fatalf("hello: %v %+v", err, w)
	}
	writeFrame(tc, frameData, []byte("not a request"))
	if _, err := io.Copy(io.Discard, tc); err != nil && !isConnGone(err) {
		t.Errorf("junk request: %v", err)
	}
	a.logs.waitLog(t, "peer RPC protocol error")

	// A request that is not JSON gets an error response, not a hang.
	tc = rawClient(t, a.Addr(), key)
	writeJSON(tc, frameHello, hello{V: ProtoVersion, Type: purposeRPC, From: "x"})
	readJSON(tc, frameWelcome, maxHelloSize, &w)
	writeFrame(tc, frameRequest, []byte("{{{"))
	var r rpcResponse
	if err := readJSON(tc, frameResponse, MaxMessage, &r); err != nil || r.Code != codeBadRequest {
		t.Errorf("bad JSON request: %v %+v, want a bad_request response", err, r)
	}

	// An oversized frame header is refused without allocating it.
	tc = rawClient(t, a.Addr(), key)
	var h [headerSize]byte
	putHeader(h[:], frameHello, maxFrame)
	tc.Write(h[:])
	if _, err := io.Copy(io.Discard, tc); err != nil && !isConnGone(err) {
		t.Errorf("oversized hello: %v", err)
	}

	// Through all of it a keeps serving.
	var resp echoResp
	if err := b.Call(context.Background(), a.Addr(), "echo", echoReq{Text: "still here"}, &resp); err != nil || resp.Text != "still here" {
		t.Errorf("call after garbage: %v %+v", err, resp)
	}
}

func TestHelloVersionAndPurpose(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	a := newNode(t, "127.0.0.11", "a", key, nil)
	cases := []struct {
		h    hello
		code string
		say  string
	}{
		{hello{V: ProtoVersion + 1, Type: purposeRPC, From: "x"}, codeVersion, "protocol version 2"},
		{hello{V: ProtoVersion, Type: "telnet", From: "x"}, codeBadRequest, "telnet"},
		{hello{V: ProtoVersion, Type: purposeRPC, From: "-bad name"}, codeBadRequest, "invalid node name"},
		{hello{V: ProtoVersion, Type: purposeStream, From: "x", Kind: "nope"}, codeUnknownKind, `"nope"`},
	}
	for _, c := range cases {
		tc := rawClient(t, a.Addr(), key)
		if err := writeJSON(tc, frameHello, c.h); err != nil {
			t.Fatal(err)
		}
		var w welcome
		if err := readJSON(tc, frameWelcome, maxHelloSize, &w); err != nil {
			t.Fatalf("%+v: %v", c.h, err)
		}
		if w.Code != c.code || !strings.Contains(w.Err, c.say) || w.From != "a" {
			t.Errorf("hello %+v answered %+v, want code %s saying %s", c.h, w, c.code, c.say)
		}
	}
}

// fakeServer answers every connection's hello with w.
func fakeServer(t *testing.T, key Key, w welcome) string {
	t.Helper()
	cfg := key.TLS()
	cfg.NextProtos = []string{alpn}
	ln, err := net.Listen("tcp", "127.0.0.13:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := tls.Server(c, cfg)
			var h hello
			if readJSON(tc, frameHello, maxHelloSize, &h) == nil {
				writeJSON(tc, frameWelcome, w)
			}
			tc.Close()
		}
	}()
	return ln.Addr().String()
}

func TestDialVersionMismatch(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	b := newNode(t, "127.0.0.12", "b", key, nil)
	addr := fakeServer(t, key, welcome{V: ProtoVersion + 1, From: "future"})
	if err := b.Call(context.Background(), addr, "echo", nil, nil); !errors.Is(err, ErrVersion) {
		t.Errorf("call to a newer peer: %v, want ErrVersion", err)
	}
	addr = fakeServer(t, key, welcome{V: ProtoVersion, From: "old", Err: "protocol version 1 is not supported", Code: codeVersion})
	if _, err := b.OpenStream(context.Background(), addr, "epoch", "app"); !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("stream to a peer refusing our version: %v, want ErrVersion with its message", err)
	}
}

func TestListenValidates(t *testing.T) {
	key := mustKey(t)
	for name, mod := range map[string]func(*Config){
		"zero key":      func(c *Config) { c.Key = Key{} },
		"bad name":      func(c *Config) { c.NodeName = "a b" },
		"negative rate": func(c *Config) { c.RateLimit = -1 },
		"bad address":   func(c *Config) { c.BindAddr = "256.0.0.1:0" },
	} {
		cfg := DefaultConfig()
		cfg.BindAddr, cfg.Key, cfg.NodeName = "127.0.0.1:0", key, "n"
		mod(&cfg)
		if tr, err := Listen(cfg); err == nil {
			tr.Close()
			t.Errorf("%s: Listen succeeded", name)
		}
	}
	for _, n := range []string{"a", "node-1.example_x", strings.Repeat("x", 63)} {
		if ValidName(n) != nil {
			t.Errorf("%q refused", n)
		}
	}
	for _, n := range []string{"", "-a", ".a", "a b", "a/b", strings.Repeat("x", 64), "ünï"} {
		if ValidName(n) == nil {
			t.Errorf("%q accepted", n)
		}
	}
}

func TestCloseWaitsForHandlers(t *testing.T) {
	checkGoroutines(t)
	key := mustKey(t)
	cfg := DefaultConfig()
	cfg.BindAddr, cfg.Key, cfg.NodeName = "127.0.0.11:0", key, "a"
	logs := &logBuf{}
	cfg.Logger = logs.logger()
	a, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b := newNode(t, "127.0.0.12", "b", key, nil)
	started := make(chan struct{})
	var finished sync.WaitGroup
	finished.Add(1)
	a.Handle("block", func(ctx context.Context, from string, req json.RawMessage) (any, error) {
		defer finished.Done()
		close(started)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	res := make(chan error, 1)
	go func() { res <- b.Call(context.Background(), a.Addr(), "block", nil, nil) }()
	<-started
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	finished.Wait() // Close returned only after the handler
	select {
	case err := <-res:
		if err == nil {
			t.Error("call to a closing node succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("call did not fail when the peer closed")
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := a.Call(context.Background(), b.Addr(), "x", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("call from a closed transport: %v, want ErrClosed", err)
	}
	if _, err := a.OpenStream(context.Background(), b.Addr(), "x", ""); !errors.Is(err, ErrClosed) {
		t.Errorf("stream from a closed transport: %v, want ErrClosed", err)
	}
}

package state

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func listenStream(t *testing.T, cfg *tls.Config, log *slog.Logger) *streamLayer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := newStreamLayer(ln, nil, cfg, 2*time.Second, log)
	t.Cleanup(func() { s.Close() })
	return s
}

// exchange dials to, accepts there, and echoes one message through.
func exchange(from, to *streamLayer) error {
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := to.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	c, err := from.Dial(raft.ServerAddress(to.Addr().String()), 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	var srv net.Conn
	select {
	case srv = <-accepted:
	case <-time.After(2 * time.Second):
		return errors.New("nothing accepted")
	}
	defer srv.Close()
	buf := make([]byte, 4)
	srv.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(srv, buf); err != nil {
		return err
	}
	if _, err := srv.Write(buf); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ping" {
		return errors.New("echo mismatch")
	}
	return nil
}

func TestStreamLayerTLS(t *testing.T) {
	log, tl := newTestLogger(t)
	good := testTLS(t)
	stranger := testTLS(t)
	a := listenStream(t, good, log)
	b := listenStream(t, good, log)
	s := listenStream(t, stranger, log)

	if err := exchange(a, b); err != nil {
		t.Fatalf("same key: %v", err)
	}
	if err := exchange(s, a); err == nil {
		t.Fatal("a stranger connected to a member")
	}
	if err := exchange(a, s); err == nil {
		t.Fatal("a member connected to a stranger")
	}
	waitFor(t, 10*time.Second, "refused handshake logged", func() bool {
		return strings.Contains(tl.String(), "TLS handshake failed")
	})

	// A peer that connects and says nothing does not hold up others.
	idle, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if err := exchange(a, b); err != nil {
		t.Fatalf("with an idle connection pending: %v", err)
	}

	// Close ends Accept and closes connections raft has not closed.
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := b.Accept()
		accepted <- c
	}()
	c, err := a.Dial(raft.ServerAddress(b.Addr().String()), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x")) // completes the handshake on b's side
	var srv net.Conn
	select {
	case srv = <-accepted:
	case <-time.After(2 * time.Second):
		t.Fatal("not accepted")
	}
	if srv == nil {
		t.Fatal("accept failed")
	}
	b.Close()
	if _, err := b.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("accept after close: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection still open after Close: %v", err)
	}
}

// TestStrangerCannotJoin: a node with another key added to the cluster
// never receives the log, and its direct RPCs to a member are refused.
func TestStrangerCannotJoin(t *testing.T) {
	goodLog, _ := newTestLogger(t)
	strangerLog, strangerTL := newTestLogger(t)
	good := testTLS(t)
	stranger := testTLS(t)

	cfg := testConfig(t, "n1", goodLog, good)
	cfg.Bootstrap = true
	n1 := openTest(t, cfg)
	waitLeader(t, electionBudget, n1)
	s := openTest(t, testConfig(t, "s", strangerLog, stranger))

	ctx := ctxT(t, 10*time.Second)
	if err := n1.AddNonvoter(ctx, "s", s.Addr()); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.Apply(ctx, putApp("web")); err != nil {
		t.Fatal(err)
	}
	// n1 tries to replicate to s: wait until s has refused it.
	waitFor(t, 10*time.Second, "the stranger to refuse the leader's connection", func() bool {
		return strings.Contains(strangerTL.String(), "TLS handshake failed")
	})
	if st := s.State(); st.Index != 0 || len(st.Apps) != 0 {
		t.Fatalf("stranger received state: %+v", st)
	}
	if name, _ := s.Leader(); name != "" {
		t.Fatalf("stranger knows leader %q", name)
	}

	// Direct RPCs: a transport with the member's key gets answers (the
	// control), one with the stranger's key is refused at the handshake.
	term := n1.raft.CurrentTerm()
	entry, err := encodeCommand(Command{Type: CmdRemoveApp, Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	rpcs := func(cfg *tls.Config) (appendErr, voteErr error) {
		st := listenStream(t, cfg, slog.New(slog.DiscardHandler))
		tr := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream: st, MaxPool: 1, Timeout: 2 * time.Second, Logger: newHclogAdapter(slog.New(slog.DiscardHandler), slog.LevelError),
		})
		defer tr.Close()
		header := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("s"), Addr: []byte(st.Addr().String())}
		var ar raft.AppendEntriesResponse
		appendErr = tr.AppendEntries("n1", raft.ServerAddress(n1.Addr()), &raft.AppendEntriesRequest{
			RPCHeader: header, Term: term + 100, PrevLogEntry: 0, PrevLogTerm: 0,
			Entries:           []*raft.Log{{Index: 1000, Term: term + 100, Type: raft.LogCommand, Data: entry}},
			LeaderCommitIndex: 1000,
		}, &ar)
		var vr raft.RequestVoteResponse
		voteErr = tr.RequestVote("n1", raft.ServerAddress(n1.Addr()), &raft.RequestVoteRequest{
			RPCHeader: header, Term: term + 100, LastLogIndex: 1 << 40, LastLogTerm: term + 100,
		}, &vr)
		return appendErr, voteErr
	}
	if aErr, vErr := rpcs(stranger); aErr == nil || vErr == nil {
		t.Fatalf("stranger RPCs answered: append %v, vote %v", aErr, vErr)
	}
	if !n1.IsLeader() || n1.raft.CurrentTerm() != term {
		t.Fatalf("the stranger disturbed the leader: leader %v, term %d -> %d", n1.IsLeader(), term, n1.raft.CurrentTerm())
	}
	if _, ok := n1.State().Apps["web"]; !ok {
		t.Fatal("the stranger's entry was applied")
	}
	if _, err := n1.Apply(ctx, putApp("db")); err != nil {
		t.Fatalf("apply after the stranger's attempts: %v", err)
	}
	// Control: with the right key the same transport reaches raft (a
	// request of an older term is answered, and changes nothing).
	st := listenStream(t, good, slog.New(slog.DiscardHandler))
	tr := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: st, MaxPool: 1, Timeout: 2 * time.Second, Logger: newHclogAdapter(slog.New(slog.DiscardHandler), slog.LevelError),
	})
	defer tr.Close()
	var ar raft.AppendEntriesResponse
	err = tr.AppendEntries("n1", raft.ServerAddress(n1.Addr()), &raft.AppendEntriesRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("x"), Addr: []byte(st.Addr().String())},
		Term:      0,
	}, &ar)
	if err != nil || ar.Success || ar.Term != n1.raft.CurrentTerm() {
		t.Fatalf("control RPC with the cluster key: err %v, resp %+v", err, ar)
	}
}

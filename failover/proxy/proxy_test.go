package proxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"doppel/failover/journal"
)

// counterApp answers every line with the number of lines it has seen on all
// connections, and records the lines.
type counterApp struct {
	ln    net.Listener
	count atomic.Int64
	mu    sync.Mutex
	lines []string
}

func startApp(t *testing.T) *counterApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &counterApp{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					a.mu.Lock()
					a.lines = append(a.lines, sc.Text())
					a.mu.Unlock()
					fmt.Fprintf(c, "%d\n", a.count.Add(1))
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return a
}

func (a *counterApp) seen() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.lines...)
}

// startProxy serves a proxy in front of app with a clone journal attached
// when clone is true.
func startProxy(t *testing.T, app *counterApp, mode, framing string, clone bool) (*Proxy, *journal.Journal, *journal.Journal) {
	t.Helper()
	j := journal.New(0)
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Target = app.ln.Addr().String()
	cfg.Journal = mode
	cfg.Framing = framing
	cfg.StoreTimeout = 300 * time.Millisecond
	cfg.MaxMessage = 1024
	p, err := New(cfg, j)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	var cj *journal.Journal
	if clone {
		cj = journal.New(0)
		a, b := net.Pipe()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{}, 2)
		go func() { _ = journal.Send(ctx, a, j, "c1"); done <- struct{}{} }()
		go func() { _ = journal.Receive(ctx, b, cj); done <- struct{}{} }()
		t.Cleanup(func() { cancel(); a.Close(); b.Close(); <-done; <-done })
	}
	return p, j, cj
}

func dial(t *testing.T, p *Proxy) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func TestForwardAndJournal(t *testing.T) {
	for _, mode := range []string{JournalSync, JournalAsync} {
		t.Run(mode, func(t *testing.T) {
			app := startApp(t)
			p, j, cj := startProxy(t, app, mode, FramingLine, true)
			c, r := dial(t, p)
			for i := 1; i <= 100; i++ {
				fmt.Fprintf(c, "INCR %d\n", i)
				line, err := r.ReadString('\n')
				if err != nil || strings.TrimSpace(line) != fmt.Sprint(i) {
					t.Fatalf("reply %d: %q %v", i, line, err)
				}
			}
			if j.Last() != 100 {
				t.Fatalf("journal last = %d", j.Last())
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := j.WaitStored(ctx, 100, 0); err != nil {
				t.Fatal(err)
			}
			es := cj.Since(0)
			if len(es) != 100 || string(es[99].Data) != "INCR 100\n" {
				t.Fatalf("clone holds %d entries", len(es))
			}
		})
	}
}

func TestSyncWithoutCloneForwardsNothing(t *testing.T) {
	app := startApp(t)
	p, _, _ := startProxy(t, app, JournalSync, FramingLine, false)
	c, r := dial(t, p)
	fmt.Fprintf(c, "INCR 1\n")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("got a reply without any clone storing the message")
	}
	if n := len(app.seen()); n != 0 {
		t.Fatalf("app saw %d messages", n)
	}
}

func TestPauseSplitsAtBoundary(t *testing.T) {
	app := startApp(t)
	p, j, _ := startProxy(t, app, JournalAsync, FramingLine, false)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for k := 0; k < 4; k++ {
		c, r := dial(t, p)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// Half a message first: the barrier must not split it.
				fmt.Fprintf(c, "HALF-")
				fmt.Fprintf(c, "%d\n", i)
				if _, err := r.ReadString('\n'); err != nil {
					return
				}
			}
		}()
	}
	defer func() { close(stop); p.Close(); wg.Wait() }()
	deadline := time.Now().Add(5 * time.Second)
	for j.Last() < 50 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	for round := 0; round < 5; round++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		pos, err := p.Pause(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		// While paused the app has received exactly the messages up to pos:
		// each complete, none after.
		deadline := time.Now().Add(5 * time.Second)
		for int64(len(app.seen())) < int64(pos) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		seen := app.seen()
		if uint64(len(seen)) != pos {
			t.Fatalf("round %d: app saw %d messages, barrier at %d", round, len(seen), pos)
		}
		for _, l := range seen {
			if !strings.HasPrefix(l, "HALF-") {
				t.Fatalf("split message %q", l)
			}
		}
		p.Resume()
		for j.Last() < pos+20 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
}

func TestTooLargeMessage(t *testing.T) {
	app := startApp(t)
	p, _, _ := startProxy(t, app, JournalAsync, FramingLine, false)
	c, r := dial(t, p)
	fmt.Fprintf(c, "%s\n", strings.Repeat("x", 4096))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("oversized line got a reply")
	}
	if n := len(app.seen()); n != 0 {
		t.Fatalf("app saw %d messages", n)
	}
}

func TestLen32Framing(t *testing.T) {
	// An app that echoes each frame.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	j := journal.New(0)
	cfg := DefaultConfig()
	cfg.Listen, cfg.Target, cfg.Framing, cfg.Journal = "127.0.0.1:0", ln.Addr().String(), FramingLen32, JournalAsync
	p, err := New(cfg, j)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, m := range []string{"a", "hello", strings.Repeat("z", 5000)} {
		var hdr [4]byte
		binary.BigEndian.PutUint32(hdr[:], uint32(len(m)))
		_, _ = c.Write(hdr[:2]) // split header
		_, _ = c.Write(append(hdr[2:], m...))
		back := make([]byte, 4+len(m))
		if _, err := io.ReadFull(c, back); err != nil || string(back[4:]) != m {
			t.Fatalf("echo of %d bytes: %v", len(m), err)
		}
	}
	es := j.Since(0)
	if len(es) != 3 || len(es[2].Data) != 5004 {
		t.Fatalf("journal: %d entries", len(es))
	}
}

func TestReplay(t *testing.T) {
	app := startApp(t)
	entries := []journal.Entry{
		{Seq: 5, Conn: 1, Kind: journal.KindData, Data: []byte("a1\n")},
		{Seq: 6, Conn: 2, Kind: journal.KindData, Data: []byte("b1\n")},
		{Seq: 7, Conn: 1, Kind: journal.KindData, Data: []byte("a2\n")},
		{Seq: 8, Conn: 1, Kind: journal.KindClose},
		{Seq: 9, Conn: 2, Kind: journal.KindData, Data: []byte("b2\n")},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := Replay(ctx, app.ln.Addr().String(), entries, time.Second)
	if err != nil || n != 4 {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	seen := app.seen()
	if len(seen) != 4 || app.count.Load() != 4 {
		t.Fatalf("app saw %v", seen)
	}
	idx := map[string]int{}
	for i, l := range seen {
		idx[l] = i
	}
	if idx["a1"] > idx["a2"] || idx["b1"] > idx["b2"] {
		t.Fatalf("order within a connection lost: %v", seen)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []Config{
		{Framing: "xml", Journal: JournalSync, MaxMessage: 10, Target: "x"},
		{Framing: FramingLine, Journal: "maybe", MaxMessage: 10, Target: "x"},
		{Framing: FramingLine, Journal: JournalSync, MaxMessage: 0, Target: "x"},
		{Framing: FramingLine, Journal: JournalSync, MaxMessage: 10},
	} {
		if _, err := New(c, journal.New(0)); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
}

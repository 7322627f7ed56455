package bench

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pierrec/lz4/v4"
)

func TestFillIsPageLike(t *testing.T) {
	const pages = 1024
	a, b := make([]byte, pages*PageSize), make([]byte, pages*PageSize)
	Fill(a, 7)
	Fill(b, 7)
	if !bytes.Equal(a, b) {
		t.Fatal("Fill is not deterministic for a seed")
	}
	Fill(b, 8)
	if bytes.Equal(a, b) {
		t.Fatal("Fill gives the same content for two seeds")
	}
	zero := 0
	for p := 0; p < pages; p++ {
		if bytes.Count(a[p*PageSize:(p+1)*PageSize], []byte{0}) == PageSize {
			zero++
		}
	}
	if zero < pages/20 || zero > pages/5 {
		t.Errorf("%d of %d pages are zero, want about 10%%", zero, pages)
	}
	dst := make([]byte, lz4.CompressBlockBound(len(a)))
	var c lz4.Compressor
	n, err := c.CompressBlock(a, dst)
	if err != nil {
		t.Fatal(err)
	}
	if r := float64(n) / float64(len(a)); r < 0.3 || r > 0.8 {
		t.Errorf("LZ4 compresses the content to %.2f, want about half", r)
	}
}

func TestDirtyRewritesExactlyKPages(t *testing.T) {
	const pages = 1000
	before := make([]byte, pages*PageSize)
	Fill(before, 1)
	for _, k := range []int{0, 1, 10, 333, pages, pages + 5} {
		after := bytes.Clone(before)
		got := Dirty(after, k, uint64(k)+99)
		want := min(k, pages)
		if got != want {
			t.Errorf("Dirty(%d) = %d, want %d", k, got, want)
		}
		changed := 0
		for p := 0; p < pages; p++ {
			pg := after[p*PageSize : (p+1)*PageSize]
			if !bytes.Equal(pg, before[p*PageSize:(p+1)*PageSize]) {
				changed++
				if bytes.Count(pg, []byte{0}) == PageSize {
					t.Errorf("Dirty(%d) left page %d zero", k, p)
				}
			}
		}
		if changed != want {
			t.Errorf("Dirty(%d) changed %d pages, want %d", k, changed, want)
		}
	}
}

// startTestApp runs RunApp in this process until the test ends.
func startTestApp(t *testing.T, cfg AppConfig) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- RunApp(ctx, cfg, pw)
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("RunApp: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("RunApp did not return after its context ended")
		}
	})
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("ready line: %v", err)
	}
	go io.Copy(io.Discard, pr)
	rest, ok := strings.CutPrefix(line, ReadyPrefix)
	if !ok {
		t.Fatalf("ready line %q", line)
	}
	return strings.Fields(rest)[0]
}

func TestAppProtocol(t *testing.T) {
	addr := startTestApp(t, AppConfig{Size: 64 * PageSize, Listen: "127.0.0.1:0", Seed: 3})
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	ask := func(req string) string {
		t.Helper()
		if _, err := io.WriteString(c, req+"\n"); err != nil {
			t.Fatal(err)
		}
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(line)
	}
	for req, want := range map[string]string{
		"PING":       "pong",
		"DIRTY 5 9":  "dirtied 5",
		"DIRTY 99 9": "dirtied 64",
		"REFILL 4":   "refilled",
	} {
		if got := ask(req); got != want {
			t.Errorf("%s: %q, want %q", req, got, want)
		}
	}
	if got := ask("WORK"); got != "ok 1" {
		t.Errorf("WORK: %q, want ok 1", got)
	}
	if got := ask("WORK"); got != "ok 2" {
		t.Errorf("second WORK: %q, want ok 2", got)
	}
	for _, bad := range []string{"NOPE", "DIRTY x 1", "REFILL"} {
		if got := ask(bad); !strings.HasPrefix(got, "error") {
			t.Errorf("%s: %q, want an error", bad, got)
		}
	}
	// Two requests in one write get two answers.
	io.WriteString(c, "PING\nPING\n")
	for range 2 {
		if line, err := r.ReadString('\n'); err != nil || strings.TrimSpace(line) != "pong" {
			t.Errorf("pipelined PING: %q, %v", line, err)
		}
	}
}

func TestLoadAndFirstAnswer(t *testing.T) {
	addr := startTestApp(t, AppConfig{Size: 256 * PageSize, DirtyRate: 0.5, Listen: "127.0.0.1:0"})
	res, err := Load(context.Background(), addr, 3, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests < 10 || res.Rate() <= 0 || res.Elapsed < 300*time.Millisecond {
		t.Errorf("load: %+v (rate %.0f/s)", res, res.Rate())
	}
	pings, err := LoadWith(context.Background(), addr, "PING", 1, 200*time.Millisecond, time.Millisecond)
	if err != nil || pings.Requests < 10 || pings.MaxGap <= 0 {
		t.Errorf("PING load: %+v, %v", pings, err)
	}
	if _, err := LoadWith(context.Background(), addr, "DIRTY", 1, time.Millisecond, 0); err == nil {
		t.Error("a load of DIRTY requests was accepted")
	}

	// Nothing listens on two fresh ports: FirstAnswer waits until the
	// app appears on one of them.
	dead, free := freePort(t), freePort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, _, err := FirstAnswer(ctx, []string{dead, free}, time.Millisecond); err == nil {
		t.Fatal("FirstAnswer found an answer where nothing listens")
	}
	actx, acancel := context.WithCancel(context.Background())
	defer acancel()
	appDone := make(chan error, 1)
	start := time.Now()
	time.AfterFunc(100*time.Millisecond, func() {
		appDone <- RunApp(actx, AppConfig{Size: 16 * PageSize, Listen: free}, io.Discard)
	})
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	got, at, err := FirstAnswer(wctx, []string{dead, free}, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if got != free || at.Sub(start) < 100*time.Millisecond {
		t.Errorf("first answer from %s after %v, want %s after at least 100ms", got, at.Sub(start), free)
	}
	acancel()
	select {
	case err := <-appDone:
		if err != nil {
			t.Errorf("RunApp: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("RunApp did not return after its context ended")
	}
}

// freePort returns a loopback address nothing listens on.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// AppConfig configures the synthetic app that doppel bench checkpoints.
type AppConfig struct {
	// Size is its resident memory in bytes: one anonymous mapping outside
	// the Go heap, every page written with Fill's page-like content.
	Size int64
	// DirtyRate is the fraction of its pages it rewrites per second by
	// itself (0.01 is 1% per second), in ten steps a second; 0 for none.
	DirtyRate float64
	// Listen is the TCP address of its line protocol (see RunApp).
	Listen string
	// Seed makes the initial content; 0 picks a random one.
	Seed uint64
}

// DefaultAppConfig is 256 MiB, no background dirtying, on a free port of
// 127.0.0.1.
func DefaultAppConfig() AppConfig {
	return AppConfig{Size: 256 << 20, Listen: "127.0.0.1:0"}
}

// ReadyPrefix starts the line RunApp prints when it serves:
// "ready addr=HOST:PORT pid=PID".
const ReadyPrefix = "ready addr="

// RunApp runs the synthetic app until ctx ends or its listener fails. It
// holds cfg.Size bytes of page-like memory, dirties cfg.DirtyRate of its
// pages every second, prints ReadyPrefix+address to ready once it listens,
// and answers one line per request line on every connection:
//
//	PING          -> pong
//	WORK          -> ok N       (a request: bumps a counter, rewrites one
//	                             word of one page in turn, N is the counter)
//	DIRTY K SEED  -> dirtied K  (rewrites K distinct pages; see Dirty)
//	REFILL SEED   -> refilled   (rewrites every page with Fill)
//
// Anything else gets "error ..." and the connection stays open.
func RunApp(ctx context.Context, cfg AppConfig, ready io.Writer) error {
	if cfg.Size < PageSize {
		return fmt.Errorf("app size %d: want at least one page (%d bytes)", cfg.Size, PageSize)
	}
	buf, err := unix.Mmap(-1, 0, int(cfg.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("mmap %d bytes: %w", cfg.Size, err)
	}
	defer unix.Munmap(buf)
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	Fill(buf, seed)
	a := &app{buf: buf}
	var lc net.ListenConfig
	// A Go listener is an MPTCP socket by default, which CRIU cannot dump.
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(ctx, "tcp", cfg.Listen)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	if cfg.DirtyRate > 0 {
		go a.dirtyLoop(ctx, cfg.DirtyRate)
	}
	if _, err := fmt.Fprintf(ready, "%s%s pid=%d\n", ReadyPrefix, ln.Addr(), os.Getpid()); err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.serve(ctx, c)
		}()
	}
}

type app struct {
	mu      sync.Mutex // guards buf's content and the fields below
	buf     []byte
	counter uint64
	seeds   uint64 // for the background dirtying
}

// dirtyLoop rewrites rate of the pages per second, a tenth every 100 ms.
func (a *app) dirtyLoop(ctx context.Context, rate float64) {
	pages := len(a.buf) / PageSize
	perTick := float64(pages) * rate / 10
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	owed := 0.0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		owed += perTick
		k := int(owed)
		owed -= float64(k)
		a.mu.Lock()
		a.seeds++
		Dirty(a.buf, k, a.seeds*0x9e3779b97f4a7c15)
		a.mu.Unlock()
	}
}

func (a *app) serve(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		fmt.Fprintln(w, a.handle(strings.Fields(line)))
		// Answer at once unless the client already sent the next request.
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

func (a *app) handle(f []string) string {
	if len(f) == 0 {
		return "error empty request"
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case f[0] == "PING" && len(f) == 1:
		return "pong"
	case f[0] == "WORK" && len(f) == 1:
		a.counter++
		pages := uint64(len(a.buf) / PageSize)
		off := (a.counter%pages)*PageSize + (a.counter/pages%(PageSize/8))*8
		binary.LittleEndian.PutUint64(a.buf[off:], a.counter)
		return "ok " + strconv.FormatUint(a.counter, 10)
	case f[0] == "DIRTY" && len(f) == 3:
		k, err1 := strconv.Atoi(f[1])
		seed, err2 := strconv.ParseUint(f[2], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return "error " + err.Error()
		}
		return "dirtied " + strconv.Itoa(Dirty(a.buf, k, seed))
	case f[0] == "REFILL" && len(f) == 2:
		seed, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return "error " + err.Error()
		}
		Fill(a.buf, seed)
		return "refilled"
	}
	return "error unknown request " + strconv.Quote(strings.Join(f, " "))
}

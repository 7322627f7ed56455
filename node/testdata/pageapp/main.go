// Command pageapp is the application the node's end-to-end tests replicate.
// It holds a buffer outside the Go heap and, every tick, increments a
// counter and rewrites a few pages of the buffer chosen from (seed,
// counter), so every epoch has dirty pages. Because the content of every
// page follows from the seed and the counter, the app can check its own
// memory after a restore by replaying the ticks into a fresh buffer.
//
// Flags: -listen ADDR (TCP, required), -mb N (buffer size), -pages K
// (pages rewritten per tick), -tick D.
//
// It answers one-line commands on ADDR:
//
//	STATE  -> state COUNTER SUM OK SEED  (SUM: SHA-256 of the buffer; OK is
//	          "ok" when the buffer equals the replay of COUNTER ticks, else "bad")
//	PAUSE  -> paused COUNTER             (no more ticks until RESUME)
//	RESUME -> resumed COUNTER
package main

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const pageSize = 4096

type app struct {
	mu      sync.Mutex
	seed    uint64
	counter uint64
	paused  bool
	buf     []byte
	pages   int
}

func main() {
	listen := flag.String("listen", "", "TCP address to answer on")
	mb := flag.Int("mb", 16, "buffer size in MiB")
	pages := flag.Int("pages", 32, "pages rewritten per tick")
	tick := flag.Duration("tick", 20*time.Millisecond, "tick period")
	flag.Parse()
	if err := run(*listen, *mb, *pages, *tick); err != nil {
		fmt.Fprintln(os.Stderr, "pageapp:", err)
		os.Exit(1)
	}
}

func run(listen string, mb, pages int, tick time.Duration) error {
	if listen == "" {
		return fmt.Errorf("-listen is required")
	}
	buf, err := unix.Mmap(-1, 0, mb<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("mmap %d MiB: %w", mb, err)
	}
	var sb [8]byte
	if _, err := rand.Read(sb[:]); err != nil {
		return err
	}
	a := &app{seed: binary.LittleEndian.Uint64(sb[:]) | 1, buf: buf, pages: pages}
	ln, err := net.Listen("tcp4", listen)
	if err != nil {
		return err
	}
	fmt.Printf("ready listen=%s seed=%x pid=%d\n", ln.Addr(), a.seed, os.Getpid())
	go func() {
		for range time.Tick(tick) {
			a.mu.Lock()
			if !a.paused {
				a.counter++
				apply(a.buf, a.seed, a.counter, a.pages)
			}
			a.mu.Unlock()
		}
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go a.serve(c)
	}
}

// apply performs tick n on buf: it rewrites the pages that (seed, n)
// choose with bytes derived from (seed, n, page).
func apply(buf []byte, seed, n uint64, pages int) {
	npages := uint64(len(buf) / pageSize)
	x := seed ^ (n * 0x9e3779b97f4a7c15)
	for i := 0; i < pages; i++ {
		x = xorshift(x)
		p := x % npages
		page := buf[p*pageSize : (p+1)*pageSize]
		y := x ^ n
		for off := 0; off < pageSize; off += 8 {
			y = xorshift(y)
			binary.LittleEndian.PutUint64(page[off:], y)
		}
	}
}

func xorshift(x uint64) uint64 {
	x ^= x << 13
	x ^= x >> 7
	x ^= x << 17
	return x
}

func (a *app) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		var reply string
		switch strings.TrimSpace(sc.Text()) {
		case "STATE":
			reply = a.state()
		case "PAUSE":
			a.mu.Lock()
			a.paused = true
			reply = fmt.Sprintf("paused %d", a.counter)
			a.mu.Unlock()
		case "RESUME":
			a.mu.Lock()
			a.paused = false
			reply = fmt.Sprintf("resumed %d", a.counter)
			a.mu.Unlock()
		default:
			reply = "error unknown command"
		}
		if _, err := fmt.Fprintln(c, reply); err != nil {
			return
		}
	}
}

// state reports the counter and the buffer's checksum, and whether the
// buffer is what COUNTER ticks from the seed produce.
func (a *app) state() string {
	a.mu.Lock()
	n, seed := a.counter, a.seed
	sum := sha256.Sum256(a.buf)
	a.mu.Unlock()
	replay := make([]byte, len(a.buf))
	for i := uint64(1); i <= n; i++ {
		apply(replay, seed, i, a.pages)
	}
	ok := "bad"
	if sha256.Sum256(replay) == sum {
		ok = "ok"
	}
	return fmt.Sprintf("state %d %s %s %x", n, hex.EncodeToString(sum[:]), ok, seed)
}

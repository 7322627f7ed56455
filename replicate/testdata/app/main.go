// Command app is the application the replicate engine tests checkpoint and
// restore. Go cannot fork, so its child processes are the same binary run
// again with a role argument.
//
// The main process (no argument) holds, depending on its environment:
//
//	APP_BUF_MB  a buffer of that many MiB outside the Go heap, every page
//	            filled with non-zero, moderately compressible bytes
//	APP_SHM=1   a System V shared memory segment and a "worker" child that
//	            writes into it on request over a pipe (and acknowledges on
//	            another); the worker has an "idle" child of its own that
//	            blocks on a third pipe
//	APP_DATA    a file to which every tick appends "NONCE COUNTER PREV\n",
//	            PREV being the value found in the segment before the tick
//	            asked the worker to store COUNTER (so PREV = COUNTER-1 as
//	            long as the segment keeps its content)
//	APP_TICK    the tick period (a Go duration; 0 or unset: no ticks)
//
// and always a random nonce, an in-memory counter and a TCP listener on
// 127.0.0.1 speaking lines:
//
//	STATE        -> state NONCE COUNTER SHMVALUE SHMOK
//	DIRTY K SEED -> dirtied K     (writes into K distinct pages of the buffer)
//	REFILL SEED  -> refilled      (rewrites every page of the buffer)
//	SUM          -> sum HEX       (SHA-256 of the buffer)
//	PING         -> pong
//
// When ready it prints "ready port=PORT nonce=NONCE pid=PID" on stdout.
package main

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const (
	pageSize = 4096
	shmSize  = 64 << 10
)

func main() {
	var err error
	role := ""
	if len(os.Args) > 1 {
		role = os.Args[1]
	}
	switch role {
	case "":
		err = runMain()
	case "worker":
		err = runWorker()
	case "idle":
		// Block on the pipe from the worker until it closes.
		_, err = os.NewFile(3, "idle-pipe").Read(make([]byte, 1))
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "app:", err)
		os.Exit(1)
	}
}

type app struct {
	nonce string
	buf   []byte

	mu      sync.Mutex // guards counter, buf and the worker pipes
	counter uint64

	seg    []byte   // shared memory segment, nil without APP_SHM
	req    *os.File // to the worker
	ack    *os.File // from the worker
	worker *exec.Cmd
}

func runMain() error {
	a := &app{}
	var nb [8]byte
	if _, err := rand.Read(nb[:]); err != nil {
		return err
	}
	a.nonce = hex.EncodeToString(nb[:])
	if mb, _ := strconv.Atoi(os.Getenv("APP_BUF_MB")); mb > 0 {
		b, err := unix.Mmap(-1, 0, mb<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return fmt.Errorf("mmap %d MiB: %w", mb, err)
		}
		a.buf = b
		fill(a.buf, binary.LittleEndian.Uint64(nb[:]))
	}
	if os.Getenv("APP_SHM") == "1" {
		if err := a.startWorker(); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	var data *os.File
	if p := os.Getenv("APP_DATA"); p != "" {
		if data, err = os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err != nil {
			return err
		}
	}
	tick, _ := time.ParseDuration(os.Getenv("APP_TICK"))
	if tick > 0 && data != nil {
		go a.ticks(tick, data)
	}
	fmt.Printf("ready port=%d nonce=%s pid=%d\n", ln.Addr().(*net.TCPAddr).Port, a.nonce, os.Getpid())
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go a.serve(c)
	}
}

// fill writes every page: half random bytes, half a repeated 64-byte random
// block, so that no page is zero and LZ4 halves the size.
func fill(b []byte, seed uint64) {
	r := mrand.NewChaCha8(sha256.Sum256(binary.LittleEndian.AppendUint64(nil, seed)))
	var block [64]byte
	for off := 0; off+pageSize <= len(b); off += pageSize {
		p := b[off : off+pageSize]
		_, _ = r.Read(p[:pageSize/2])
		_, _ = r.Read(block[:])
		for i := pageSize / 2; i < pageSize; i += len(block) {
			copy(p[i:], block[:])
		}
	}
}

// dirty writes a fresh value into k distinct pages spread over the buffer.
func (a *app) dirty(k int, seed uint64) error {
	pages := len(a.buf) / pageSize
	if k < 0 || k > pages {
		return fmt.Errorf("dirty %d of %d pages", k, pages)
	}
	if k == 0 {
		return nil
	}
	stride := pages / k
	for i := 0; i < k; i++ {
		off := i * stride * pageSize
		binary.LittleEndian.PutUint64(a.buf[off:], seed)
		binary.LittleEndian.PutUint64(a.buf[off+8:], uint64(i)+1)
	}
	return nil
}

func (a *app) startWorker() error {
	id, err := unix.SysvShmGet(unix.IPC_PRIVATE, shmSize, unix.IPC_CREAT|0o600)
	if err != nil {
		return fmt.Errorf("shmget: %w", err)
	}
	if a.seg, err = unix.SysvShmAttach(id, 0, 0); err != nil {
		return fmt.Errorf("shmat: %w", err)
	}
	reqR, reqW, err := os.Pipe()
	if err != nil {
		return err
	}
	ackR, ackW, err := os.Pipe()
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, "worker", strconv.Itoa(id))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{reqR, ackW} // fds 3 and 4
	if err := cmd.Start(); err != nil {
		return err
	}
	reqR.Close()
	ackW.Close()
	a.req, a.ack, a.worker = reqW, ackR, cmd
	// Store 0 and wait for it, so the worker is up before the first tick.
	_, err = a.store(0)
	return err
}

// store has the worker write v into the segment and waits for it.
func (a *app) store(v uint64) (uint64, error) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	if _, err := a.req.Write(b[:]); err != nil {
		return 0, fmt.Errorf("to worker: %w", err)
	}
	if _, err := readFull(a.ack, b[:]); err != nil {
		return 0, fmt.Errorf("from worker: %w", err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// shm returns the value in the segment and whether the rest of the segment
// holds the pattern the worker derives from it.
func (a *app) shm() (uint64, bool) {
	if a.seg == nil {
		return 0, true
	}
	v := binary.LittleEndian.Uint64(a.seg)
	return v, checkPattern(a.seg, v)
}

func pattern(seg []byte, v uint64) {
	for i := 8; i+8 <= len(seg); i += 8 {
		binary.LittleEndian.PutUint64(seg[i:], v*0x9e3779b97f4a7c15+uint64(i))
	}
}

func checkPattern(seg []byte, v uint64) bool {
	for i := 8; i+8 <= len(seg); i += 8 {
		if binary.LittleEndian.Uint64(seg[i:]) != v*0x9e3779b97f4a7c15+uint64(i) {
			return false
		}
	}
	return true
}

func (a *app) ticks(period time.Duration, data *os.File) {
	t := time.NewTicker(period)
	defer t.Stop()
	for range t.C {
		a.mu.Lock()
		prev, ok := a.shm()
		a.counter++
		c := a.counter
		if a.seg != nil {
			got, err := a.store(c)
			if err != nil || got != c {
				fmt.Fprintf(os.Stderr, "app: worker stored %d for %d: %v\n", got, c, err)
				os.Exit(1)
			}
		}
		a.mu.Unlock()
		mark := ""
		if !ok {
			mark = " bad-pattern"
		}
		if _, err := fmt.Fprintf(data, "%s %d %d%s\n", a.nonce, c, prev, mark); err != nil {
			fmt.Fprintln(os.Stderr, "app: data file:", err)
			os.Exit(1)
		}
	}
}

func (a *app) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return
		}
		reply := a.handle(strings.Fields(l))
		if _, err := c.Write([]byte(reply + "\n")); err != nil {
			return
		}
	}
}

func (a *app) handle(f []string) string {
	if len(f) == 0 {
		return "error empty request"
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch f[0] {
	case "PING":
		return "pong"
	case "STATE":
		v, ok := a.shm()
		return fmt.Sprintf("state %s %d %d %t", a.nonce, a.counter, v, ok)
	case "DIRTY":
		if len(f) != 3 {
			return "error usage: DIRTY K SEED"
		}
		k, err1 := strconv.Atoi(f[1])
		seed, err2 := strconv.ParseUint(f[2], 10, 64)
		if err1 != nil || err2 != nil {
			return "error usage: DIRTY K SEED"
		}
		if err := a.dirty(k, seed); err != nil {
			return "error " + err.Error()
		}
		return "dirtied " + f[1]
	case "REFILL":
		if len(f) != 2 {
			return "error usage: REFILL SEED"
		}
		seed, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return "error usage: REFILL SEED"
		}
		fill(a.buf, seed)
		return "refilled"
	case "SUM":
		s := sha256.Sum256(a.buf)
		return "sum " + hex.EncodeToString(s[:])
	}
	return "error unknown request " + f[0]
}

// runWorker stores the values the main process sends into the segment
// (argument: the segment's id), answering each with the value it stored.
func runWorker() error {
	if len(os.Args) < 3 {
		return fmt.Errorf("worker: no segment id")
	}
	id, err := strconv.Atoi(os.Args[2])
	if err != nil {
		return err
	}
	seg, err := unix.SysvShmAttach(id, 0, 0)
	if err != nil {
		return fmt.Errorf("worker shmat: %w", err)
	}
	req, ack := os.NewFile(3, "req"), os.NewFile(4, "ack")
	// A grandchild that blocks on a pipe of its own.
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	idle := exec.Command(exe, "idle")
	idle.Stdout, idle.Stderr = os.Stdout, os.Stderr
	idle.ExtraFiles = []*os.File{r}
	if err := idle.Start(); err != nil {
		return err
	}
	r.Close()
	defer w.Close()
	var b [8]byte
	for {
		if _, err := readFull(req, b[:]); err != nil {
			return nil // main is gone
		}
		v := binary.LittleEndian.Uint64(b[:])
		pattern(seg, v)
		binary.LittleEndian.PutUint64(seg, v)
		if _, err := ack.Write(b[:]); err != nil {
			return nil
		}
	}
}

func readFull(f *os.File, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := f.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

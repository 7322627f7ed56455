// Command kvapp is the reference application of the failover chaos tests:
// a TCP counter store that keeps its state in memory and appends every
// applied increment to a data file, so that a restored copy can be checked
// against its own file and double application of a request is detectable.
//
// Flags: -listen ADDR (TCP, required), -data DIR (required: the data file
// is DIR/kv.log), -ballast MIB (extra resident memory of random content,
// to make the process heavier to checkpoint and restore).
//
// It answers one-line commands on ADDR, one answer line per command, and
// closes a connection when the client closes its side:
//
//	INCR KEY N ID -> VALUE   adds N to KEY once per ID. A repeated ID (a
//	                         client retry, or a message delivered twice) is
//	                         not applied again: its delivery is counted and
//	                         the answer is the value the first application
//	                         gave.
//	GET KEY       -> VALUE   (0 for an unknown key)
//	STATS         -> stats APPLIED DUPS KEYS PARTIAL   (DUPS: repeated
//	                 deliveries; PARTIAL: connections that ended in the
//	                 middle of a line)
//	IDS           -> one line "ID VALUE DUPS" per applied ID in order of
//	                 application, then "end"
//	CHECK         -> "ok APPLIED" when the data file, read back, holds each
//	                 applied ID exactly once, in order, with the values in
//	                 memory; else "bad REASON"
//
// Anything else is answered "ERR REASON". Each data-file line is
// "ID KEY N VALUE", written by one write(2) while the state is locked.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// maxLine bounds one command line read directly from a client.
const maxLine = 4 << 20

type applied struct {
	key   string
	n     int64
	value int64
	dups  int
}

type store struct {
	mu      sync.Mutex
	values  map[string]int64
	ids     map[string]*applied
	order   []string
	dups    int
	partial int
	file    *os.File
	path    string
	ballast []byte
}

func main() {
	listen := flag.String("listen", "", "TCP address to answer on")
	data := flag.String("data", "", "directory of the data file")
	ballast := flag.Int("ballast", 0, "MiB of resident random memory to hold")
	flag.Parse()
	if err := run(*listen, *data, *ballast); err != nil {
		fmt.Fprintln(os.Stderr, "kvapp:", err)
		os.Exit(1)
	}
}

func run(listen, dir string, ballastMiB int) error {
	if listen == "" || dir == "" {
		return errors.New("-listen and -data are required")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	s := &store{values: map[string]int64{}, ids: map[string]*applied{}, path: filepath.Join(dir, "kv.log")}
	if err := s.load(); err != nil {
		return err
	}
	f, err := os.OpenFile(s.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	s.file = f
	if ballastMiB > 0 {
		s.ballast = make([]byte, ballastMiB<<20)
		r := rand.NewChaCha8([32]byte{1})
		_, _ = r.Read(s.ballast)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go s.serve(c)
	}
}

// load rebuilds the state from an existing data file (a plain restart).
func (s *store) load() error {
	recs, err := readLog(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, r := range recs {
		s.values[r.key] = r.value
		s.ids[r.id] = &applied{key: r.key, n: r.n, value: r.value}
		s.order = append(s.order, r.id)
	}
	return nil
}

func (s *store) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 64<<10)
	w := bufio.NewWriter(c)
	for {
		line, err := readLine(r)
		if err != nil {
			if line != "" {
				s.mu.Lock()
				s.partial++
				s.mu.Unlock()
			}
			if !errors.Is(err, io.EOF) {
				fmt.Fprintf(w, "ERR %v\n", err)
				_ = w.Flush()
			}
			return
		}
		s.command(w, strings.Fields(line))
		// Answer at once unless more commands are already here.
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

// readLine returns the next line; with an error, the bytes read before it.
func readLine(r *bufio.Reader) (string, error) {
	var b []byte
	for {
		chunk, err := r.ReadSlice('\n')
		b = append(b, chunk...)
		if len(b) > maxLine {
			return string(b), fmt.Errorf("line over %d bytes", maxLine)
		}
		if err == nil {
			return string(b), nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return string(b), err
		}
	}
}

func (s *store) command(w io.Writer, f []string) {
	if len(f) == 0 {
		fmt.Fprintln(w, "ERR empty command")
		return
	}
	switch {
	case f[0] == "INCR" && len(f) == 4:
		n, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			fmt.Fprintf(w, "ERR bad increment %q\n", f[2])
			return
		}
		v, err := s.incr(f[1], n, f[3])
		if err != nil {
			fmt.Fprintf(w, "ERR %v\n", err)
			return
		}
		fmt.Fprintln(w, v)
	case f[0] == "GET" && len(f) == 2:
		s.mu.Lock()
		v := s.values[f[1]]
		s.mu.Unlock()
		fmt.Fprintln(w, v)
	case f[0] == "STATS" && len(f) == 1:
		s.mu.Lock()
		fmt.Fprintf(w, "stats %d %d %d %d\n", len(s.order), s.dups, len(s.values), s.partial)
		s.mu.Unlock()
	case f[0] == "IDS" && len(f) == 1:
		s.mu.Lock()
		for _, id := range s.order {
			a := s.ids[id]
			fmt.Fprintf(w, "%s %d %d\n", id, a.value, a.dups)
		}
		s.mu.Unlock()
		fmt.Fprintln(w, "end")
	case f[0] == "CHECK" && len(f) == 1:
		if err := s.check(); err != nil {
			fmt.Fprintf(w, "bad %v\n", err)
			return
		}
		s.mu.Lock()
		fmt.Fprintf(w, "ok %d\n", len(s.order))
		s.mu.Unlock()
	default:
		fmt.Fprintf(w, "ERR unknown command %q with %d argument(s)\n", f[0], len(f)-1)
	}
}

// incr applies an increment once per id and appends it to the data file.
func (s *store) incr(key string, n int64, id string) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, ok := s.ids[id]; ok {
		a.dups++
		s.dups++
		return a.value, nil
	}
	v := s.values[key] + n
	line := fmt.Sprintf("%s %s %d %d\n", id, key, n, v)
	if _, err := s.file.Write([]byte(line)); err != nil {
		return 0, fmt.Errorf("data file: %w", err)
	}
	s.values[key] = v
	s.ids[id] = &applied{key: key, n: n, value: v}
	s.order = append(s.order, id)
	return v, nil
}

type record struct {
	id, key  string
	n, value int64
}

func readLog(path string) ([]record, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []record
	for i, line := range strings.Split(string(b), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 4 {
			return nil, fmt.Errorf("data file line %d: %q", i+1, line)
		}
		n, err1 := strconv.ParseInt(f[2], 10, 64)
		v, err2 := strconv.ParseInt(f[3], 10, 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("data file line %d: %q", i+1, line)
		}
		out = append(out, record{id: f[0], key: f[1], n: n, value: v})
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		return nil, fmt.Errorf("data file ends in a partial line")
	}
	return out, nil
}

// check compares the data file with the state in memory.
func (s *store) check() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	recs, err := readLog(s.path)
	if err != nil {
		return err
	}
	if len(recs) != len(s.order) {
		return fmt.Errorf("data file has %d increment(s), memory %d", len(recs), len(s.order))
	}
	seen := map[string]bool{}
	sums := map[string]int64{}
	for i, r := range recs {
		if seen[r.id] {
			return fmt.Errorf("id %s applied twice in the data file (line %d)", r.id, i+1)
		}
		seen[r.id] = true
		sums[r.key] += r.n
		if sums[r.key] != r.value {
			return fmt.Errorf("line %d: id %s gives %s=%d, the increments sum to %d", i+1, r.id, r.key, r.value, sums[r.key])
		}
		if s.order[i] != r.id {
			return fmt.Errorf("line %d is id %s, memory has %s", i+1, r.id, s.order[i])
		}
		if a := s.ids[r.id]; a.value != r.value || a.key != r.key || a.n != r.n {
			return fmt.Errorf("id %s: data file %s+%d=%d, memory %s+%d=%d", r.id, r.key, r.n, r.value, a.key, a.n, a.value)
		}
	}
	for k, v := range s.values {
		if sums[k] != v {
			return fmt.Errorf("key %s is %d in memory, %d in the data file", k, v, sums[k])
		}
	}
	if len(sums) != len(s.values) {
		return fmt.Errorf("data file has %d key(s), memory %d", len(sums), len(s.values))
	}
	return nil
}

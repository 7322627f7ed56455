// Package demoapp is the small stateful application `doppel demo`
// replicates, and the client that drives load against it.
//
// The server is a TCP key-value store with a line protocol. It keeps its
// state in memory and appends every write to a log file in its data
// directory (replayed when it starts cold), so both its memory and a data
// file travel with each epoch:
//
//	PING            → PONG
//	GET key         → value, or (nil)
//	SET key value   → OK
//	INCR key        → the new integer value
//	STATS           → keys N writes N
//
// Answers are one line each. Keys and values are single words.
package demoapp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// LogName is the file, in the data directory, that every write is
// appended to.
const LogName = "kv.log"

// Config configures a Server.
type Config struct {
	// Listen is the TCP address to serve, e.g. 127.0.0.1:7070.
	Listen string
	// DataDir holds LogName; it is created when missing.
	DataDir string
	// Logger receives the server's log; nil discards it.
	Logger *slog.Logger
}

// DefaultConfig serves on 127.0.0.1:7070 with its data in dir.
func DefaultConfig(dir string) Config {
	return Config{Listen: "127.0.0.1:7070", DataDir: dir}
}

// Server is the key-value store. Its methods are safe for concurrent use.
type Server struct {
	cfg    Config
	log    *slog.Logger
	mu     sync.Mutex
	data   map[string]string
	writes int64
	file   *os.File
	ln     net.Listener
}

// New opens the data directory, replays its log and listens.
func New(cfg Config) (*Server, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("demo app: %w", err)
	}
	s := &Server{cfg: cfg, log: log, data: map[string]string{}}
	path := filepath.Join(cfg.DataDir, LogName)
	if err := s.replay(path); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("demo app: %w", err)
	}
	s.file = f
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("demo app: %w", err)
	}
	s.ln = ln
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// replay applies the writes of an existing log.
func (s *Server) replay(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("demo app: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 3 && fs[0] == "SET" {
			s.data[fs[1]] = fs[2]
			s.writes++
		}
	}
	return sc.Err()
}

// Serve answers clients until ctx ends.
func (s *Server) Serve(ctx context.Context) error {
	var wg sync.WaitGroup
	conns := map[net.Conn]struct{}{}
	var cmu sync.Mutex
	stop := context.AfterFunc(ctx, func() {
		s.ln.Close()
		cmu.Lock()
		for c := range conns {
			c.Close()
		}
		cmu.Unlock()
	})
	defer stop()
	defer s.file.Close()
	s.log.Info("demo app serving", "addr", s.Addr(), "data", s.cfg.DataDir)
	for {
		c, err := s.ln.Accept()
		if err != nil {
			wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("demo app: %w", err)
		}
		cmu.Lock()
		conns[c] = struct{}{}
		cmu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.handle(c)
			cmu.Lock()
			delete(conns, c)
			cmu.Unlock()
		}()
	}
}

func (s *Server) handle(c net.Conn) {
	defer c.Close()
	sc := bufio.NewScanner(c)
	w := bufio.NewWriter(c)
	for sc.Scan() {
		fmt.Fprintln(w, s.Do(sc.Text()))
		if err := w.Flush(); err != nil {
			return
		}
	}
}

// Do executes one command line and returns the answer.
func (s *Server) Do(line string) string {
	fs := strings.Fields(line)
	if len(fs) == 0 {
		return "ERR empty command"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch strings.ToUpper(fs[0]) {
	case "PING":
		return "PONG"
	case "GET":
		if len(fs) != 2 {
			return "ERR usage: GET key"
		}
		if v, ok := s.data[fs[1]]; ok {
			return v
		}
		return "(nil)"
	case "SET":
		if len(fs) != 3 {
			return "ERR usage: SET key value"
		}
		if err := s.set(fs[1], fs[2]); err != nil {
			return "ERR " + err.Error()
		}
		return "OK"
	case "INCR":
		if len(fs) != 2 {
			return "ERR usage: INCR key"
		}
		n, _ := strconv.ParseInt(s.data[fs[1]], 10, 64)
		n++
		if err := s.set(fs[1], strconv.FormatInt(n, 10)); err != nil {
			return "ERR " + err.Error()
		}
		return strconv.FormatInt(n, 10)
	case "STATS":
		return fmt.Sprintf("keys %d writes %d", len(s.data), s.writes)
	}
	return "ERR unknown command " + fs[0]
}

// set stores a value and appends it to the log. The caller holds s.mu.
func (s *Server) set(k, v string) error {
	if _, err := fmt.Fprintf(s.file, "SET %s %s\n", k, v); err != nil {
		return err
	}
	s.data[k] = v
	s.writes++
	return nil
}

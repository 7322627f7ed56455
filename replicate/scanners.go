package replicate

import (
	"context"
	"slices"
	"sync"

	"doppel/introspect"
)

// scanners keeps one introspect.Scanner per app for the RM phase: a
// Scanner reused across epochs keeps its buffers and the procfs files of
// the app's processes, which makes the scan of the frozen tree (part of
// the freeze) about a fifth cheaper than a new one.
type scanners struct {
	mu sync.Mutex
	m  map[string]*appScanner
}

type appScanner struct {
	mu   sync.Mutex // a Scanner is not safe for concurrent use
	sc   *introspect.Scanner
	data []string // the DataPaths it was made for
}

// scan scans the tree at pid of app name with cfg, reusing the app's
// Scanner when it was made for the same data paths.
func (s *scanners) scan(ctx context.Context, name string, pid int, cfg introspect.Config) (*introspect.Graph, error) {
	s.mu.Lock()
	if s.m == nil {
		s.m = map[string]*appScanner{}
	}
	as := s.m[name]
	if as == nil {
		as = &appScanner{}
		s.m[name] = as
	}
	s.mu.Unlock()
	as.mu.Lock()
	defer as.mu.Unlock()
	if as.sc == nil || !slices.Equal(as.data, cfg.DataPaths) {
		if as.sc != nil {
			as.sc.Close()
		}
		as.sc, as.data = introspect.NewScanner(cfg), slices.Clone(cfg.DataPaths)
	}
	return as.sc.Scan(ctx, pid)
}

// drop closes the Scanner of app name (stopped, forgotten) or, with name
// empty, every Scanner.
func (s *scanners) drop(name string) {
	s.mu.Lock()
	var drop []*appScanner
	for n, as := range s.m {
		if name == "" || n == name {
			drop = append(drop, as)
			delete(s.m, n)
		}
	}
	s.mu.Unlock()
	for _, as := range drop {
		as.mu.Lock()
		if as.sc != nil {
			as.sc.Close()
			as.sc = nil
		}
		as.mu.Unlock()
	}
}

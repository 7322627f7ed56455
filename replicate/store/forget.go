package store

import (
	"context"
	"fmt"
	"os"
)

// Forget deletes every epoch of an app (the app left the cluster) and
// collects what only they referenced. An epoch being read (pinned) makes it
// fail without deleting anything.
func (s *Store) Forget(ctx context.Context, app string) error {
	if !ValidApp(app) {
		return fmt.Errorf("%w: %q", ErrBadName, app)
	}
	s.gcMu.Lock()
	ns, err := s.Epochs(app)
	if err != nil {
		s.gcMu.Unlock()
		return err
	}
	if err := s.doom(app, ns); err != nil {
		s.gcMu.Unlock()
		return fmt.Errorf("forget: %w", err)
	}
	defer s.undoom(app, ns)
	for _, n := range ns {
		if err := s.deleteEpoch(app, n); err != nil {
			s.gcMu.Unlock()
			return err
		}
	}
	if err := os.RemoveAll(s.appDir(app)); err != nil {
		s.gcMu.Unlock()
		return fmt.Errorf("forget %s: %w", app, err)
	}
	s.gcMu.Unlock()
	_, err = s.GC(ctx)
	return err
}

// Discard deletes the app's epochs ns: they belong to another OP's line of
// epochs than the one being received. It deletes nothing and fails when
// one of them is being read (pinned). The content only they referenced
// goes at the next GC. It returns how many it deleted.
func (s *Store) Discard(app string, ns []uint64) (int, error) {
	if !ValidApp(app) {
		return 0, fmt.Errorf("%w: %q", ErrBadName, app)
	}
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	if err := s.doom(app, ns); err != nil {
		return 0, fmt.Errorf("discard: %w", err)
	}
	defer s.undoom(app, ns)
	for i, e := range ns {
		if err := s.deleteEpoch(app, e); err != nil {
			return i, err
		}
	}
	return len(ns), nil
}

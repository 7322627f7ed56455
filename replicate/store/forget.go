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
	s.mu.RLock()
	for _, n := range ns {
		if s.pins[epochKey{app, n}] > 0 {
			s.mu.RUnlock()
			s.gcMu.Unlock()
			return fmt.Errorf("forget %s: epoch %d is being read", app, n)
		}
	}
	s.mu.RUnlock()
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

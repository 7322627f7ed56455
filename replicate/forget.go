package replicate

import (
	"context"
	"fmt"
	"os"

	"doppel/replicate/freezer"
)

// Forget removes an app from this node: kills it if it runs, deletes its
// epochs, its registration and its logs, and its freezer cgroup.
func (e *Engine) Forget(ctx context.Context, name string) error {
	unlock, err := e.apps.lock(name, false)
	if err != nil {
		return err
	}
	defer unlock()
	if st, err := e.apps.load(name); err == nil {
		if err := e.kill(ctx, st); err != nil {
			return err
		}
	}
	e.standby.drop(name)
	e.scanners.drop(name)
	if err := e.store.Forget(ctx, name); err != nil {
		return fmt.Errorf("forget %s: %w", name, err)
	}
	if cg, err := freezer.Open(e.cfg.Freezer, name); err == nil {
		_ = cg.Remove()
	}
	if err := os.RemoveAll(e.apps.path(name)); err != nil {
		return fmt.Errorf("forget %s: %w", name, err)
	}
	e.log.Info("app forgotten", "app", name)
	return nil
}

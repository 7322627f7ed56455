package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"doppel/replicate/freezer"
)

// RemoveAppCgroup removes the freezer cgroup of an app that was stopped,
// and its parent (a parent of the benchmark's own, see Config), waiting
// up to timeout for the last tasks of the killed tree to leave it.
func RemoveAppCgroup(cfg freezer.Config, app string, timeout time.Duration) error {
	cg, err := freezer.Open(cfg, app)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		pids, _ := cg.Pids()
		if len(pids) == 0 {
			if err = cg.Remove(); err == nil {
				break
			}
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("pids %v still in it", pids)
			}
			return fmt.Errorf("remove cgroup %s: %w", cg.Path, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := os.Remove(filepath.Dir(cg.Path)); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove cgroup: %w", err)
	}
	return nil
}

package replicate

import (
	"context"
	"fmt"

	"doppel/replicate/freezer"
)

// Freeze stops every process of a running app at once and leaves it so
// (fencing: an OP cut off from the cluster must not act on anything); Thaw
// resumes it.
func (e *Engine) Freeze(ctx context.Context, name string) error {
	st, err := e.apps.load(name)
	if err != nil {
		return err
	}
	if !alive(st.Pid) {
		return fmt.Errorf("%w: %s", ErrNotRunning, name)
	}
	cg, err := freezer.Open(e.cfg.Freezer, name)
	if err != nil {
		return err
	}
	if err := e.ensureInCgroup(cg, st); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.FreezeTimeout)
	defer cancel()
	return cg.Freeze(ctx)
}

// Thaw resumes an app stopped by Freeze.
func (e *Engine) Thaw(name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	cg, err := freezer.Open(e.cfg.Freezer, name)
	if err != nil {
		return err
	}
	return cg.Thaw()
}

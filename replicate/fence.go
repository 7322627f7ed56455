package replicate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"doppel/replicate/freezer"
)

// freezeLockWait bounds how long Freeze waits for a checkpoint or restore
// of the app to end.
const freezeLockWait = time.Minute

// Freeze stops every process of a running app at once and leaves it so
// (fencing: an OP cut off from the cluster must not act on anything); Thaw
// resumes it.
//
// A checkpoint or restore under way ends first (Freeze waits for the app's
// lock, up to a minute): its CRIU dump seizes the processes by thawing the
// cgroup it froze, and a freeze at that moment stops them where CRIU waits
// for them, for good. A checkpoint keeps an app that is frozen when it
// starts frozen.
func (e *Engine) Freeze(ctx context.Context, name string) error {
	unlock, err := e.lockWait(ctx, name, freezeLockWait)
	if err != nil {
		return err
	}
	defer unlock()
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

// Thaw resumes an app stopped by Freeze. Like Freeze, it waits for a
// checkpoint or restore under way to end: a checkpoint that started on a
// frozen app leaves it frozen when it ends, which would undo a thaw made
// meanwhile.
func (e *Engine) Thaw(name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	unlock, err := e.lockWait(context.Background(), name, freezeLockWait)
	switch {
	case err == nil:
		defer unlock()
	case !errors.Is(err, ErrNoApp): // an app removed meanwhile: thaw what is left
		return err
	}
	cg, err := freezer.Open(e.cfg.Freezer, name)
	if err != nil {
		return err
	}
	return cg.Thaw()
}

// lockWait takes the app's lock, waiting up to wait while another
// operation holds it.
func (e *Engine) lockWait(ctx context.Context, name string, wait time.Duration) (func(), error) {
	deadline := time.Now().Add(wait)
	for {
		unlock, err := e.apps.lock(name, false)
		if !errors.Is(err, ErrBusy) || time.Now().After(deadline) {
			return unlock, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

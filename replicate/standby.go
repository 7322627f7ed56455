package replicate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"doppel/replicate/store"
)

// A standby is a clone's restore-ready image directory of an app: the
// newest epoch it received, materialised, and brought up to date epoch by
// epoch by rewriting only the pages and image files that changed, each
// checked against its hash as it is written (so a restore from it skips
// checking the whole directory again). A restore
// (a promotion after a failure, the target of a relocation) then starts
// from it instead of writing every image of the app, which on a large app
// is most of the time a restore takes. A standby lives in the work
// directory (a tmpfs by default), so it costs about the app's memory size
// there; Config.NoStandby turns standbys off. It is kept in memory only: a
// restarted engine removes what an earlier one left.
type standbys struct {
	mu   sync.Mutex
	root string // in the engine's work directory
	m    map[string]*standby
	used atomic.Int64 // restores that started from a standby
}

type standby struct {
	mu    sync.Mutex // held while the directory is updated or taken
	dir   string
	epoch uint64                     // 0: empty (never filled, or dropped after an error)
	files map[string]store.ImageFile // what dir holds
	// digest is that of the epoch dir holds: a number alone does not say
	// which OP made it.
	digest store.Hash
	// taken is the epoch a restore last took the directory at: the app
	// runs from it here, so nothing up to it needs a standby any more.
	taken uint64
	short bool // skipped for want of space (logged once)
}

// freeBytes is the space available to this process in dir's file system.
func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

func (s *standbys) get(name string, create bool) *standby {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb := s.m[name]
	if sb == nil && create {
		if s.m == nil {
			s.m = map[string]*standby{}
		}
		sb = &standby{dir: filepath.Join(s.root, name)}
		s.m[name] = sb
	}
	return sb
}

// drop forgets an app's standby and removes its directory.
func (s *standbys) drop(name string) {
	s.mu.Lock()
	sb := s.m[name]
	delete(s.m, name)
	s.mu.Unlock()
	if sb != nil {
		sb.mu.Lock()
		sb.clear()
		sb.mu.Unlock()
	}
}

func (sb *standby) clear() {
	_ = os.RemoveAll(sb.dir)
	sb.epoch, sb.files, sb.digest = 0, nil, store.Hash{}
}

// update brings sb (locked) to epoch ep; on error sb is emptied, so that a
// half-updated directory is never used.
func (sb *standby) update(ctx context.Context, st *store.Store, ep *store.Epoch) error {
	digest, err := ep.Digest()
	if err != nil {
		return err
	}
	if sb.epoch == ep.Manifest.Epoch && sb.digest == digest {
		return nil
	}
	if sb.epoch == 0 {
		sb.clear()
		if err := st.Materialise(ctx, ep.Manifest.App, ep.Manifest.Epoch, sb.dir); err != nil {
			sb.clear()
			return err
		}
		// Checked once, here; updates check what they write.
		if err := verifyImages(ctx, sb.dir, ep.Images); err != nil {
			sb.clear()
			return err
		}
	} else {
		keep := make(map[string]bool, len(ep.Images))
		for i := range ep.Images {
			if err := ctx.Err(); err != nil {
				sb.clear()
				return err
			}
			f := &ep.Images[i]
			keep[f.Name] = true
			var old *store.ImageFile
			if o, ok := sb.files[f.Name]; ok {
				old = &o
			}
			if err := st.UpdateImage(sb.dir, old, f); err != nil {
				sb.clear()
				return fmt.Errorf("%s: %w", f.Name, err)
			}
		}
		for name := range sb.files {
			if !keep[name] {
				if err := os.Remove(filepath.Join(sb.dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
					sb.clear()
					return err
				}
			}
		}
	}
	sb.files = make(map[string]store.ImageFile, len(ep.Images))
	for _, f := range ep.Images {
		sb.files[f.Name] = f
	}
	sb.epoch, sb.digest = ep.Manifest.Epoch, digest
	return nil
}

// Standby brings this node's restore-ready copy of app name to epoch n
// (0: the newest), so that a later Restore of that epoch starts without
// writing every image. A clone calls it after each epoch it receives; it
// does nothing when standbys are off.
func (e *Engine) Standby(ctx context.Context, name string, n uint64) error {
	if e.cfg.NoStandby {
		return nil
	}
	if n == 0 {
		var err error
		if n, err = e.store.Latest(name); err != nil {
			return err
		}
	}
	ep, release, err := e.store.Pin(name, n)
	if err != nil {
		return err
	}
	defer release()
	sb := e.standby.get(name, true)
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.epoch > n || sb.taken >= n {
		return nil // a newer epoch is there already, or runs here
	}
	// The work directory also takes this node's dumps: a standby never
	// leaves less free there than the epoch's size (twice that to fill
	// one), so a dump of an app as large still fits.
	var need int64
	for _, f := range ep.Images {
		need += f.Size
	}
	if sb.epoch == 0 {
		need *= 2
	}
	if free, err := freeBytes(e.cfg.WorkDir); err == nil && free < need {
		had := sb.epoch != 0
		sb.clear()
		if had || !sb.short {
			e.log.Info("no standby copy: the work directory is short of space", "app", name, "epoch", n,
				"free", free, "need", need, "dir", e.cfg.WorkDir)
		}
		sb.short = true
		return nil
	}
	sb.short = false
	if err := sb.update(ctx, e.store, ep); err != nil {
		return fmt.Errorf("standby of %s epoch %d: %w", name, n, err)
	}
	return nil
}

// takeStandby moves the app's standby, brought to epoch ep, to dir (which
// must not exist, on the same file system) for a restore; false when there
// is none (then the caller materialises the epoch).
func (e *Engine) takeStandby(ctx context.Context, ep *store.Epoch, dir string) bool {
	name := ep.Manifest.App
	sb := e.standby.get(name, false)
	if sb == nil {
		return false
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.epoch == 0 {
		return false
	}
	if err := sb.update(ctx, e.store, ep); err != nil {
		e.log.Warn("standby unusable; materialising the epoch", "app", name, "epoch", ep.Manifest.Epoch, "err", err)
		return false
	}
	if err := os.Rename(sb.dir, dir); err != nil {
		e.log.Warn("standby unusable; materialising the epoch", "app", name, "epoch", ep.Manifest.Epoch, "err", err)
		sb.clear()
		return false
	}
	sb.epoch, sb.files, sb.digest, sb.taken = 0, nil, store.Hash{}, ep.Manifest.Epoch
	e.standby.used.Add(1)
	return true
}

package replicate

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// workRootPrefix names an engine's directory in the work directory.
const workRootPrefix = "doppel-work-"

// openWorkRoot makes this engine's own directory in the work directory
// (one per state directory: several nodes of one machine share /dev/shm)
// and locks it for as long as the engine lives. Everything the engine
// writes there (dumps, restores, standby copies) goes under it, so that a
// new engine removes what a killed one left: its own directory's content
// once it holds the lock, and the directory of any other engine whose lock
// nobody holds any more (its node was killed and its state directory
// removed).
func openWorkRoot(workDir, stateDir string, log *slog.Logger) (string, *os.File, error) {
	sum := sha256.Sum256([]byte(stateDir))
	root := filepath.Join(workDir, workRootPrefix+hex.EncodeToString(sum[:4]))
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", nil, err
	}
	lock, err := os.OpenFile(filepath.Join(root, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return "", nil, err
	}
	// The lock first: the directory of a live engine is never touched.
	// (The store's lock on the state directory already keeps a second
	// engine out; this one covers the work directory on its own.)
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return "", nil, fmt.Errorf("%s is in use by another engine of state directory %s: %w", root, stateDir, err)
	}
	ents, err := os.ReadDir(root)
	if err != nil {
		lock.Close()
		return "", nil, err
	}
	for _, ent := range ents {
		if ent.Name() == ".lock" {
			continue
		}
		if err := os.RemoveAll(filepath.Join(root, ent.Name())); err != nil {
			lock.Close()
			return "", nil, err
		}
	}
	if err := lock.Truncate(0); err == nil {
		_, _ = lock.WriteAt([]byte(stateDir+"\n"), 0)
	}
	sweepWorkRoots(workDir, root, log)
	return root, lock, nil
}

// sweepWorkRoots removes the directories of engines that are gone.
func sweepWorkRoots(workDir, self string, log *slog.Logger) {
	ents, err := os.ReadDir(workDir)
	if err != nil {
		return
	}
	for _, ent := range ents {
		dir := filepath.Join(workDir, ent.Name())
		if !ent.IsDir() || !strings.HasPrefix(ent.Name(), workRootPrefix) || dir == self {
			continue
		}
		f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR, 0)
		if err != nil {
			continue // not ours, or being made right now
		}
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			if rerr := os.RemoveAll(dir); rerr != nil {
				log.Warn("cannot remove the work directory of an engine that is gone", "dir", dir, "err", rerr)
			} else {
				log.Info("removed the work directory of an engine that is gone", "dir", dir)
			}
		} else if !errors.Is(err, unix.EWOULDBLOCK) {
			log.Warn("cannot lock a work directory", "dir", dir, "err", err)
		}
		f.Close()
	}
}

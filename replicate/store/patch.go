package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// UpdateImage turns the file dir/f.Name, which holds the content of old
// (nil: whatever it holds, or nothing), into f's content, rewriting only
// what differs: the pages of a CRIU pages image whose hash changed (a page
// that became zero becomes a hole), and any other file whole when its
// content changed. It is how a clone keeps a restore-ready image directory
// up to date as epochs arrive (see replicate's standby).
func (s *Store) UpdateImage(dir string, old, f *ImageFile) error {
	path := filepath.Join(dir, f.Name)
	if old != nil && old.Name == f.Name && sameImage(old, f) {
		return nil
	}
	if old == nil || old.Kind != KindPages || f.Kind != KindPages {
		if err := os.RemoveAll(path); err != nil {
			return err
		}
		return s.writeImage(dir, f)
	}
	out, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if err := s.patchContent(out, old.Hashes, f.Hashes, f.Size); err != nil {
		_ = out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(path, f.Mode.Perm())
}

// patchContent rewrites the pages of out whose hash in hs differs from old
// (out holds old's content), then truncates out to size.
func (s *Store) patchContent(out *os.File, old, hs []Hash, size int64) error {
	same := func(i int) bool { return i < len(old) && old[i] == hs[i] }
	for i := 0; i < len(hs); {
		if same(i) {
			i++
			continue
		}
		off := int64(i) * PageSize
		if hs[i].IsZeroPage() {
			if err := zeroRange(out, off, PageSize); err != nil {
				return err
			}
			i++
			continue
		}
		first, err := s.lookup(hs[i])
		if err != nil {
			return err
		}
		end := first.off + int64(first.n)
		j := i + 1
		for ; j < len(hs) && !same(j) && !hs[j].IsZeroPage(); j++ {
			s.mu.RLock()
			l, ok := s.idx[hs[j]]
			s.mu.RUnlock()
			if !ok || l.p != first.p || l.off != end {
				break
			}
			end += int64(l.n)
		}
		err = copyRange(out, off, first.p.f, first.off, end-first.off)
		first.p.release()
		if err != nil {
			return err
		}
		i = j
	}
	if int64(len(hs))*PageSize < size {
		return fmt.Errorf("%w: %d pages for %d bytes", ErrCorrupt, len(hs), size)
	}
	return out.Truncate(size)
}

// zeroRange makes n bytes at off read as zeros: a hole where the file
// system can punch one, written zeros elsewhere.
func zeroRange(f *os.File, off, n int64) error {
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err == nil || !(errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL)) {
		return err
	}
	_, err = f.WriteAt(make([]byte, n), off)
	return err
}

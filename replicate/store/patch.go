package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// UpdateImage turns the file dir/f.Name, which holds the content of old
// (nil: whatever it holds, or nothing), into f's content, rewriting only
// what differs: the pages of a CRIU pages image whose hash changed (a page
// that became zero becomes a hole), and any other file whole when its
// content changed. What it writes it reads back and checks against its
// hashes. It is how a clone keeps a restore-ready image directory up to
// date as epochs arrive (see replicate's standby).
func (s *Store) UpdateImage(dir string, old, f *ImageFile) error {
	path := filepath.Join(dir, f.Name)
	if old != nil && old.Name == f.Name && sameImage(old, f) {
		return nil
	}
	if old == nil || old.Kind != KindPages || f.Kind != KindPages {
		if err := os.RemoveAll(path); err != nil {
			return err
		}
		if err := s.writeImage(dir, f); err != nil {
			return err
		}
		return VerifyImage(path, f)
	}
	out, err := os.OpenFile(path, os.O_RDWR, 0)
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
		if err := checkRange(out, off, end-first.off, hs[i:j]); err != nil {
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

// checkRange reads n bytes of f at off back and checks them, page by page,
// against hs.
func checkRange(f *os.File, off, n int64, hs []Hash) error {
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil {
		return fmt.Errorf("read back at %d: %w", off, err)
	}
	for k := range hs {
		if Sum(buf[k*PageSize:min(len(buf), (k+1)*PageSize)]) != hs[k] {
			return fmt.Errorf("%w: page at %d does not match its hash %s after the copy", ErrCorrupt, off+int64(k)*PageSize, hs[k])
		}
	}
	return nil
}

// VerifyImage checks the file at path against f: its size, and each
// unit's content against its hash.
func VerifyImage(path string, f *ImageFile) error {
	if f.Kind == KindSymlink {
		t, err := os.Readlink(path)
		if err != nil {
			return err
		}
		if t != f.Target {
			return fmt.Errorf("%w: %s links to %q, recorded %q", ErrCorrupt, f.Name, t, f.Target)
		}
		return nil
	}
	unit := f.Kind.unit()
	r, err := os.Open(path)
	if err != nil {
		return err
	}
	defer r.Close()
	fi, err := r.Stat()
	if err != nil {
		return err
	}
	if fi.Size() != f.Size {
		return fmt.Errorf("%w: %s is %d bytes, recorded %d", ErrCorrupt, f.Name, fi.Size(), f.Size)
	}
	if want := (f.Size + unit - 1) / unit; int64(len(f.Hashes)) != want {
		return fmt.Errorf("%w: %s has %d hashes for %d bytes", ErrCorrupt, f.Name, len(f.Hashes), f.Size)
	}
	buf := make([]byte, min(f.Size, ChunkSize))
	var off int64
	for off < f.Size {
		n, err := io.ReadFull(r, buf[:min(int64(len(buf)), f.Size-off)])
		if err != nil {
			return err
		}
		for b := buf[:n]; len(b) > 0; {
			u := b[:min(int64(len(b)), unit)]
			if Sum(u) != f.Hashes[off/unit] {
				return fmt.Errorf("%w: %s at offset %d does not match its hash %s", ErrCorrupt, f.Name, off, f.Hashes[off/unit])
			}
			off += int64(len(u))
			b = b[len(u):]
		}
	}
	return nil
}

package store

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Materialise writes the CRIU image directory of a complete epoch into dir
// (created if missing; it must be empty), byte-identical to the directory
// that was ingested. Page runs that lie next to each other in a pack are
// copied in the kernel; zero pages become holes. The epoch is pinned while
// it is written. Nothing is fsynced: a crashed materialisation is simply
// redone.
func (s *Store) Materialise(ctx context.Context, app string, n uint64, dir string) error {
	ep, release, err := s.Pin(app, n)
	if err != nil {
		return err
	}
	defer release()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("materialise %s epoch %d: %w", app, n, err)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) > 0 {
		if err == nil {
			err = fs.ErrExist
		}
		return fmt.Errorf("materialise %s epoch %d: %s not empty: %w", app, n, dir, err)
	}
	for i := range ep.Images {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.writeImage(dir, &ep.Images[i]); err != nil {
			return fmt.Errorf("materialise %s epoch %d: %s: %w", app, n, ep.Images[i].Name, err)
		}
	}
	return nil
}

func (s *Store) writeImage(dir string, f *ImageFile) error {
	path := filepath.Join(dir, f.Name)
	if f.Kind == KindSymlink {
		return os.Symlink(f.Target, path)
	}
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.Mode.Perm()|0o200)
	if err != nil {
		return err
	}
	if err := s.WriteContent(out, f.Hashes, f.Size); err != nil {
		_ = out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(path, f.Mode.Perm())
}

// WriteContent writes the concatenation of the content of hs to out from
// offset 0 and truncates out to size. Zero pages are left as holes;
// contiguous records of one pack are copied with copy_file_range.
func (s *Store) WriteContent(out *os.File, hs []Hash, size int64) error {
	var off int64
	for i := 0; i < len(hs); {
		if hs[i].IsZeroPage() {
			off += PageSize
			i++
			continue
		}
		first, err := s.lookup(hs[i])
		if err != nil {
			return err
		}
		end := first.off + int64(first.n)
		j := i + 1
		for ; j < len(hs) && !hs[j].IsZeroPage(); j++ {
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
		off += end - first.off
		i = j
	}
	if off > size {
		return fmt.Errorf("%w: content is %d bytes, file size %d", ErrCorrupt, off, size)
	}
	return out.Truncate(size)
}

package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

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

// patchContent turns out, which holds the pages hashed old, into the
// pages hashed hs, then truncates it to size.
//
// A dump lists an address space's pages in address order, so a page that
// appears or goes (the heap grows, a runtime returns memory to the kernel)
// shifts every page after it in the file: compared position by position,
// nearly all of them would differ. The pages are therefore aligned by
// content first (alignPages): a page found in old, at or after the position
// where the previous one was found, is moved from there within the file
// instead of being copied from the store again, and only pages found
// nowhere in old are copied from the store and checked against their
// hashes. Moves only read what an earlier step has not overwritten: runs
// moving towards the start go first, in order, then runs moving towards
// the end, in reverse order, then the copies from the store.
func (s *Store) patchContent(out *os.File, old, hs []Hash, size int64) error {
	if int64(len(hs))*PageSize < size {
		return fmt.Errorf("%w: %d pages for %d bytes", ErrCorrupt, len(hs), size)
	}
	err := applyRuns(out, alignPages(old, hs), func(r pageRun) error {
		return s.fetchPages(out, r.dst, hs[r.dst:r.dst+r.n])
	})
	if err != nil {
		return err
	}
	return out.Truncate(size)
}

// applyRuns rewrites out as runs say: the moves in the order described at
// patchContent, then fetch for each run of pages that are not in out.
func applyRuns(out *os.File, runs []pageRun, fetch func(pageRun) error) error {
	var buf []byte
	move := func(r pageRun) error {
		if buf == nil {
			buf = make([]byte, moveChunk)
		}
		return moveRange(out, int64(r.dst)*PageSize, int64(r.src)*PageSize, int64(r.n)*PageSize, buf)
	}
	for _, r := range runs {
		if r.src >= 0 && r.src > r.dst {
			if err := move(r); err != nil {
				return err
			}
		}
	}
	for i := len(runs) - 1; i >= 0; i-- {
		if r := runs[i]; r.src >= 0 && r.src < r.dst {
			if err := move(r); err != nil {
				return err
			}
		}
	}
	for _, r := range runs {
		if r.src < 0 {
			if err := fetch(r); err != nil {
				return err
			}
		}
	}
	return nil
}

// moveChunk is the buffer size of moveRange.
const moveChunk = 1 << 20

// moveRange moves n bytes of f from src to dst (the ranges may overlap)
// through buf, in the order that reads every byte before it is
// overwritten.
func moveRange(f *os.File, dst, src, n int64, buf []byte) error {
	for done := int64(0); done < n; {
		c := min(n-done, int64(len(buf)))
		at := done // forward when moving towards the start
		if dst > src {
			at = n - done - c // backward when moving towards the end
		}
		if _, err := f.ReadAt(buf[:c], src+at); err != nil {
			return fmt.Errorf("move pages: read at %d: %w", src+at, err)
		}
		if _, err := f.WriteAt(buf[:c], dst+at); err != nil {
			return fmt.Errorf("move pages: %w", err)
		}
		done += c
	}
	return nil
}

// pageRun is a run of n pages of the new content starting at page dst:
// found in the old content at page src (the same place when src == dst),
// or, with src -1, to copy from the store.
type pageRun struct {
	dst, src, n int
}

// alignConfirm is how many pages after a page found away from its place
// must match too before the alignment jumps there: a page alone says
// little about a shift (equal pages repeat; a page copied from far away is
// no shift at all), and a wrong jump loses every page it skips.
const alignConfirm = 4

// alignPages matches the pages hashed hs against those hashed old, in
// order: each page of hs is taken from the next page of old when they
// match; a page that differs where the pages after it match in place is a
// changed page; any other is taken from the nearest later page of old
// with the same content that the next alignConfirm pages confirm; what
// remains (and every zero page, which becomes a hole) comes from the
// store. The runs cover hs in order, their sources in increasing order.
func alignPages(old, hs []Hash) []pageRun {
	var runs []pageRun
	add := func(dst, src int) {
		if l := len(runs) - 1; l >= 0 {
			r := &runs[l]
			if r.dst+r.n == dst && ((src < 0 && r.src < 0) || (src >= 0 && r.src >= 0 && r.src+r.n == src)) {
				r.n++
				return
			}
		}
		runs = append(runs, pageRun{dst: dst, src: src, n: 1})
	}
	// matches reports whether the alignConfirm pages after hs[i] follow
	// old[p] (as many as hs has).
	matches := func(i, p int) bool {
		for c := 1; c <= alignConfirm && i+c < len(hs); c++ {
			if p+c >= len(old) || old[p+c] != hs[i+c] {
				return false
			}
		}
		return true
	}
	var where map[Hash][]int32 // positions in old of each content, built on the first miss
	find := func(i, k int) int {
		if where == nil {
			where = make(map[Hash][]int32, len(old))
			for p, h := range old {
				if !h.IsZeroPage() {
					where[h] = append(where[h], int32(p))
				}
			}
		}
		ps := where[hs[i]]
		at, _ := slices.BinarySearch(ps, int32(k))
		for _, p := range ps[at:] {
			if matches(i, int(p)) {
				return int(p)
			}
		}
		return -1
	}
	k := 0 // the next page of old
	for i, h := range hs {
		switch {
		case k < len(old) && old[k] == h:
			add(i, k)
			k++
		case k < len(old) && i+1 < len(hs) && matches(i, k):
			add(i, -1) // changed in place
			k++
		case h.IsZeroPage():
			add(i, -1)
		default:
			if p := find(i, k); p >= 0 {
				add(i, p)
				k = p + 1
			} else {
				add(i, -1)
			}
		}
	}
	return runs
}

// fetchPages writes the pages hashed hs at page first of out from the
// store, checking what it wrote; zero pages become holes.
func (s *Store) fetchPages(out *os.File, first int, hs []Hash) error {
	for i := 0; i < len(hs); {
		off := int64(first+i) * PageSize
		if hs[i].IsZeroPage() {
			if err := zeroRange(out, off, PageSize); err != nil {
				return err
			}
			i++
			continue
		}
		l, err := s.lookup(hs[i])
		if err != nil {
			return err
		}
		end := l.off + int64(l.n)
		j := i + 1
		for ; j < len(hs) && !hs[j].IsZeroPage(); j++ {
			s.mu.RLock()
			next, ok := s.idx[hs[j]]
			s.mu.RUnlock()
			if !ok || next.p != l.p || next.off != end {
				break
			}
			end += int64(next.n)
		}
		err = copyRange(out, off, l.p.f, l.off, end-l.off)
		l.p.release()
		if err != nil {
			return err
		}
		if err := checkRange(out, off, end-l.off, hs[i:j]); err != nil {
			return err
		}
		i = j
	}
	return nil
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

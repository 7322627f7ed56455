// Package datafile snapshots an app's declared data paths (files and
// directories) as a block-level delta and restores them in place.
//
// A snapshot (Set) lists every directory, regular file and symbolic link
// under the declared paths with its mode, size, modification time and, for
// regular files, the hashes of its 4 KiB blocks. The blocks themselves go
// into a content-addressed BlockWriter (a store transaction), so a snapshot
// costs only the blocks that changed. Snapshot runs while the app is frozen:
// a file whose size and mtime equal those of the previous snapshot is taken
// from it after one lstat, without being read.
//
// Restore makes the declared paths equal to a snapshot: files are rewritten
// in place (only the blocks that differ), truncated or extended, given their
// mode and mtime; entries under a declared directory that the snapshot does
// not list are removed.
package datafile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"doppel/replicate/store"
)

// Set is a snapshot of the declared data paths; it is stored with the epoch.
type Set = store.DataSet

// File is one entry of a Set.
type File = store.DataFile

// Stats counts what Snapshot did; it goes into the epoch manifest.
type Stats = store.DataCounts

// BlockSize is the unit files are split into.
const BlockSize = store.PageSize

// Reasons an entry is skipped, keys of Stats.Skipped.
const (
	SkipSpecial = "special" // socket, FIFO or device node: not data
)

// BlockWriter receives the blocks of a snapshot. *store.Txn implements it.
// Has must report true for store.ZeroPageHash, which is never Put.
type BlockWriter interface {
	Has(h store.Hash) bool
	Put(h store.Hash, data []byte) error
}

// BlockReader serves blocks to Restore. *store.Store and *store.Txn
// implement it.
type BlockReader interface {
	Get(h store.Hash) ([]byte, error)
}

// BlockStore is both.
type BlockStore interface {
	BlockWriter
	BlockReader
}

var (
	_ BlockStore  = (*store.Txn)(nil)
	_ BlockReader = (*store.Store)(nil)
)

// ErrBadPath is returned for a declared path that is not absolute or is the
// file system root.
var ErrBadPath = errors.New("invalid data path")

// Config tunes Snapshot and Restore.
type Config struct {
	// ReadBuffer is the size of the reads that hash a changed file; a
	// multiple of BlockSize.
	ReadBuffer int
	// Rehash makes Snapshot read every file, ignoring the size and mtime
	// fast path. For verification; too slow for a freeze window.
	Rehash bool
}

// DefaultConfig returns the configuration used in production: 1 MiB reads,
// size and mtime fast path on.
func DefaultConfig() Config {
	return Config{ReadBuffer: 1 << 20}
}

// cleanRoots validates, cleans, sorts and deduplicates declared paths, and
// drops paths inside another declared path.
func cleanRoots(paths []string) ([]string, error) {
	var out []string
	for _, p := range paths {
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("%w: %q is not absolute", ErrBadPath, p)
		}
		p = filepath.Clean(p)
		if p == "/" {
			return nil, fmt.Errorf("%w: the root directory", ErrBadPath)
		}
		out = append(out, p)
	}
	sort.Strings(out)
	out = slices.Compact(out)
	kept := out[:0]
	for _, p := range out {
		if len(kept) > 0 && within(p, kept[len(kept)-1]) {
			continue
		}
		kept = append(kept, p)
	}
	return kept, nil
}

// within reports whether p is dir or below it.
func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// Snapshot walks the declared paths and returns their snapshot. Blocks of
// files that are new or whose size or mtime changed since prev (nil for
// none) are read, hashed and written to bs unless bs has them; other files
// reuse prev's block list. A declared path that does not exist is recorded
// as absent. Sockets, FIFOs and devices are skipped and counted.
func Snapshot(paths []string, prev *Set, bs BlockWriter, cfg Config) (*Set, Stats, error) {
	if cfg.ReadBuffer < BlockSize {
		cfg.ReadBuffer = DefaultConfig().ReadBuffer
	}
	cfg.ReadBuffer -= cfg.ReadBuffer % BlockSize
	st := Stats{Skipped: map[string]int64{}}
	roots, err := cleanRoots(paths)
	if err != nil {
		return nil, st, err
	}
	old := map[string]*File{}
	if prev != nil {
		for i := range prev.Files {
			old[prev.Files[i].Path] = &prev.Files[i]
		}
	}
	set := &Set{Roots: roots}
	buf := make([]byte, cfg.ReadBuffer)
	for _, root := range roots {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				if path == root && errors.Is(err, fs.ErrNotExist) {
					return nil // declared but absent
				}
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			f := File{Path: path, Mode: info.Mode(), ModTime: info.ModTime()}
			switch {
			case info.IsDir():
			case info.Mode()&fs.ModeSymlink != 0:
				if f.Target, err = os.Readlink(path); err != nil {
					return err
				}
			case info.Mode().IsRegular():
				st.FilesScanned++
				f.Size = info.Size()
				p := old[path]
				if p == nil {
					st.FilesNew++
				}
				if p != nil && p.Mode.IsRegular() && p.Size == f.Size && p.ModTime.Equal(f.ModTime) && !cfg.Rehash {
					st.FilesUnchanged++
					f.Blocks = p.Blocks
				} else {
					st.FilesChanged++
					if f.Blocks, err = hashFile(path, f.Size, p, bs, buf, &st); err != nil {
						return err
					}
				}
			default:
				st.Skipped[SkipSpecial]++
				return nil
			}
			set.Files = append(set.Files, f)
			return nil
		})
		if err != nil {
			return nil, st, fmt.Errorf("snapshot %s: %w", root, err)
		}
	}
	sort.Slice(set.Files, func(i, j int) bool { return set.Files[i].Path < set.Files[j].Path })
	if prev != nil {
		cur := make(map[string]bool, len(set.Files))
		for i := range set.Files {
			cur[set.Files[i].Path] = true
		}
		for i := range prev.Files {
			if prev.Files[i].Mode.IsRegular() && !cur[prev.Files[i].Path] {
				st.FilesRemoved++
			}
		}
	}
	if len(st.Skipped) == 0 {
		st.Skipped = nil
	}
	return set, st, nil
}

// hashFile reads a file, hashes its blocks, stores the blocks bs lacks and
// counts the blocks that differ from prev's at the same offset.
func hashFile(path string, size int64, prev *File, bs BlockWriter, buf []byte, st *Stats) ([]store.Hash, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	hs := make([]store.Hash, 0, (size+BlockSize-1)/BlockSize)
	for off := int64(0); off < size; {
		n, err := io.ReadFull(f, buf[:min(int64(len(buf)), size-off)])
		if err != nil {
			return nil, fmt.Errorf("read %s: %w (file changed while frozen?)", path, err)
		}
		for p := 0; p < n; p += BlockSize {
			blk := buf[p:min(p+BlockSize, n)]
			h := store.Sum(blk)
			i := len(hs)
			hs = append(hs, h)
			st.BlocksHashed++
			if prev == nil || !prev.Mode.IsRegular() || i >= len(prev.Blocks) || prev.Blocks[i] != h {
				st.BlocksChanged++
				st.BytesChanged += int64(len(blk))
			}
			if !bs.Has(h) {
				if err := bs.Put(h, blk); err != nil {
					return nil, err
				}
				st.BlocksStored++
			}
		}
		off += int64(n)
	}
	return hs, nil
}

// RestoreStats counts what Restore did.
type RestoreStats struct {
	FilesWritten  int64 // regular files created or modified
	BlocksWritten int64 // blocks that differed and were rewritten
	Removed       int64 // entries removed (absent from the snapshot, or of the wrong type)
}

// Restore makes the declared paths of set, below root ("" or "/" for the
// real paths; another directory to restore into a copy), equal to the
// snapshot: directories are created, regular files rewritten in place where
// their blocks differ and truncated or extended to their size, symbolic
// links recreated, modes and mtimes set; entries below a declared path that
// the snapshot does not list are removed, and so is a declared path that
// was absent at the snapshot. Ownership is left alone.
func Restore(set *Set, root string, br BlockReader) (RestoreStats, error) {
	var st RestoreStats
	if set == nil {
		return st, nil
	}
	target := func(p string) string {
		if root == "" || root == "/" {
			return p
		}
		return filepath.Join(root, p)
	}
	listed := make(map[string]bool, len(set.Files))
	for i := range set.Files {
		listed[set.Files[i].Path] = true
	}
	// Declared paths absent at the snapshot go; extraneous entries below
	// declared directories go.
	for _, r := range set.Roots {
		if !listed[r] {
			if err := removeAll(target(r), &st); err != nil {
				return st, err
			}
			continue
		}
		rt := target(r)
		err := filepath.WalkDir(rt, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			orig := r + strings.TrimPrefix(path, rt)
			if !listed[orig] {
				if err := removeAll(path, &st); err != nil {
					return err
				}
				if d.IsDir() {
					return filepath.SkipDir
				}
			}
			return nil
		})
		if err != nil {
			return st, fmt.Errorf("restore %s: %w", r, err)
		}
	}
	buf := make([]byte, BlockSize)
	for i := range set.Files {
		f := &set.Files[i]
		if err := restoreEntry(f, target(f.Path), br, buf, &st); err != nil {
			return st, fmt.Errorf("restore %s: %w", f.Path, err)
		}
	}
	// Directory mtimes last: writing their children changed them.
	for i := len(set.Files) - 1; i >= 0; i-- {
		f := &set.Files[i]
		if f.Mode.IsDir() {
			if err := os.Chtimes(target(f.Path), f.ModTime, f.ModTime); err != nil {
				return st, fmt.Errorf("restore %s: %w", f.Path, err)
			}
		}
	}
	return st, nil
}

func removeAll(path string, st *RestoreStats) error {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := os.RemoveAll(path); err != nil {
		return err
	}
	st.Removed++
	return nil
}

func restoreEntry(f *File, path string, br BlockReader, buf []byte, st *RestoreStats) error {
	cur, err := os.Lstat(path)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if exists && cur.Mode().Type() != f.Mode.Type() {
		if err := removeAll(path, st); err != nil {
			return err
		}
		exists = false
	}
	switch {
	case f.Mode.IsDir():
		if !exists {
			if err := os.MkdirAll(path, 0o700); err != nil {
				return err
			}
		}
		return os.Chmod(path, chmodBits(f.Mode))
	case f.Mode&fs.ModeSymlink != 0:
		if exists {
			if t, err := os.Readlink(path); err == nil && t == f.Target {
				return nil
			}
			if err := os.Remove(path); err != nil {
				return err
			}
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		return os.Symlink(f.Target, path)
	case f.Mode.IsRegular():
		return restoreFile(f, path, exists, cur, br, buf, st)
	}
	return nil
}

func restoreFile(f *File, path string, exists bool, cur fs.FileInfo, br BlockReader, buf []byte, st *RestoreStats) error {
	if !exists {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
	}
	out, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	var curSize int64
	if exists {
		curSize = cur.Size()
	}
	wrote := false
	for i, h := range f.Blocks {
		off := int64(i) * BlockSize
		n := min(BlockSize, f.Size-off)
		if off+n <= curSize {
			if _, err := out.ReadAt(buf[:n], off); err == nil && store.Sum(buf[:n]) == h {
				continue
			}
		}
		data, err := br.Get(h)
		if err != nil {
			return err
		}
		if int64(len(data)) < n {
			return fmt.Errorf("block %d: %d bytes, want %d", i, len(data), n)
		}
		if _, err := out.WriteAt(data[:n], off); err != nil {
			return err
		}
		st.BlocksWritten++
		wrote = true
	}
	if curSize != f.Size {
		if err := out.Truncate(f.Size); err != nil {
			return err
		}
		wrote = true
	}
	if wrote || !exists {
		st.FilesWritten++
	}
	if err := out.Chmod(chmodBits(f.Mode)); err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chtimes(path, f.ModTime, f.ModTime)
}

// chmodBits keeps the bits chmod sets: permissions, setuid, setgid, sticky.
func chmodBits(m fs.FileMode) fs.FileMode {
	return m & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

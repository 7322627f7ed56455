package datafile

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"doppel/replicate/store"
)

// memStore is an in-memory BlockStore.
type memStore struct {
	m    map[store.Hash][]byte
	puts int
}

func newMemStore() *memStore { return &memStore{m: map[store.Hash][]byte{}} }

func (s *memStore) Has(h store.Hash) bool {
	_, ok := s.m[h]
	return ok || h.IsZeroPage()
}

func (s *memStore) Put(h store.Hash, b []byte) error {
	if store.Sum(b) != h {
		return store.ErrHashMismatch
	}
	s.m[h] = bytes.Clone(b)
	s.puts++
	return nil
}

func (s *memStore) Get(h store.Hash) ([]byte, error) {
	if h.IsZeroPage() {
		return make([]byte, BlockSize), nil
	}
	b, ok := s.m[h]
	if !ok {
		return nil, store.ErrNotFound
	}
	return b, nil
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// tree is what a directory holds, for comparison.
type entry struct {
	mode    fs.FileMode
	mtime   time.Time
	content string
}

func readTree(t *testing.T, root string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		e := entry{mode: info.Mode(), mtime: info.ModTime()}
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			e.content, _ = os.Readlink(path)
			e.mtime = time.Time{} // symlink times are not restored
		case info.Mode().IsRegular():
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			e.content = string(b)
		}
		out[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameTree(t *testing.T, want, got map[string]entry) {
	t.Helper()
	var names []string
	for k := range want {
		names = append(names, k)
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected %s", k)
		}
	}
	sort.Strings(names)
	for _, k := range names {
		w, g := want[k], got[k]
		if _, ok := got[k]; !ok {
			t.Errorf("missing %s", k)
			continue
		}
		if w.mode != g.mode || !w.mtime.Equal(g.mtime) || w.content != g.content {
			t.Errorf("%s: got mode %v mtime %v %d bytes, want mode %v mtime %v %d bytes",
				k, g.mode, g.mtime, len(g.content), w.mode, w.mtime, len(w.content))
		}
	}
}

// populate makes a data directory with files of awkward sizes, zero blocks,
// a nested directory, an empty directory and a symlink.
func populate(t *testing.T, dir string) {
	write(t, filepath.Join(dir, "empty"), nil)
	write(t, filepath.Join(dir, "one-block"), randBytes(1, BlockSize))
	write(t, filepath.Join(dir, "odd"), randBytes(2, 3*BlockSize+17))
	big := randBytes(3, 300*BlockSize+5)
	clear(big[10*BlockSize : 20*BlockSize]) // zero blocks
	write(t, filepath.Join(dir, "sub", "big.db"), big)
	write(t, filepath.Join(dir, "sub", "deeper", "log"), []byte("line 1\n"))
	if err := os.MkdirAll(filepath.Join(dir, "emptydir"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/big.db", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "odd"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestSnapshotRestoreIntoEmptyRoot(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	single := filepath.Join(t.TempDir(), "single.conf")
	populate(t, data)
	write(t, single, []byte("key = value\n"))
	bs := newMemStore()
	set, st, err := Snapshot([]string{data, single, data + "/sub"}, nil, bs, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Roots) != 2 {
		t.Fatalf("roots %v: nested declared path not folded", set.Roots)
	}
	if st.FilesScanned != 6 || st.FilesNew != 6 || st.FilesUnchanged != 0 {
		t.Fatalf("stats %+v", st)
	}
	want := readTree(t, data)
	root := t.TempDir()
	if _, err := Restore(set, root, bs); err != nil {
		t.Fatal(err)
	}
	sameTree(t, want, readTree(t, filepath.Join(root, data)))
	if b, err := os.ReadFile(filepath.Join(root, single)); err != nil || string(b) != "key = value\n" {
		t.Fatalf("single file: %q %v", b, err)
	}
	// 10 zero blocks were never stored.
	if st.BlocksStored != st.BlocksHashed-10 || int64(bs.puts) != st.BlocksStored {
		t.Fatalf("stored %d of %d hashed blocks, %d puts", st.BlocksStored, st.BlocksHashed, bs.puts)
	}
}

func TestSnapshotDeltaAndRestoreInPlace(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	populate(t, data)
	write(t, filepath.Join(data, "gone"), []byte("to be deleted"))
	bs := newMemStore()
	cfg := DefaultConfig()
	set1, _, err := Snapshot([]string{data}, nil, bs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	tree1 := readTree(t, data)

	// Nothing changed: stat only.
	set1b, st, err := Snapshot([]string{data}, set1, bs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if st.FilesUnchanged != st.FilesScanned || st.BlocksHashed != 0 || st.BlocksChanged != 0 {
		t.Fatalf("unchanged snapshot read files: %+v", st)
	}
	if len(set1b.Files) != len(set1.Files) {
		t.Fatal("unchanged snapshot differs")
	}

	later := time.Now().Add(time.Hour)
	touch := func(name string) {
		if err := os.Chtimes(filepath.Join(data, name), later, later); err != nil {
			t.Fatal(err)
		}
	}
	// Append to one file (last partial block changes, one block added).
	f, err := os.OpenFile(filepath.Join(data, "odd"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.Write(randBytes(9, BlockSize))
	_ = f.Close()
	touch("odd")
	// Overwrite the middle of another (one block).
	f, err = os.OpenFile(filepath.Join(data, "sub", "big.db"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteAt(bytes.Repeat([]byte{7}, 100), 150*BlockSize+10)
	_ = f.Close()
	touch("sub/big.db")
	// Truncate a third.
	if err := os.Truncate(filepath.Join(data, "one-block"), 100); err != nil {
		t.Fatal(err)
	}
	touch("one-block")
	// Delete, create, change a mode.
	_ = os.Remove(filepath.Join(data, "gone"))
	write(t, filepath.Join(data, "emptydir", "new"), []byte("new file"))
	_ = os.Chmod(filepath.Join(data, "empty"), 0o640)

	set2, st, err := Snapshot([]string{data}, set1, bs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	tree2 := readTree(t, data)
	// odd: 3 full blocks + 17 bytes, plus 4096 appended: blocks 3 and 4 change.
	// big.db: block 150. one-block: block 0. new: block 0.
	if st.BlocksChanged != 5 {
		t.Errorf("BlocksChanged = %d, want 5", st.BlocksChanged)
	}
	if st.FilesNew != 1 || st.FilesRemoved != 1 || st.FilesChanged != 4 {
		t.Errorf("stats %+v", st)
	}
	if st.FilesUnchanged != 2 { // empty (mode only) and sub/deeper/log
		t.Errorf("FilesUnchanged = %d, want 2", st.FilesUnchanged)
	}

	// Restore the old snapshot over the changed directory, then the new one.
	rs, err := Restore(set1, "", bs)
	if err != nil {
		t.Fatal(err)
	}
	sameTree(t, tree1, readTree(t, data))
	if rs.Removed != 1 || rs.FilesWritten != 4 {
		t.Errorf("restore stats %+v", rs)
	}
	if _, err := Restore(set2, "", bs); err != nil {
		t.Fatal(err)
	}
	sameTree(t, tree2, readTree(t, data))
}

func TestRestoreReplacesWrongTypesAndAbsentRoots(t *testing.T) {
	base := t.TempDir()
	data := filepath.Join(base, "data")
	absent := filepath.Join(base, "absent")
	write(t, filepath.Join(data, "x"), []byte("file"))
	bs := newMemStore()
	set, _, err := Snapshot([]string{data, absent}, nil, bs, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	want := readTree(t, data)
	// x becomes a directory, the absent root appears.
	_ = os.Remove(filepath.Join(data, "x"))
	write(t, filepath.Join(data, "x", "inner"), []byte("y"))
	write(t, filepath.Join(absent, "junk"), []byte("z"))
	if _, err := Restore(set, "", bs); err != nil {
		t.Fatal(err)
	}
	sameTree(t, want, readTree(t, data))
	if _, err := os.Lstat(absent); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("absent root exists after restore: %v", err)
	}
}

func TestSnapshotRejectsBadPaths(t *testing.T) {
	for _, p := range []string{"relative/path", "/", "/../"} {
		if _, _, err := Snapshot([]string{p}, nil, newMemStore(), DefaultConfig()); !errors.Is(err, ErrBadPath) {
			t.Errorf("Snapshot(%q) = %v, want ErrBadPath", p, err)
		}
	}
}

func TestSnapshotThroughStore(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	populate(t, data)
	cfg := store.DefaultConfig()
	cfg.Logger = slog.New(slog.DiscardHandler)
	st, err := store.Open(filepath.Join(t.TempDir(), "store"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	tx, err := st.Begin("app", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Abort()
	set, counts, err := Snapshot([]string{data}, nil, tx, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	tx.SetData(set)
	if _, err := tx.Commit(store.Manifest{Data: counts}); err != nil {
		t.Fatal(err)
	}
	ep, err := st.Load("app", 1)
	if err != nil {
		t.Fatal(err)
	}
	if ep.Manifest.Data.BlocksStored != counts.BlocksStored || ep.Data == nil {
		t.Fatalf("manifest data counts %+v", ep.Manifest.Data)
	}
	want := readTree(t, data)
	root := t.TempDir()
	if _, err := Restore(ep.Data, root, st); err != nil {
		t.Fatal(err)
	}
	sameTree(t, want, readTree(t, filepath.Join(root, data)))
}

// BenchmarkSnapshotUnchanged measures the freeze-window cost of a snapshot
// of 1000 files that did not change (stat only).
func BenchmarkSnapshotUnchanged(b *testing.B) {
	data := b.TempDir()
	for i := range 1000 {
		if err := os.WriteFile(filepath.Join(data, fmt.Sprintf("f%04d", i)), randBytes(uint64(i), 64<<10), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	bs := newMemStore()
	prev, _, err := Snapshot([]string{data}, nil, bs, DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, _, err := Snapshot([]string{data}, prev, bs, DefaultConfig()); err != nil {
			b.Fatal(err)
		}
	}
}

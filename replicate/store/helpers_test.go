package store

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"doppel/replicate/store/storetest"
)

func testConfig() Config {
	c := DefaultConfig()
	c.PackSize = 4 << 20 // several packs even in small tests
	c.Logger = slog.New(slog.DiscardHandler)
	return c
}

func openStore(t testing.TB, cfg Config) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "store"), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// ingest commits dir as epoch n of app with the given parent.
func ingest(t testing.TB, s *Store, app string, n, parent uint64, dir string) *Epoch {
	t.Helper()
	tx, err := s.Begin(app, n, parent)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	defer tx.Abort()
	if err := tx.AddImageDir(context.Background(), dir); err != nil {
		t.Fatalf("AddImageDir: %v", err)
	}
	ep, err := tx.Commit(Manifest{Term: 1, Barrier: 42})
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return ep
}

func writeImage(t testing.TB, im *storetest.Image) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "img")
	if err := im.Write(dir); err != nil {
		t.Fatalf("write image: %v", err)
	}
	return dir
}

// sameDir fails the test unless a and b hold the same names, kinds, modes,
// bytes and link targets.
func sameDir(t testing.TB, a, b string) {
	t.Helper()
	ea, err := os.ReadDir(a)
	if err != nil {
		t.Fatal(err)
	}
	eb, err := os.ReadDir(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(ea) != len(eb) {
		t.Fatalf("%s has %d entries, %s has %d", a, len(ea), b, len(eb))
	}
	for i := range ea {
		if ea[i].Name() != eb[i].Name() {
			t.Fatalf("entry %d: %q vs %q", i, ea[i].Name(), eb[i].Name())
		}
		pa, pb := filepath.Join(a, ea[i].Name()), filepath.Join(b, eb[i].Name())
		ia, _ := os.Lstat(pa)
		ib, _ := os.Lstat(pb)
		if ia.Mode() != ib.Mode() {
			t.Fatalf("%s: mode %v vs %v", ea[i].Name(), ia.Mode(), ib.Mode())
		}
		if ia.Mode()&os.ModeSymlink != 0 {
			ta, _ := os.Readlink(pa)
			tb, _ := os.Readlink(pb)
			if ta != tb {
				t.Fatalf("%s: link %q vs %q", ea[i].Name(), ta, tb)
			}
			continue
		}
		ca, err := os.ReadFile(pa)
		if err != nil {
			t.Fatal(err)
		}
		cb, err := os.ReadFile(pb)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ca, cb) {
			t.Fatalf("%s: content differs (%d vs %d bytes)", ea[i].Name(), len(ca), len(cb))
		}
	}
}

func materialise(t testing.TB, s *Store, app string, n uint64) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "out")
	if err := s.Materialise(context.Background(), app, n, dir); err != nil {
		t.Fatalf("Materialise %s %d: %v", app, n, err)
	}
	return dir
}

// packFiles lists the names in the packs directory.
func packFiles(t testing.TB, s *Store) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(s.Dir(), dirPacks))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

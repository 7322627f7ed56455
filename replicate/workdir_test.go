package replicate

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// TestWorkRootSweep: a new engine's work directory removes those of
// engines that are gone (lock free) and keeps those of live ones.
func TestWorkRootSweep(t *testing.T) {
	work := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	live, liveLock, err := openWorkRoot(work, "/state/live", log)
	if err != nil {
		t.Fatal(err)
	}
	defer liveLock.Close()
	gone, goneLock, err := openWorkRoot(work, "/state/gone", log)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(gone, "standby-leftover"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	goneLock.Close() // its node died
	other := filepath.Join(work, "not-doppel")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}

	self, selfLock, err := openWorkRoot(work, "/state/new", log)
	if err != nil {
		t.Fatal(err)
	}
	defer selfLock.Close()
	for dir, want := range map[string]bool{live: true, gone: false, other: true, self: true} {
		_, err := os.Stat(dir)
		if got := err == nil; got != want {
			t.Errorf("%s exists: %v, want %v", dir, got, want)
		}
	}
}

// TestWorkRootOfLiveEngineUntouched: a second engine of the same state
// directory neither empties nor takes the work directory of a live one.
func TestWorkRootOfLiveEngineUntouched(t *testing.T) {
	work := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	root, lock, err := openWorkRoot(work, "/state/a", log)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	dump := filepath.Join(root, "doppel-dump-app-1")
	if err := os.Mkdir(dump, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, l2, err := openWorkRoot(work, "/state/a", log); err == nil {
		l2.Close()
		t.Fatal("a second engine took the work directory of a live one")
	}
	if _, err := os.Stat(dump); err != nil {
		t.Fatalf("the live engine's dump directory: %v", err)
	}
	lock.Close() // the first engine ends: the next one starts clean
	_, l3, err := openWorkRoot(work, "/state/a", log)
	if err != nil {
		t.Fatal(err)
	}
	defer l3.Close()
	if _, err := os.Stat(dump); !os.IsNotExist(err) {
		t.Fatalf("a dead engine's dump directory left: %v", err)
	}
}

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

package replicate

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

// TestHasInitNoticesChanges: the sum cache never hides a binary that
// changed since it was hashed.
func TestHasInitNoticesChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "init")
	sumOf := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	a, b := []byte("first binary"), []byte("other binary")
	if err := os.WriteFile(path, a, 0o755); err != nil {
		t.Fatal(err)
	}
	for range 2 { // hashed, then from the cache
		if !HasInit(path, sumOf(a)) {
			t.Fatal("HasInit false for the file's own sum")
		}
		if HasInit(path, sumOf(b)) {
			t.Fatal("HasInit true for another sum")
		}
	}
	if err := os.WriteFile(path, b, 0o755); err != nil { // same size
		t.Fatal(err)
	}
	if HasInit(path, sumOf(a)) {
		t.Fatal("HasInit still true for the old content after a rewrite")
	}
	if !HasInit(path, sumOf(b)) {
		t.Fatal("HasInit false for the new content")
	}
	if HasInit(filepath.Join(t.TempDir(), "missing"), sumOf(a)) {
		t.Fatal("HasInit true for a missing file")
	}
}

package replicate

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"doppel/replicate/store"
	"doppel/replicate/store/storetest"
)

// TestStandbyLeavesRoomForDumps: a work directory too small to hold a
// standby copy beside a dump of the same size gets none (and Standby does
// not fail); one large enough gets it.
func TestStandbyLeavesRoomForDumps(t *testing.T) {
	if os.Geteuid() != 0 {
		skipOrFail(t, "mounting a small tmpfs needs root")
	}
	const pages = 512 // 2 MiB of content
	epoch := func(e *testEngine) { commitEpoch1(t, e, pages, 5) }
	for _, tc := range []struct {
		size string
		want bool
	}{{"3m", false}, {"64m", true}} {
		work := t.TempDir()
		if err := unix.Mount("tmpfs", work, "tmpfs", 0, "size="+tc.size); err != nil {
			t.Fatalf("mount a %s tmpfs: %v", tc.size, err)
		}
		t.Cleanup(func() { _ = unix.Unmount(work, unix.MNT_DETACH) })
		e := newEngine(t, t.TempDir(), func(c *Config) { c.WorkDir = work })
		epoch(e)
		if err := e.Standby(t.Context(), "app", 1); err != nil {
			t.Fatalf("%s work directory: Standby: %v", tc.size, err)
		}
		_, err := os.Stat(filepath.Join(e.cfg.WorkDir, "standby", "app"))
		if got := err == nil; got != tc.want {
			t.Errorf("%s work directory: standby copy made: %v, want %v", tc.size, got, tc.want)
		}
	}
}

// TestStandbyFollowsAReplacedEpoch: when the epoch a standby copy holds is
// replaced by another OP's epoch of the same number (a deposed OP's epochs
// dropped on receipt), the copy is brought to the new content before a
// restore takes it, not reused for its number.
func TestStandbyFollowsAReplacedEpoch(t *testing.T) {
	e := newEngine(t, t.TempDir(), nil)
	commitEpoch1(t, e, 64, 5)
	if err := e.Standby(t.Context(), "app", 1); err != nil {
		t.Fatal(err)
	}
	if n, err := e.Store().Discard("app", []uint64{1}); err != nil || n != 1 {
		t.Fatalf("Discard = %d, %v", n, err)
	}
	ep := commitEpoch1(t, e, 64, 6)
	// A restore takes the copy by a rename within the work directory.
	wd, err := os.MkdirTemp(e.cfg.WorkDir, "taken-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(wd) })
	taken := filepath.Join(wd, "app")
	if !e.takeStandby(t.Context(), ep, taken) {
		t.Fatal("standby not taken")
	}
	want := filepath.Join(t.TempDir(), "want")
	if err := e.Store().Materialise(t.Context(), "app", 1, want); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(want)
	if err != nil || len(ents) == 0 {
		t.Fatalf("materialised %d files: %v", len(ents), err)
	}
	for _, f := range ents {
		a, _ := os.ReadFile(filepath.Join(want, f.Name()))
		b, err := os.ReadFile(filepath.Join(taken, f.Name()))
		if err != nil || !bytes.Equal(a, b) {
			t.Fatalf("%s of the standby copy is not the new epoch's (%v)", f.Name(), err)
		}
	}
}

// commitEpoch1 stores epoch 1 of app "app": one process whose memory is
// pages pages of content made from seed.
func commitEpoch1(t *testing.T, e *testEngine, pages int, seed uint64) *store.Epoch {
	t.Helper()
	img := &storetest.Image{Procs: []storetest.Proc{{PID: 10, Regions: []storetest.Region{
		{Vaddr: 0x400000, Pages: pages, Data: storetest.Memory(seed, pages)},
	}}}, Files: map[string][]byte{"inventory.img": []byte("inventory")}}
	dir := filepath.Join(t.TempDir(), "img")
	if err := img.Write(dir); err != nil {
		t.Fatal(err)
	}
	tx, err := e.Store().Begin("app", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Abort()
	if err := tx.AddImageDir(t.Context(), dir); err != nil {
		t.Fatal(err)
	}
	ep, err := tx.Commit(store.Manifest{Term: 1})
	if err != nil {
		t.Fatal(err)
	}
	return ep
}

package replicate

import (
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
	epoch := func(e *testEngine) {
		img := &storetest.Image{Procs: []storetest.Proc{{PID: 10, Regions: []storetest.Region{
			{Vaddr: 0x400000, Pages: pages, Data: storetest.Memory(5, pages)},
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
		if _, err := tx.Commit(store.Manifest{Term: 1}); err != nil {
			t.Fatal(err)
		}
	}
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

package store

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"doppel/replicate/store/storetest"
)

// crashChild runs in a child process: it ingests epoch 2 into the store
// and kills itself at the point named by DOPPEL_STORE_CRASH_AT.
func crashChild(t *testing.T, root, src, at string) {
	s, err := Open(root, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	kill := func() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL); select {} }
	if at == "before-rename" {
		s.testBeforeEpochRename = kill
	}
	tx, err := s.Begin("app", 2, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.AddImageDir(context.Background(), src); err != nil {
		t.Fatal(err)
	}
	if at == "after-ingest" {
		kill()
	}
	if _, err := tx.Commit(Manifest{}); err != nil {
		t.Fatal(err)
	}
	t.Fatal("child was not killed")
}

// TestCrashDuringIngestRecovers kills a process in the middle of an ingest
// (with the packs written but uncommitted, and with the packs committed but
// the epoch not yet renamed into place) and checks that the store reopens
// with the previous epoch intact and nothing mistaken for an epoch.
func TestCrashDuringIngestRecovers(t *testing.T) {
	if root := os.Getenv("DOPPEL_STORE_CRASH_ROOT"); root != "" {
		crashChild(t, root, os.Getenv("DOPPEL_STORE_CRASH_SRC"), os.Getenv("DOPPEL_STORE_CRASH_AT"))
		return
	}
	for _, at := range []string{"after-ingest", "before-rename"} {
		t.Run(at, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "store")
			s, err := Open(root, testConfig())
			if err != nil {
				t.Fatal(err)
			}
			mem := storetest.Memory(21, 2048)
			im := storetest.SimpleImage(mem)
			src1 := writeImage(t, im)
			ingest(t, s, "app", 1, 0, src1)
			_ = s.Close()
			storetest.Dirty(mem, 0.5, 22)
			src2 := writeImage(t, im)

			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashDuringIngestRecovers$")
			cmd.Env = append(os.Environ(), "DOPPEL_STORE_CRASH_ROOT="+root, "DOPPEL_STORE_CRASH_SRC="+src2, "DOPPEL_STORE_CRASH_AT="+at)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("child did not die by SIGKILL: %v\n%s", err, out)
			}

			s2, err := Open(root, testConfig())
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			if ns, _ := s2.Epochs("app"); len(ns) != 1 || ns[0] != 1 {
				t.Fatalf("epochs after crash: %v", ns)
			}
			for _, name := range packFiles(t, s2) {
				if strings.HasSuffix(name, tmpExt) {
					t.Errorf("leftover %s", name)
				}
			}
			ents, _ := os.ReadDir(filepath.Join(root, dirApps, "app"))
			if len(ents) != 1 {
				t.Errorf("app dir holds %d entries after recovery", len(ents))
			}
			sameDir(t, src1, materialise(t, s2, "app", 1))
			if _, err := s2.GC(context.Background()); err != nil {
				t.Fatal(err)
			}
			sameDir(t, src1, materialise(t, s2, "app", 1))
			// The epoch can be written again.
			ingest(t, s2, "app", 2, 1, src2)
			sameDir(t, src2, materialise(t, s2, "app", 2))
		})
	}
}

// TestDiskFullDiscardsPartialEpoch fills a small tmpfs: the ingest fails
// with ENOSPC, Abort frees the space, the previous epoch is intact.
func TestDiskFullDiscardsPartialEpoch(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("needs root to mount a small tmpfs; CI runs as root")
		}
		t.Skip("needs root to mount a small tmpfs (run the tests as root)")
	}
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=4m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	cfg := testConfig()
	cfg.PackSize = 1 << 20
	s, err := Open(filepath.Join(mnt, "store"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mem := storetest.Memory(31, 64)
	im := storetest.SimpleImage(mem)
	src1 := writeImage(t, im)
	ingest(t, s, "app", 1, 0, src1)

	big := writeImage(t, storetest.SimpleImage(storetest.Memory(32, 2048))) // 8 MiB
	tx, err := s.Begin("app", 2, 1)
	if err != nil {
		t.Fatal(err)
	}
	err = tx.AddImageDir(context.Background(), big)
	if err == nil {
		_, err = tx.Commit(Manifest{})
	}
	if !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("ingest of 8 MiB into 4 MiB: %v, want ENOSPC", err)
	}
	tx.Abort()
	if ns, _ := s.Epochs("app"); len(ns) != 1 {
		t.Fatalf("epochs after disk full: %v", ns)
	}
	for _, name := range packFiles(t, s) {
		if strings.HasSuffix(name, tmpExt) {
			t.Errorf("leftover %s", name)
		}
	}
	sameDir(t, src1, materialise(t, s, "app", 1))
	// The space is free again.
	storetest.Dirty(mem, 0.5, 33)
	src3 := writeImage(t, im)
	ingest(t, s, "app", 3, 1, src3)
	sameDir(t, src3, materialise(t, s, "app", 3))
}

package shim

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestInstallExe(t *testing.T) {
	state := t.TempDir()
	path, sum, err := InstallExe(state)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(state, "bin", sum, ExeName); path != want {
		t.Fatalf("path %s, want %s", path, want)
	}
	self, err := fileSHA256("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	if sum != self {
		t.Fatalf("sum %s, running executable %s", sum, self)
	}
	if got, err := fileSHA256(path); err != nil || got != sum {
		t.Fatalf("installed file sha256 %s (%v), want %s", got, err, sum)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o755 {
		t.Fatalf("mode %v, want 0755", st.Mode().Perm())
	}

	// Idempotent: a second install keeps the same file.
	path2, sum2, err := InstallExe(state)
	if err != nil || path2 != path || sum2 != sum {
		t.Fatalf("second install: %s %s %v", path2, sum2, err)
	}
	st2, _ := os.Stat(path)
	if st.Sys().(*syscall.Stat_t).Ino != st2.Sys().(*syscall.Stat_t).Ino {
		t.Fatal("second install rewrote an intact file")
	}

	// A damaged copy is replaced.
	if err := os.WriteFile(path, []byte("garbage"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, _, err := InstallExe(state); err != nil {
		t.Fatal(err)
	}
	if got, _ := fileSHA256(path); got != sum {
		t.Fatalf("damaged copy not replaced: %s", got)
	}

	// No temporary files are left behind.
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("install dir holds %d entries, want 1", len(entries))
	}
}

func TestInstallExeConcurrent(t *testing.T) {
	state := t.TempDir()
	var wg sync.WaitGroup
	paths := make([]string, 4)
	errs := make([]error, 4)
	for i := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			paths[i], _, errs[i] = InstallExe(state)
		}()
	}
	wg.Wait()
	for i := range paths {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if paths[i] != paths[0] {
			t.Fatalf("paths differ: %v", paths)
		}
	}
	if _, _, err := InstallExe(""); err == nil {
		t.Fatal("empty state dir: want error")
	}
}

func TestInstalledExeRunsAsInit(t *testing.T) {
	path, _, err := InstallExe(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	requireRoot(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p, err := Start(t.Context(), StartOptions{
		Exe:    path,
		Args:   []string{"/bin/sh", "-c", "echo $$"},
		Stdout: w,
	})
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill(); _, _ = p.Wait() })
	buf := make([]byte, 64)
	n, _ := r.Read(buf)
	pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil || pid <= 1 || pid > 64 {
		t.Fatalf("shell under installed init says pid %q, want a small pid of a new namespace", buf[:n])
	}
	if code := waitExit(t, p, 10*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

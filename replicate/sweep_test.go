package replicate

import (
	"os"
	"path/filepath"
	"testing"
)

// TestCloseSweepsCgroups checks that closing an engine removes the freezer
// cgroups of the apps that no longer run, and keeps a running app's.
func TestCloseSweepsCgroups(t *testing.T) {
	requireE2E(t)
	e := newEngine(t, t.TempDir(), nil)
	running := startApp(t, e, "sweep-run", appOpts{})
	stopped := startApp(t, e, "sweep-stop", appOpts{})
	cgroupDir := func(name string) string {
		t.Helper()
		dirs, _ := filepath.Glob(filepath.Join(e.cfg.Freezer.Root, "*", e.cfg.Freezer.Parent, name))
		dirs2, _ := filepath.Glob(filepath.Join(e.cfg.Freezer.Root, e.cfg.Freezer.Parent, name))
		dirs = append(dirs, dirs2...)
		if len(dirs) != 1 {
			t.Fatalf("freezer cgroup of %s: found %v", name, dirs)
		}
		return dirs[0]
	}
	runDir, stopDir := cgroupDir(running.name), cgroupDir(stopped.name)
	if err := e.Stop(t.Context(), stopped.name); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stopDir); !os.IsNotExist(err) {
		t.Errorf("the stopped app's cgroup %s is still there (%v)", stopDir, err)
	}
	if _, err := os.Stat(runDir); err != nil {
		t.Errorf("the running app's cgroup %s is gone: %v", runDir, err)
	}
}

package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"doppel/replicate/criu"
)

// fakeCRIU writes a shell script that answers like a criu binary.
func fakeCRIU(t *testing.T, version string, checkOK bool) string {
	t.Helper()
	dir := t.TempDir()
	check := "echo 'Looks good.'; exit 0"
	if !checkOK {
		check = "echo 'Error (criu/cr-check.c:1): kernel too new' >&2; exit 1"
	}
	script := "#!/bin/sh\n" +
		"case \"$1\" in\n" +
		"--version) echo 'Version: " + version + "' ;;\n" +
		"check) if [ \"$2\" = --feature ]; then echo \"$3 is supported\"; exit 0; fi; " + check + " ;;\n" +
		"esac\n"
	p := filepath.Join(dir, "criu")
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func find(t *testing.T, checks []Check, name string) Check {
	t.Helper()
	for _, c := range checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no check %q in %+v", name, checks)
	return Check{}
}

func testConfig(t *testing.T, criuPath string) Config {
	cfg := DefaultConfig()
	cfg.CRIUPath = criuPath
	cfg.CRIUPrefix = t.TempDir() // no private install there
	cfg.StateDir = filepath.Join(t.TempDir(), "state", "not-yet")
	cfg.MinFreeBytes = 1
	cfg.WarnFreeBytes = 1
	return cfg
}

func TestCRIUTooOld(t *testing.T) {
	checks := Run(context.Background(), testConfig(t, fakeCRIU(t, "4.1.1", true)))
	c := find(t, checks, "criu")
	if c.Status != Fail || !strings.Contains(c.Detail, "4.1.1") || !strings.Contains(c.Fix, "get-criu.sh") {
		t.Fatalf("got %+v", c)
	}
	if !Failed(checks) {
		t.Fatal("Failed() = false with an old CRIU")
	}
}

func TestCRIUCheckFails(t *testing.T) {
	checks := Run(context.Background(), testConfig(t, fakeCRIU(t, "4.2.1", false)))
	c := find(t, checks, "criu check")
	if c.Status != Fail || !strings.Contains(c.Detail, "kernel too new") {
		t.Fatalf("got %+v", c)
	}
}

func TestCRIUMissing(t *testing.T) {
	cfg := testConfig(t, filepath.Join(t.TempDir(), "no-criu"))
	checks := Run(context.Background(), cfg)
	c := find(t, checks, "criu")
	if c.Status != Fail || !strings.Contains(c.Fix, "get-criu.sh") {
		t.Fatalf("got %+v", c)
	}
}

func TestFakeCRIUFeatures(t *testing.T) {
	checks := Run(context.Background(), testConfig(t, fakeCRIU(t, "4.2.1", true)))
	for _, f := range features {
		if c := find(t, checks, "feature "+f.name); c.Status != OK {
			t.Errorf("feature %s: %+v", f.name, c)
		}
	}
	if c := find(t, checks, "state dir"); c.Status != OK || !strings.Contains(c.Detail, "free") {
		t.Errorf("state dir: %+v", c)
	}
}

func TestStateDirTooFull(t *testing.T) {
	cfg := testConfig(t, fakeCRIU(t, "4.2.1", true))
	cfg.MinFreeBytes = 1 << 62
	c := checkStateDir(cfg)
	if c.Status != Fail || c.Fix == "" {
		t.Fatalf("got %+v", c)
	}
}

func TestOutput(t *testing.T) {
	checks := []Check{
		{Name: "root", Status: OK, Detail: "running as root"},
		{Name: "criu", Status: Fail, Detail: "criu not found", Fix: "run: sudo scripts/get-criu.sh"},
	}
	var text bytes.Buffer
	if err := WriteText(&text, checks); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(text.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[1], "FAIL") || !strings.Contains(lines[1], "get-criu.sh") {
		t.Fatalf("text:\n%s", text.String())
	}
	var js bytes.Buffer
	if err := WriteJSON(&js, checks); err != nil {
		t.Fatal(err)
	}
	var back []Check
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back) != 2 || back[1].Status != Fail || back[1].Fix == "" {
		t.Fatalf("json round trip: %+v", back)
	}
}

func TestKernelVersion(t *testing.T) {
	for rel, want := range map[string][2]int{"6.18.0-1-amd64": {6, 18}, "5.10.0": {5, 10}, "4.19-rc1": {4, 19}, "x": {0, 0}} {
		if ma, mi := kernelVersion(rel); ma != want[0] || mi != want[1] {
			t.Errorf("kernelVersion(%q) = %d.%d, want %d.%d", rel, ma, mi, want[0], want[1])
		}
	}
}

// TestRealHost runs every check against the installed CRIU. In CI, where
// scripts/get-criu.sh has run as root, nothing may fail.
func TestRealHost(t *testing.T) {
	if _, err := criu.Locate("", ""); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI must have CRIU installed: %v", err)
		}
		t.Skip("no CRIU here; install it with: sudo scripts/get-criu.sh")
	}
	if os.Geteuid() != 0 && os.Getenv("CI") == "" {
		t.Skip("needs root; run the tests with sudo scripts/test.sh")
	}
	cfg := DefaultConfig()
	cfg.StateDir = t.TempDir()
	checks := Run(context.Background(), cfg)
	var buf bytes.Buffer
	_ = WriteText(&buf, checks)
	t.Logf("doctor on this host:\n%s", buf.String())
	if Failed(checks) {
		t.Fatalf("doctor reports failures on a host set up by scripts/setup.sh:\n%s", buf.String())
	}
}

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestBadInputExitsTwoWithOneLine(t *testing.T) {
	dir := t.TempDir()
	unknown := filepath.Join(dir, "unknown.yaml")
	if err := os.WriteFile(unknown, []byte("checkpoint:\n  intervall: 5s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badDur := filepath.Join(dir, "dur.yaml")
	if err := os.WriteFile(badDur, []byte("checkpoint:\n  interval: often\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--config", unknown, "version"}, "unknown key checkpoint.intervall"},
		{[]string{"--config", badDur, "version"}, `checkpoint.interval: "often" is not a duration`},
		{[]string{"--config", filepath.Join(dir, "absent.yaml"), "version"}, "cannot read"},
		{[]string{"--log-level", "loud", "version"}, `log.level: "loud"`},
		{[]string{"--no-such-flag"}, "unknown flag"},
		{[]string{"no-such-command"}, "unknown command"},
		{[]string{"doctor", "extra"}, "unknown command"},
	}
	for _, tc := range cases {
		code, _, stderr := runCLI(t, tc.args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", tc.args, code, stderr)
		}
		if !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: stderr %q lacks %q", tc.args, stderr, tc.want)
		}
		if n := strings.Count(strings.TrimSpace(stderr), "\n"); n != 0 {
			t.Errorf("%v: stderr has %d lines, want one: %q", tc.args, n+1, stderr)
		}
		if strings.Contains(stderr, "goroutine") {
			t.Errorf("%v: stack trace printed", tc.args)
		}
	}
}

func TestMissingCRIUFailsDoctor(t *testing.T) {
	code, stdout, _ := runCLI(t, "--criu", filepath.Join(t.TempDir(), "criu"), "--state-dir", t.TempDir(), "doctor")
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.Contains(stdout, "FAIL  criu") || !strings.Contains(stdout, "get-criu.sh") {
		t.Fatalf("stdout:\n%s", stdout)
	}
}

func TestVersion(t *testing.T) {
	code, stdout, _ := runCLI(t, "version")
	if code != 0 || !strings.HasPrefix(stdout, "doppel ") {
		t.Fatalf("exit %d, stdout %q", code, stdout)
	}
}

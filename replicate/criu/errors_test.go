package criu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sampleLog = `(00.000012) Version: 4.2.1 (gitid 0)
(00.023676) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.026205)      1: Error (criu/files-reg.c:2175): File tmp/app.out has bad size 72 (expect 12)
(00.026209)      1: Error (criu/files.c:1221): Unable to open fd=1 id=0x5
(00.026866) Error (criu/cr-restore.c:2331): Restoring FAILED.
`

func writeLog(t *testing.T, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "restore.log")
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLogErrorsDropsBenignLines(t *testing.T) {
	lines := logErrors(writeLog(t, sampleLog))
	if len(lines) != 3 {
		t.Fatalf("lines %q, want the 3 real errors", lines)
	}
	for _, l := range lines {
		if strings.Contains(l, "RLIMIT_NOFILE") {
			t.Fatalf("benign line kept: %q", l)
		}
	}
	if logErrors(filepath.Join(t.TempDir(), "missing.log")) != nil {
		t.Fatal("missing log yields lines")
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		line string
		want error
	}{
		{"1: Error (criu/files-reg.c:2175): File tmp/x has bad size 72 (expect 12)", ErrFileChanged},
		{"1: Error (criu/files-reg.c:2353): Can't open file tmp/x on restore: No such file or directory", ErrFileChanged},
		{"Error (criu/sk-inet.c:137): inet: Unsupported proto 262 for socket 2fc6", ErrMPTCP},
		{"Error (criu/sk-inet.c:880): inet: Can't bind inet socket (id 12): Address already in use", ErrAddrInUse},
		{"Error (criu/cr-restore.c:1450): Can't fork for 1234: File exists", ErrPIDInUse},
		{"Error (criu/cr-restore.c:1400): Unable to clone 1234: File exists", ErrPIDInUse},
		{"pie: 1: Error (criu/pie/parasite.c:634): Can't create a directory (-17)", ErrBusy},
		{"pie: 1: Error (criu/pie/util.c:44): Can't remove tmp dir proc.crtools: -2", ErrBusy},
		{"Error (criu/mount.c:1): mkdir /x: File exists", nil},
		{"Error (criu/cr-dump.c:1975): Dumping FAILED.", nil},
	} {
		if got := classify([]string{tc.line}); got != tc.want {
			t.Errorf("classify(%q) = %v, want %v", tc.line, got, tc.want)
		}
	}
}

func TestErrorMatchesAndExplains(t *testing.T) {
	log := writeLog(t, sampleLog)
	rpcErr := errors.New("operation failed (msg:Error (criu/util.c:1534): rlimit err:0)")
	err := error(newError("restore", ErrRestore, 0, "/img", log, rpcErr, nil))
	for _, want := range []error{ErrRestore, ErrFileChanged, rpcErr} {
		if !errors.Is(err, want) {
			t.Errorf("error does not match %v", want)
		}
	}
	if errors.Is(err, ErrDump) || errors.Is(err, ErrHook) {
		t.Error("error matches a sentinel it should not")
	}
	msg := err.Error()
	for _, want := range []string{"criu restore", "has bad size 72", "Restoring FAILED", log} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q: %s", want, msg)
		}
	}
	if strings.Contains(msg, "RLIMIT") || strings.Contains(msg, "rlimit") {
		t.Errorf("message repeats a benign line: %s", msg)
	}

	// A hook's error is the cause and is shown even with log lines.
	hookErr := context.Canceled
	err = newError("dump", ErrDump, 42, "/img", log, errors.Join(hookErr, errors.New("criu swrk failed")), hookErr)
	if !errors.Is(err, ErrHook) || !errors.Is(err, ErrDump) || !errors.Is(err, context.Canceled) {
		t.Fatalf("hook error does not match: %v", err)
	}
	if !strings.Contains(err.Error(), "pid 42") || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("hook error message: %v", err)
	}

	// Without a log the RPC error is the message.
	err = newError("dump", ErrDump, 7, "/img", filepath.Join(t.TempDir(), "none.log"), rpcErr, nil)
	if !strings.Contains(err.Error(), "operation failed") {
		t.Fatalf("message without log: %v", err)
	}
}

package main

import (
	"strings"
	"testing"
)

// TestAdoptBadInput: adopt without a valid --pid or with a bad name is a
// one-line usage error naming the fix, before any daemon is asked.
func TestAdoptBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"adopt"}, "doppel adopt --pid N"},
		{[]string{"adopt", "--pid", "1"}, "other than init"},
		{[]string{"adopt", "--pid", "-3"}, "give the PID of a running process"},
		{[]string{"adopt", "--pid", "12", "extra"}, "adopt takes no arguments"},
		{[]string{"adopt", "--pid", "12", "--name", "Bad Name"}, "bad app name"},
		{[]string{"adopt", "--pid", "x"}, "invalid argument"},
	} {
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
	}
}

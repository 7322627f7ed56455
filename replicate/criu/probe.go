// Package criu drives CRIU for doppel: finding a working binary, probing
// what the kernel and CRIU support, and dump, pre-dump and restore over
// go-criu's swrk protocol (Driver).
//
// Every call starts its own CRIU service process, logs to a file in the
// images directory (or a given work directory), and on failure returns an
// *Error carrying the Error lines of that log and matching the sentinels
// callers branch on. CRIU's own stats (stats-dump, stats-restore) and the
// arrival times of its notifications come back with every result, so the
// checkpoint phases are timed from clocks, never estimated.
//
// Trees are expected to be started by replicate/shim: in a PID namespace of
// their own, as their own session, in the host's mount and network
// namespaces, with stdin from /dev/null and stdout and stderr appended to
// log files. Logs keep growing after a dump, and must never break a
// restore: CRIU skips its size check for files opened O_APPEND, but a log
// opened otherwise, or missing on the restoring node, fails the restore. So
// Restore hands logs over by inherit-fd (RestoreOptions.AppendFiles),
// which also keeps the restored tree writing to this node's copy. Logs
// stay plain files rather than pipes to the daemon: a pipe would tie the
// app's life to the reader's, and every restore would need the daemon to
// supply the other end.
package criu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// DefaultPrefix is where scripts/get-criu.sh installs a private CRIU with its
// own libraries and dynamic loader.
const DefaultPrefix = "/usr/local/lib/doppel/criu"

// MinVersion is the oldest CRIU doppel accepts. Older releases fail on
// current kernels (see DESIGN.md, platform facts).
var MinVersion = Version{Major: 4, Minor: 2}

var (
	// ErrNotFound means no CRIU binary was found at the configured path,
	// in the private prefix, or on PATH.
	ErrNotFound = errors.New("criu not found")
	// ErrTooOld means the CRIU found is older than MinVersion.
	ErrTooOld = errors.New("criu too old")
)

// Version is a CRIU release number.
type Version struct {
	Major, Minor, Sublevel int
}

func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Sublevel)
}

// Less reports whether v is older than o.
func (v Version) Less(o Version) bool {
	if v.Major != o.Major {
		return v.Major < o.Major
	}
	if v.Minor != o.Minor {
		return v.Minor < o.Minor
	}
	return v.Sublevel < o.Sublevel
}

var versionRE = regexp.MustCompile(`Version:\s*(\d+)\.(\d+)(?:\.(\d+))?`)

// ParseVersion reads the output of `criu --version`.
func ParseVersion(out string) (Version, error) {
	m := versionRE.FindStringSubmatch(out)
	if m == nil {
		return Version{}, fmt.Errorf("no version in %q", strings.TrimSpace(out))
	}
	var v Version
	v.Major, _ = strconv.Atoi(m[1])
	v.Minor, _ = strconv.Atoi(m[2])
	if m[3] != "" {
		v.Sublevel, _ = strconv.Atoi(m[3])
	}
	return v, nil
}

// Locate returns the CRIU binary to use: configured (if not empty), then
// prefix/bin/criu, then criu on PATH. A configured path that does not exist
// is an error rather than a silent fallback.
func Locate(configured, prefix string) (string, error) {
	if configured != "" {
		if _, err := os.Stat(configured); err != nil {
			return "", fmt.Errorf("%w: criu.path %q: %v (fix criu.path or run scripts/get-criu.sh)", ErrNotFound, configured, err)
		}
		return configured, nil
	}
	if prefix == "" {
		prefix = DefaultPrefix
	}
	p := filepath.Join(prefix, "bin", "criu")
	if st, err := os.Stat(p); err == nil && !st.IsDir() {
		return p, nil
	}
	if p, err := exec.LookPath("criu"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%w in criu.path, %s or PATH (run: sudo scripts/get-criu.sh)", ErrNotFound, prefix)
}

// BinaryVersion runs `criu --version`.
func BinaryVersion(ctx context.Context, path string) (Version, error) {
	out, err := exec.CommandContext(ctx, path, "--version").CombinedOutput()
	if err != nil {
		return Version{}, fmt.Errorf("%s --version: %w: %s", path, err, firstLine(out))
	}
	return ParseVersion(string(out))
}

// Check runs `criu check` and returns its output; err is non-nil when CRIU
// reports the host unusable.
func Check(ctx context.Context, path string) (string, error) {
	out, err := exec.CommandContext(ctx, path, "check").CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		return s, fmt.Errorf("criu check: %w: %s", err, errorLines(s))
	}
	return s, nil
}

// Feature runs `criu check --feature name`. go-criu's FeatureCheck echoes
// the request instead of CRIU's answer, so the command line is the source of
// truth. ok is false when CRIU reports the feature missing.
func Feature(ctx context.Context, path, name string) (ok bool, detail string, err error) {
	cmd := exec.CommandContext(ctx, path, "check", "--feature", name)
	out, runErr := cmd.CombinedOutput()
	detail = cleanFeatureOutput(string(out))
	if runErr != nil {
		var ee *exec.ExitError
		if errors.As(runErr, &ee) {
			if strings.Contains(detail, "Unknown feature") {
				return false, detail, fmt.Errorf("criu check --feature %s: unknown feature", name)
			}
			return false, detail, nil
		}
		return false, detail, fmt.Errorf("criu check --feature %s: %w", name, runErr)
	}
	// CRIU exits 0 for some negative answers and prints a warning.
	if strings.Contains(detail, "is OFF") || strings.Contains(detail, "not supported") {
		return false, detail, nil
	}
	return true, detail, nil
}

// Probe caches feature answers per binary path: they do not change while a
// process runs. The zero value is ready to use and safe for concurrent use.
type Probe struct {
	mu    sync.Mutex
	cache map[string]featureAnswer
}

type featureAnswer struct {
	ok     bool
	detail string
	err    error
}

// Feature is Feature with caching.
func (p *Probe) Feature(ctx context.Context, path, name string) (bool, string, error) {
	key := path + "\x00" + name
	p.mu.Lock()
	a, hit := p.cache[key]
	p.mu.Unlock()
	if hit {
		return a.ok, a.detail, a.err
	}
	ok, detail, err := Feature(ctx, path, name)
	if ctx.Err() != nil {
		return ok, detail, err
	}
	p.mu.Lock()
	if p.cache == nil {
		p.cache = make(map[string]featureAnswer)
	}
	p.cache[key] = featureAnswer{ok, detail, err}
	p.mu.Unlock()
	return ok, detail, err
}

// cleanFeatureOutput drops CRIU's kdat cache noise and source locations.
func cleanFeatureOutput(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.Contains(l, "kdat cache") {
			continue
		}
		// "Warn  (criu/cr-check.c:824): Dirty tracking is OFF." -> message only.
		if i := strings.Index(l, "): "); i >= 0 && strings.Contains(l[:i], "(criu/") {
			l = l[i+3:]
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "; ")
}

// errorLines returns CRIU's "Error" lines from a log or output, joined, or
// the first line when there is none.
func errorLines(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "Error") {
			out = append(out, strings.TrimSpace(l))
		}
	}
	if len(out) == 0 {
		return firstLine([]byte(s))
	}
	return strings.Join(out, "; ")
}

func firstLine(b []byte) string {
	b = bytes.TrimSpace(b)
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

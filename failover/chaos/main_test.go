// Package chaos tests failover end to end: real doppel daemons on loopback
// addresses, the reference app of testdata/kvapp behind the ingress proxy,
// load clients that retry unacknowledged requests, and faults injected at
// random moments (kill -9 of the OP node and everything it started,
// SIGSTOP of the OP daemon longer than the fence lease, bad client input, a
// clone that acknowledges late). The checks are those the cluster
// promises: every acknowledged increment is in the final state exactly
// once, the app's data file agrees with its memory, and two OPs never
// serve at once. Benchmarks measure the proxy's cost and failover times.
//
// The package is test-only. The end-to-end tests need root, CRIU 4.2+, a
// cgroup file system, and for the network-namespace clusters ip
// (iproute2), unshare, nsenter and mount (util-linux); outside CI (CI
// unset) they skip without them, in CI they fail. They skip under -short;
// the unit tests of the reference app, the load client and the checks run
// always.
//
// TestChaosKillOP runs CHAOS_CYCLES failovers (20 by default); CHAOS_SEED
// replays the random kill moments of a run. The whole package takes about
// five minutes on two cores: run it with -timeout 20m. Benchmarks:
// BenchmarkServiceThroughput, BenchmarkProxyInProcess (no root needed) and
// BenchmarkFailover64MiB (-benchtime=5x or more: one failover per
// iteration).
package chaos

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"doppel/replicate/criu"
)

// build holds the binaries TestMain builds once for every test: the
// reference app (always) and the doppel binary (unless -short). err is why
// doppel is missing (a skip reason outside CI, a failure in it); kvappErr
// why the app is.
var build struct {
	dir      string
	doppel   string
	kvapp    string
	err      error
	kvappErr error
}

func TestMain(m *testing.M) {
	flag.Parse()
	build.dir, build.kvappErr = os.MkdirTemp("", "doppel-chaos-bin-")
	if build.kvappErr == nil {
		build.kvapp = filepath.Join(build.dir, "kvapp")
		build.kvappErr = goBuild(build.kvapp, "./testdata/kvapp")
	}
	build.err = errShort
	if !testing.Short() {
		build.err = buildDoppel()
	}
	code := m.Run()
	if build.dir != "" {
		// Anything still running from the binaries built here belongs to a
		// test that could not clean up.
		if left := killMatching(build.dir); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "chaos: killed %d leftover process(es): %s\n", len(left), strings.Join(left, "; "))
		}
		os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

var errShort = fmt.Errorf("end-to-end test with real daemons and CRIU; skipped with -short")

// prerequisite is a missing host prerequisite: a skip outside CI.
type prerequisite struct{ msg string }

func (p prerequisite) Error() string { return p.msg }

func goBuild(out, pkg string) error {
	b, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return nil
}

// buildDoppel checks the host and builds doppel.
func buildDoppel() error {
	if build.kvappErr != nil {
		return build.kvappErr
	}
	if os.Geteuid() != 0 {
		return prerequisite{"the chaos tests need root: run with sudo or scripts/test.sh"}
	}
	p, err := criu.Locate("", "")
	if err != nil {
		return prerequisite{fmt.Sprintf("%v (install with: sudo scripts/get-criu.sh)", err)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := criu.BinaryVersion(ctx, p)
	if err != nil {
		return prerequisite{fmt.Sprintf("criu %s: %v (install with: sudo scripts/get-criu.sh)", p, err)}
	}
	if v.Less(criu.MinVersion) {
		return prerequisite{fmt.Sprintf("criu %s is %v, need %v (install with: sudo scripts/get-criu.sh)", p, v, criu.MinVersion)}
	}
	if _, err := os.Stat("/sys/fs/cgroup"); err != nil {
		return prerequisite{fmt.Sprintf("no cgroup file system: %v", err)}
	}
	build.doppel = filepath.Join(build.dir, "doppel")
	return goBuild(build.doppel, "doppel")
}

// requireE2E skips under -short, skips (outside CI) or fails (in CI) when
// the host lacks a prerequisite, and fails when the build failed.
func requireE2E(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip(errShort)
	}
	if p, ok := build.err.(prerequisite); ok {
		if os.Getenv("CI") != "" {
			t.Fatalf("prerequisite missing in CI: %v", p)
		}
		t.Skip(p.msg)
	}
	if build.err != nil {
		t.Fatal(build.err)
	}
}

// requireKVApp fails when the reference app could not be built.
func requireKVApp(t testing.TB) {
	t.Helper()
	if build.kvappErr != nil {
		t.Fatal(build.kvappErr)
	}
}

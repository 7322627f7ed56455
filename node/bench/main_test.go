package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"testing"
	"time"

	rbench "doppel/replicate/bench"
	"doppel/replicate/criu"
	"doppel/replicate/shim"
)

// appRole is the first argument with which the test binary runs the
// synthetic app.
const appRole = "bench-test-app"

func TestMain(m *testing.M) {
	// The engine starts apps under /proc/self/exe as their init.
	if len(os.Args) > 1 && os.Args[1] == shim.Subcommand {
		os.Exit(shim.Main(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == appRole {
		os.Exit(runTestApp(os.Args[2:]))
	}
	if os.Geteuid() == 0 {
		// The restored app is a child of this process.
		_ = criu.SetChildSubreaper()
	}
	os.Exit(m.Run())
}

func runTestApp(args []string) int {
	fs := flag.NewFlagSet(appRole, flag.ContinueOnError)
	size := fs.Int64("size", 0, "")
	dirty := fs.Float64("dirty-rate", 0, "")
	listen := fs.String("listen", "", "")
	seed := fs.Uint64("seed", 0, "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := rbench.RunApp(ctx, rbench.AppConfig{Size: *size, DirtyRate: *dirty, Listen: *listen, Seed: *seed}, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "app:", err)
		return 1
	}
	return 0
}

func testAppCommand(t testing.TB) func(rbench.AppConfig) []string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return func(c rbench.AppConfig) []string {
		return []string{exe, appRole, "-size", strconv.FormatInt(c.Size, 10),
			"-dirty-rate", strconv.FormatFloat(c.DirtyRate, 'g', -1, 64), "-listen", c.Listen,
			"-seed", strconv.FormatUint(c.Seed, 10)}
	}
}

// skipOrFail skips a test whose prerequisite is missing, except in CI,
// where every prerequisite is installed and a skip would hide a failure.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("prerequisite missing in CI: "+format, args...)
	}
	t.Skipf(format, args...)
}

// requireCRIU skips (outside CI) unless the host can checkpoint: root,
// CRIU 4.2+, a cgroup file system.
func requireCRIU(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test with CRIU; skipped with -short")
	}
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root: run with sudo or scripts/test.sh")
	}
	p, err := criu.Locate("", "")
	if err != nil {
		skipOrFail(t, "%v (install with: sudo scripts/get-criu.sh)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := criu.BinaryVersion(ctx, p)
	if err != nil {
		skipOrFail(t, "criu %s: %v (install with: sudo scripts/get-criu.sh)", p, err)
	}
	if v.Less(criu.MinVersion) {
		skipOrFail(t, "criu %s is %v, need %v (install with: sudo scripts/get-criu.sh)", p, v, criu.MinVersion)
	}
	if _, err := os.Stat("/sys/fs/cgroup"); errors.Is(err, os.ErrNotExist) {
		skipOrFail(t, "no cgroup file system")
	}
}

package criu

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
)

func TestDefaultConfigValid(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	o, err := c.rpcOpts()
	if err != nil {
		t.Fatal(err)
	}
	if !o.GetTcpEstablished() || !o.GetExtUnixSk() || !o.GetFileLocks() || !o.GetTcpSkipInFlight() || o.GetShellJob() {
		t.Fatalf("default options %+v", o)
	}
	if o.GetNetworkLock() != rpc.CriuNetworkLockMethod_NFTABLES {
		t.Fatalf("network lock %v, want NFTABLES", o.GetNetworkLock())
	}
	if o.GetLogLevel() != 2 || o.Timeout != nil {
		t.Fatalf("log level %d timeout %v", o.GetLogLevel(), o.Timeout)
	}
}

func TestConfigMapping(t *testing.T) {
	c := DefaultConfig()
	c.NetworkLock = NetworkLockIptables
	c.ShellJob = true
	c.TCPEstablished = false
	c.FreezeTimeout = 1500 * time.Millisecond
	c.LogLevel = 4
	o, err := c.rpcOpts()
	if err != nil {
		t.Fatal(err)
	}
	if o.GetNetworkLock() != rpc.CriuNetworkLockMethod_IPTABLES || !o.GetShellJob() || o.GetTcpEstablished() {
		t.Fatalf("options %+v", o)
	}
	if o.GetTimeout() != 2 {
		t.Fatalf("timeout %d s, want 1.5s rounded up to 2", o.GetTimeout())
	}
	if o.GetLogLevel() != 4 {
		t.Fatalf("log level %d", o.GetLogLevel())
	}
	c.NetworkLock = NetworkLockSkip
	if o, _ := c.rpcOpts(); o.GetNetworkLock() != rpc.CriuNetworkLockMethod_SKIP {
		t.Fatal("skip not mapped")
	}
}

func TestConfigValidate(t *testing.T) {
	for name, mut := range map[string]func(*Config){
		"lock":    func(c *Config) { c.NetworkLock = "pf" },
		"level":   func(c *Config) { c.LogLevel = 5 },
		"timeout": func(c *Config) { c.FreezeTimeout = -time.Second },
	} {
		c := DefaultConfig()
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: invalid config accepted", name)
		}
		if _, err := New(c); err == nil {
			t.Errorf("%s: New accepted an invalid config", name)
		}
	}
}

func TestNewMissingBinary(t *testing.T) {
	c := DefaultConfig()
	c.Path = filepath.Join(t.TempDir(), "criu")
	if _, err := New(c); !errors.Is(err, ErrNotFound) {
		t.Fatalf("got %v, want ErrNotFound", err)
	}
}

// fakeDriver is a driver whose binary is never run: its feature probe
// answers as told.
func fakeDriver(ok bool, detail string, err error) (*Driver, *int) {
	calls := new(int)
	d := &Driver{cfg: DefaultConfig(), path: "/nonexistent/criu"}
	d.feature = func(context.Context, string) (bool, string, error) {
		*calls++
		return ok, detail, err
	}
	return d, calls
}

func TestRequirementDecision(t *testing.T) {
	probeErr := errors.New("exec: criu: not found")
	for _, tc := range []struct {
		name        string
		ok          bool
		detail      string
		err         error
		unsupported bool
		fails       bool
	}{
		{"present", true, "", nil, false, false},
		{"missing", false, "Dirty tracking is OFF.", nil, true, true},
		{"missing no detail", false, "", nil, true, true},
		{"probe failed", false, "", probeErr, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := requirement(FeatureMemDirtyTrack, "pre-dump", tc.ok, tc.detail, tc.err)
			if (err != nil) != tc.fails || errors.Is(err, ErrUnsupported) != tc.unsupported {
				t.Fatalf("got %v", err)
			}
			if tc.err != nil && !errors.Is(err, tc.err) {
				t.Fatalf("probe error lost: %v", err)
			}
			if tc.detail != "" && !strings.Contains(err.Error(), tc.detail) {
				t.Fatalf("detail lost: %v", err)
			}
		})
	}
}

func TestPreDumpRefusedWithoutDirtyTracking(t *testing.T) {
	ctx := context.Background()
	d, calls := fakeDriver(false, "Dirty tracking is OFF. Memory snapshot will not work.", nil)
	dir := t.TempDir()
	if _, err := d.StartIncremental(ctx, os.Getpid()); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("StartIncremental: %v, want ErrUnsupported", err)
	}
	if _, err := d.Dump(ctx, DumpOptions{Pid: os.Getpid(), ImagesDir: dir, ParentDir: "../pre"}); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Dump with parent: %v, want ErrUnsupported", err)
	}
	if _, err := d.dump(ctx, nil, DumpOptions{Pid: os.Getpid(), ImagesDir: dir}, true); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("pre-dump: %v, want ErrUnsupported", err)
	}
	if *calls != 3 {
		t.Fatalf("feature probed %d times, want 3", *calls)
	}
	// Nothing was started or written.
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("refused dump wrote %d files", len(entries))
	}
}

func TestPreDumpAllowedWithDirtyTracking(t *testing.T) {
	// With the feature present the decision passes and the call goes on to
	// its next check: here, a process that does not exist.
	d, _ := fakeDriver(true, "", nil)
	_, err := d.Dump(context.Background(), DumpOptions{Pid: 1 << 22, ImagesDir: t.TempDir(), ParentDir: "../pre"})
	if errors.Is(err, ErrUnsupported) || !errors.Is(err, ErrNoProcess) {
		t.Fatalf("got %v, want ErrNoProcess (decision passed)", err)
	}
}

func TestDumpArgumentErrors(t *testing.T) {
	d, calls := fakeDriver(true, "", nil)
	ctx := context.Background()
	if _, err := d.Dump(ctx, DumpOptions{ImagesDir: t.TempDir()}); err == nil {
		t.Fatal("no pid accepted")
	}
	if _, err := d.Dump(ctx, DumpOptions{Pid: os.Getpid()}); err == nil {
		t.Fatal("no images dir accepted")
	}
	if _, err := d.Dump(ctx, DumpOptions{Pid: os.Getpid(), ImagesDir: filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Fatal("missing images dir accepted")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := d.Dump(cctx, DumpOptions{Pid: os.Getpid(), ImagesDir: t.TempDir()}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	if _, err := d.Restore(cctx, RestoreOptions{ImagesDir: t.TempDir()}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled restore: %v", err)
	}
	if _, err := d.Restore(ctx, RestoreOptions{}); err == nil {
		t.Fatal("restore without images accepted")
	}
	if *calls != 0 {
		t.Fatalf("feature probed %d times for argument errors", *calls)
	}
}

func TestRelativeParent(t *testing.T) {
	for _, tc := range []struct{ images, parent, want string }{
		{"/s/app/epochs/7", "/s/app/epochs/6", "../6"},
		{"/s/app/epochs/7", "../6", "../6"},
		{"/a/b", "/c", "../../c"},
	} {
		got, err := relativeParent(tc.images, tc.parent)
		if err != nil || got != tc.want {
			t.Errorf("relativeParent(%q, %q) = %q, %v; want %q", tc.images, tc.parent, got, err, tc.want)
		}
	}
}

func TestFileKey(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	resolvedReal, err := filepath.EvalSymlinks(real)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.TrimPrefix(filepath.Join(resolvedReal, "app.log"), "/")
	// Missing file under a symlinked directory, then existing file.
	for range 2 {
		got, err := FileKey(filepath.Join(link, "app.log"))
		if err != nil || got != want {
			t.Fatalf("FileKey = %q, %v; want %q", got, err, want)
		}
		if err := os.WriteFile(filepath.Join(real, "app.log"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if strings.HasPrefix(want, "/") {
		t.Fatal("key keeps the leading slash")
	}
}

func TestSubreaper(t *testing.T) {
	// Process-wide: check it in a child process.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = withRole("subreaper")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "before=false after=true" {
		t.Fatalf("subreaper child: %q, %v", out, err)
	}
}

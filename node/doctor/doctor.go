// Package doctor checks that a host can run doppel: privileges, a working
// CRIU and the kernel features it relies on, the cgroup freezer, the
// nftables network lock, and room in the state directory. Each check says
// what it found and, when something is missing, what to do and what it
// changes for the user.
package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"doppel/introspect"
	"doppel/replicate/criu"
)

// Status of one check.
type Status string

const (
	OK   Status = "OK"
	Warn Status = "WARN"
	Fail Status = "FAIL"
)

// Check is the outcome of one check.
type Check struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	// Fix says what to do; empty when Status is OK.
	Fix string `json:"fix,omitempty"`
}

// Config is what the checks need to know about this node.
type Config struct {
	// CRIUPath is the configured criu binary (empty: look it up).
	CRIUPath string
	// CRIUPrefix is the private prefix of scripts/get-criu.sh.
	CRIUPrefix string
	// StateDir is the node's state directory.
	StateDir string
	// MinFreeBytes below which free space in StateDir is a failure, and
	// WarnFreeBytes below which it is a warning.
	MinFreeBytes, WarnFreeBytes uint64
	// CgroupRoot is where cgroupfs is mounted.
	CgroupRoot string
}

// DefaultConfig checks the default locations.
func DefaultConfig() Config {
	return Config{
		CRIUPrefix:    criu.DefaultPrefix,
		StateDir:      "/var/lib/doppel",
		MinFreeBytes:  256 << 20,
		WarnFreeBytes: 2 << 30,
		CgroupRoot:    "/sys/fs/cgroup",
	}
}

// feature is a CRIU feature doppel uses, with what its absence means.
type feature struct {
	name    string
	use     string
	without string
	need    Status // status when absent
}

var features = []feature{
	{"mem_dirty_track", "pre-dump shortens the freeze to the pages dirtied since the last pass",
		"no soft-dirty tracking: incremental capture falls back to a content delta (transfer stays small, freeze is a full memory dump)", Warn},
	{"uffd", "lazy-pages (post-copy) restore",
		"no userfaultfd: relocation and failover restore all pages before resuming (post-copy is optional)", Warn},
	{"network_lock_nftables", "nftables network lock keeps established TCP connections quiet while frozen",
		"no nftables lock: established TCP connections cannot be checkpointed", Fail},
	{"tcp_half_closed", "half-closed TCP connections",
		"half-closed TCP connections block a checkpoint", Warn},
}

// Run runs every check in order. It never fails as a whole: what cannot be
// checked is reported as a failed check.
func Run(ctx context.Context, cfg Config) []Check {
	var out []Check
	out = append(out, checkRoot())
	out = append(out, checkKernel())
	path, crius := checkCRIU(ctx, cfg)
	out = append(out, crius...)
	if path != "" {
		var p criu.Probe
		for _, f := range features {
			out = append(out, checkFeature(ctx, &p, path, f))
		}
	}
	out = append(out, checkFreezer(cfg.CgroupRoot))
	out = append(out, checkFDIterator())
	out = append(out, checkStateDir(cfg))
	return out
}

// checkFDIterator says whether resource scans can read descriptors with
// the BPF iterator; without it they read procfs, at about twice the CPU.
func checkFDIterator() Check {
	if err := introspect.FDIteratorStatus(); err != nil {
		return Check{Name: "descriptor scan", Status: Warn, Detail: "procfs only: " + err.Error(),
			Fix: "needs root and a kernel with BTF (CONFIG_DEBUG_INFO_BTF, Linux 5.10+); scans of large apps cost about twice the CPU without it"}
	}
	return Check{Name: "descriptor scan", Status: OK, Detail: "BPF task_file iterator (one pass per scan)"}
}

// Failed reports whether any check failed.
func Failed(checks []Check) bool {
	for _, c := range checks {
		if c.Status == Fail {
			return true
		}
	}
	return false
}

// WriteText prints one line per check: status, name, detail, and the fix.
func WriteText(w io.Writer, checks []Check) error {
	for _, c := range checks {
		line := fmt.Sprintf("%-4s  %-29s %s", c.Status, c.Name, c.Detail)
		if c.Fix != "" {
			line += " — " + c.Fix
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	return nil
}

// WriteJSON prints the checks as a JSON array.
func WriteJSON(w io.Writer, checks []Check) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(checks)
}

func checkRoot() Check {
	if os.Geteuid() == 0 {
		return Check{Name: "root", Status: OK, Detail: "running as root"}
	}
	return Check{Name: "root", Status: Fail, Detail: fmt.Sprintf("running as uid %d", os.Geteuid()),
		Fix: "CRIU needs root: run with sudo"}
}

func checkKernel() Check {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return Check{Name: "kernel", Status: Fail, Detail: err.Error(), Fix: "uname failed; is /proc mounted?"}
	}
	rel := unix.ByteSliceToString(u.Release[:])
	major, minor := kernelVersion(rel)
	if major < 5 || (major == 5 && minor < 10) {
		return Check{Name: "kernel", Status: Warn, Detail: "Linux " + rel,
			Fix: "doppel is tested on Linux 5.10 and newer; upgrade the kernel"}
	}
	return Check{Name: "kernel", Status: OK, Detail: "Linux " + rel}
}

func kernelVersion(rel string) (major, minor int) {
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		return 0, 0
	}
	major, _ = strconv.Atoi(parts[0])
	digits := parts[1]
	if i := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		digits = digits[:i]
	}
	minor, _ = strconv.Atoi(digits)
	return major, minor
}

// checkCRIU finds CRIU and checks its version and `criu check`. It returns
// the path when CRIU is usable enough to probe features.
func checkCRIU(ctx context.Context, cfg Config) (string, []Check) {
	const get = "run: sudo scripts/get-criu.sh"
	path, err := criu.Locate(cfg.CRIUPath, cfg.CRIUPrefix)
	if err != nil {
		return "", []Check{{Name: "criu", Status: Fail, Detail: err.Error(), Fix: get}}
	}
	v, err := criu.BinaryVersion(ctx, path)
	if err != nil {
		return "", []Check{{Name: "criu", Status: Fail, Detail: err.Error(), Fix: get + " (or fix criu.path)"}}
	}
	out := []Check{}
	if v.Less(criu.MinVersion) {
		out = append(out, Check{Name: "criu", Status: Fail,
			Detail: fmt.Sprintf("%s is CRIU %s, doppel needs %d.%d or newer", path, v, criu.MinVersion.Major, criu.MinVersion.Minor),
			Fix:    get + " (installs a private CRIU 4.2+; older ones fail on current kernels)"})
		return "", out
	}
	out = append(out, Check{Name: "criu", Status: OK, Detail: fmt.Sprintf("CRIU %s at %s", v, path)})
	if _, err := criu.Check(ctx, path); err != nil {
		out = append(out, Check{Name: "criu check", Status: Fail, Detail: err.Error(),
			Fix: "CRIU cannot work on this kernel as it is; read the error, or " + get + " --force"})
		return "", out
	}
	out = append(out, Check{Name: "criu check", Status: OK, Detail: "looks good"})
	return path, out
}

func checkFeature(ctx context.Context, p *criu.Probe, path string, f feature) Check {
	name := "feature " + f.name
	ok, detail, err := p.Feature(ctx, path, f.name)
	if err != nil {
		return Check{Name: name, Status: f.need, Detail: err.Error(), Fix: f.without}
	}
	if ok {
		return Check{Name: name, Status: OK, Detail: f.use}
	}
	if detail == "" {
		detail = "not supported"
	}
	return Check{Name: name, Status: f.need, Detail: detail, Fix: f.without}
}

func checkFreezer(root string) Check {
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		// cgroup v2: the freezer is built into every non-root cgroup.
		self, err := os.ReadFile("/proc/self/cgroup")
		if err == nil {
			for _, l := range strings.Split(string(self), "\n") {
				if rel, ok := strings.CutPrefix(l, "0::"); ok {
					f := filepath.Join(root, rel, "cgroup.freeze")
					if rel == "/" {
						f = filepath.Join(root, "init.scope", "cgroup.freeze")
					}
					if _, err := os.Stat(f); err == nil {
						return Check{Name: "cgroup freezer", Status: OK, Detail: "cgroup v2 freezer at " + root}
					}
				}
			}
		}
		return Check{Name: "cgroup freezer", Status: OK, Detail: "cgroup v2 at " + root + " (freezer built in)"}
	}
	if st, err := os.Stat(filepath.Join(root, "freezer")); err == nil && st.IsDir() {
		return Check{Name: "cgroup freezer", Status: OK, Detail: "cgroup v1 freezer at " + filepath.Join(root, "freezer")}
	}
	return Check{Name: "cgroup freezer", Status: Warn, Detail: "no cgroup freezer found under " + root,
		Fix: "CRIU will stop tasks one by one with ptrace, which is slower for large trees; mount cgroup2 at /sys/fs/cgroup"}
}

func checkStateDir(cfg Config) Check {
	dir := cfg.StateDir
	// Measure the nearest existing ancestor: the directory is created on
	// first use.
	for {
		if _, err := os.Stat(dir); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return Check{Name: "state dir", Status: Fail, Detail: fmt.Sprintf("%s: %v", cfg.StateDir, err),
			Fix: "set node.state_dir to a writable local directory"}
	}
	free := st.Bavail * uint64(st.Bsize)
	detail := fmt.Sprintf("%s: %s free", cfg.StateDir, humanBytes(free))
	switch {
	case free < cfg.MinFreeBytes:
		return Check{Name: "state dir", Status: Fail, Detail: detail,
			Fix: fmt.Sprintf("free space or move node.state_dir: at least %s is needed", humanBytes(cfg.MinFreeBytes))}
	case free < cfg.WarnFreeBytes:
		return Check{Name: "state dir", Status: Warn, Detail: detail,
			Fix: "epochs of large apps need room: keep at least a few times their memory size free"}
	}
	return Check{Name: "state dir", Status: OK, Detail: detail}
}

func humanBytes(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

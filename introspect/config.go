package introspect

import (
	"path/filepath"
	"strings"
	"time"
)

// Scope says which processes belong to the scanned tree.
type Scope string

const (
	// ScopeTree is the root process and all its descendants.
	ScopeTree Scope = "tree"
	// ScopePIDNamespace adds to ScopeTree every process that lives in the
	// root's PID namespace (for instance one entered with setns), so that
	// a graph rooted at a namespace init covers the whole namespace.
	ScopePIDNamespace Scope = "pidns"
)

// Config tunes scanning and watching. Build one with DefaultConfig and
// change the fields that matter.
type Config struct {
	// ScanInterval is the period of the Watcher's full re-scan, which
	// finds opened and closed descriptors and socket state changes. The
	// process membership is probed twice per interval, so a process that
	// lives at least one interval is always reported, with or without
	// the process connector.
	ScanInterval time.Duration

	// DataPaths are the directories (or files) whose content doppel
	// replicates. A file opened for writing outside them gets a warning.
	DataPaths []string

	// ProcRoot is where procfs is mounted.
	ProcRoot string

	// Scope selects the processes of the tree.
	Scope Scope

	// MapSizes reads /proc/PID/smaps for per-mapping RSS, PSS, dirty and
	// swap sizes. The kernel walks the page tables for it, which costs
	// time proportional to the resident memory; false reads
	// /proc/PID/maps only (layout and sizes, no residency).
	MapSizes bool

	// Mappings lists every memory mapping in Process.Mappings. False
	// keeps only the mappings a verdict or an edge rests on (shared,
	// special, deleted or device mappings); Process.MapSummary still
	// counts them all.
	Mappings bool

	// ProcessDetails reads each process's cmdline, exe and cgroups and
	// all its namespaces. False reads only the ipc, mnt, net and pid
	// namespaces, which the scan itself needs.
	ProcessDetails bool

	// FDInfo reads /proc/PID/fdinfo for the offset and open flags of
	// regular files and the details of anonymous inodes (eventfd count,
	// epoll targets, inotify watches). False takes the open mode from the
	// descriptor's link and leaves offsets, flags and details empty.
	FDInfo bool

	// PipeAccess reads the open mode (read or write end) of every pipe
	// descriptor, one lstat each. False reads it only for the pipes whose
	// ends are held by more than one process or outside the tree, where
	// an edge or a verdict depends on it; the other pipe holders keep an
	// empty Access.
	PipeAccess bool

	// Threads lists every thread with its name, state and CPU time. False
	// leaves Process.Threads empty (Process.ThreadCount still counts
	// them).
	Threads bool

	// OutsideHolders looks through the descriptors of every process
	// outside the tree for the pipes and sockets of the tree, to find
	// resources shared with the outside (a blocker) and the outside end
	// of pipes. It costs one readlink per descriptor on the machine.
	OutsideHolders bool

	// ShellJob says the dump will be taken as CRIU's --shell-job (as an
	// adoption's is): a root that is not a session leader is then no
	// blocker.
	ShellJob bool

	// GhostLimit is the size above which a deleted file that is still
	// open cannot be dumped. It mirrors CRIU's --ghost-limit (1 MiB by
	// default); set it to the value the checkpoint engine passes.
	GhostLimit int64

	// ProcfsFDs reads descriptors through procfs only. By default, as
	// root on a kernel with BTF, a scan reads the descriptors of the
	// processes the last scan found with one BPF iterator pass instead
	// of two to three procfs calls each (see FDSource).
	ProcfsFDs bool

	// UseProcConnector lets the Watcher subscribe to the kernel's process
	// events (fork, exec, exit) when it can (root is needed); otherwise it
	// only polls.
	UseProcConnector bool
}

// DefaultConfig returns the configuration used by the CLI and the daemon.
func DefaultConfig() Config {
	return Config{
		ScanInterval:     500 * time.Millisecond,
		DataPaths:        nil,
		ProcRoot:         "/proc",
		Scope:            ScopeTree,
		MapSizes:         true,
		Mappings:         true,
		ProcessDetails:   true,
		FDInfo:           true,
		PipeAccess:       true,
		Threads:          true,
		OutsideHolders:   true,
		GhostLimit:       1 << 20,
		UseProcConnector: true,
	}
}

// CheckpointConfig is DefaultConfig for a scan inside a checkpoint's freeze
// window: it keeps everything a verdict depends on (so Preflight finds the
// same findings) and drops the details that cost most — page-table walks
// for mapping sizes, the list of private mappings, fdinfo reads,
// per-thread stats, the ends of pipes no edge or verdict needs, command
// lines, cgroups and the namespaces no verdict
// uses.
func CheckpointConfig() Config {
	cfg := DefaultConfig()
	cfg.MapSizes = false
	cfg.Mappings = false
	cfg.ProcessDetails = false
	cfg.FDInfo = false
	cfg.PipeAccess = false
	cfg.Threads = false
	return cfg
}

// normalized returns cfg with zero values replaced by defaults and the
// data paths cleaned.
func (cfg Config) normalized() Config {
	def := DefaultConfig()
	if cfg.ScanInterval <= 0 {
		cfg.ScanInterval = def.ScanInterval
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = def.ProcRoot
	}
	if cfg.Scope == "" {
		cfg.Scope = def.Scope
	}
	if cfg.GhostLimit <= 0 {
		cfg.GhostLimit = def.GhostLimit
	}
	paths := make([]string, 0, len(cfg.DataPaths))
	for _, p := range cfg.DataPaths {
		if p == "" {
			continue
		}
		paths = append(paths, filepath.Clean(p))
	}
	cfg.DataPaths = paths
	return cfg
}

// dataPathOf returns the data path that contains path, or "".
func (cfg *Config) dataPathOf(path string) string {
	for _, d := range cfg.DataPaths {
		if path == d || d == "/" || strings.HasPrefix(path, d+"/") {
			return d
		}
	}
	return ""
}

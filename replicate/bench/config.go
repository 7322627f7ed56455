// Package bench measures how fast this host checkpoints, and recommends a
// checkpoint interval and a number of clones for an app of a given size.
//
// Measure starts a synthetic app (RunApp: page-like memory, a line protocol
// to rewrite some of it) under a replicate.Engine of its own in a
// temporary state directory, takes epochs of it and times every phase; it
// also times the store's hash (xxh3) and the wire's LZ4 on page-like data
// and fsynced writes to the state directory's disk, and, with a baseline,
// bare `criu dump --leave-running` runs of the same app, alternated with
// the engine's. Recommend turns those measurements into an interval and a
// replica count for another app size and says which cost dominates; it is
// a pure function.
//
// The package also holds the clients the benchmark scripts use against
// the synthetic app (Load, FirstAnswer).
package bench

import (
	"io"
	"log/slog"
	"time"

	"doppel/replicate/criu"
)

// Config configures Measure.
type Config struct {
	// StateDir is the directory under which Measure makes its temporary
	// state directory (epoch store, app state); its disk is the one
	// measured. Required, absolute.
	StateDir string
	// WorkDir is where CRIU writes images before they are stored; empty
	// means the engine's default (/dev/shm when it exists).
	WorkDir string
	// CRIU is how CRIU runs, for the engine and the bare dumps.
	CRIU criu.Config
	// AppCommand returns the command line that runs RunApp with the given
	// configuration (for the doppel binary, `doppel bench app ...`). Its
	// first element must be an absolute path. Required.
	AppCommand func(AppConfig) []string
	// Size is the synthetic app's memory in bytes.
	Size int64
	// Rounds is how many times each measurement is repeated; the report
	// gives medians.
	Rounds int
	// DirtyFraction is the fraction of the app's pages rewritten before the
	// incremental epoch of each round.
	DirtyFraction float64
	// Baseline also times a bare `criu dump --leave-running` of the app
	// (images to WorkDir) in each round, before the engine's checkpoint in
	// even rounds and after it in odd ones.
	Baseline bool
	// CPUBytes is the amount of page-like data hashed and compressed to
	// time the store's hash and the wire's LZ4.
	CPUBytes int64
	// DiskBytes is the amount written and fsynced to time the disk.
	DiskBytes int64
	// StartTimeout bounds the synthetic app's start (filling its memory).
	StartTimeout time.Duration
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
	// Logger receives the engine's log; nil discards it.
	Logger *slog.Logger
}

// DefaultConfig measures a 256 MiB app in 3 rounds with 1% of its pages
// dirtied between epochs, no baseline, 256 MiB of data for the hash, LZ4
// and disk timings, under /var/lib/doppel.
func DefaultConfig() Config {
	return Config{
		StateDir:      "/var/lib/doppel",
		CRIU:          criu.DefaultConfig(),
		Size:          256 << 20,
		Rounds:        3,
		DirtyFraction: 0.01,
		CPUBytes:      256 << 20,
		DiskBytes:     256 << 20,
		StartTimeout:  2 * time.Minute,
	}
}

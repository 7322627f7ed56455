package store

import (
	"log/slog"
	"runtime"
)

// Config tunes a Store. Start from DefaultConfig and change fields.
type Config struct {
	// Retention is how many complete epochs of each app GC keeps (the newest
	// ones). Values below 1 are treated as 1.
	Retention int

	// PackSize is the size at which a pack file being written is closed and
	// the next record starts a new one. Smaller packs make GC reclaim space
	// sooner; larger ones mean fewer files.
	PackSize int64

	// CompactBelow is the live ratio (live bytes / pack bytes) under which GC
	// rewrites a pack's live records into a new pack and deletes the old one.
	// Packs with no live record are always deleted. 0 disables compaction.
	CompactBelow float64

	// Workers is how many goroutines hash pages during ingest. Values below 1
	// mean runtime.GOMAXPROCS(0).
	Workers int

	// Sync makes every commit fsync the files and directories it wrote before
	// the epoch becomes visible. Only tests and benchmarks that measure
	// something else turn it off; without it a power loss can leave a visible
	// epoch whose data is not on disk.
	Sync bool

	// Logger receives one line per commit and GC. Nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the production configuration: keep the newest 2
// epochs, 256 MiB packs compacted below 50% live, hash on every CPU, fsync on
// commit.
func DefaultConfig() Config {
	return Config{
		Retention:    2,
		PackSize:     256 << 20,
		CompactBelow: 0.5,
		Workers:      runtime.GOMAXPROCS(0),
		Sync:         true,
	}
}

func (c Config) normalized() Config {
	if c.Retention < 1 {
		c.Retention = 1
	}
	if c.PackSize < ChunkSize {
		c.PackSize = ChunkSize
	}
	if c.Workers < 1 {
		c.Workers = runtime.GOMAXPROCS(0)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

package criu

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/stats"
)

// DumpStats is CRIU's own account of a dump or pre-dump (its stats-dump
// image). Times are CRIU's clock, pages are 4 KiB pages.
type DumpStats struct {
	// FreezingTime is how long CRIU took to stop every task of the tree.
	FreezingTime time.Duration
	// FrozenTime is how long the tree stayed stopped.
	FrozenTime time.Duration
	// MemdumpTime is the time spent collecting memory pages.
	MemdumpTime time.Duration
	// MemwriteTime is the time spent writing pages to the images.
	MemwriteTime time.Duration
	// IrmapResolve is the time spent resolving inotify/fanotify paths.
	IrmapResolve time.Duration

	PagesScanned       uint64 // private pages looked at
	PagesSkippedParent uint64 // unchanged since the parent images, not written
	PagesWritten       uint64 // private pages written
	PagesLazy          uint64 // left for lazy (post-copy) restore
	PagePipes          uint64 // page pipes used to move pages
	PagePipeBufs       uint64 // buffers in those pipes
	ShpagesScanned     uint64 // shared anonymous pages looked at
	ShpagesSkipped     uint64 // shared pages skipped thanks to the parent
	ShpagesWritten     uint64 // shared pages written
}

// RestoreStats is CRIU's own account of a restore (stats-restore).
type RestoreStats struct {
	// ForkingTime is the time spent re-creating the tasks.
	ForkingTime time.Duration
	// RestoreTime is the time from the start of the restore until the tree
	// was running again.
	RestoreTime time.Duration

	PagesCompared   uint64 // pages compared with the parent
	PagesSkippedCow uint64 // pages shared copy-on-write, not copied
	PagesRestored   uint64 // pages written into the tree
}

// usec converts CRIU's microsecond counters.
func usec(v uint32) time.Duration { return time.Duration(v) * time.Microsecond }

// decodeStats decodes a CRIU stats image: two magics, a payload size and
// a StatsEntry. Unlike go-criu's reader it checks lengths before slicing.
func decodeStats(b []byte) (*stats.StatsEntry, error) {
	if len(b) < stats.PayloadOffset {
		return nil, fmt.Errorf("stats image too short (%d bytes)", len(b))
	}
	if m := binary.LittleEndian.Uint32(b[stats.PrimaryMagicOffset:]); m != stats.ImgServiceMagic {
		return nil, fmt.Errorf("stats image: bad magic %#x", m)
	}
	if m := binary.LittleEndian.Uint32(b[stats.SecondaryMagicOffset:]); m != stats.StatsMagic {
		return nil, fmt.Errorf("stats image: bad stats magic %#x", m)
	}
	n := uint64(binary.LittleEndian.Uint32(b[stats.SizeOffset:]))
	if n > uint64(len(b)-stats.PayloadOffset) {
		return nil, fmt.Errorf("stats image: payload of %d bytes, %d present", n, len(b)-stats.PayloadOffset)
	}
	e := &stats.StatsEntry{}
	if err := e.UnmarshalVT(b[stats.PayloadOffset : stats.PayloadOffset+int(n)]); err != nil {
		return nil, fmt.Errorf("stats image: %w", err)
	}
	return e, nil
}

func readStatsFile(dir, name string) (*stats.StatsEntry, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return nil, err
	}
	e, err := decodeStats(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return e, nil
}

// readDumpStats decodes stats-dump from the directory CRIU worked in (its
// --work-dir, the images directory unless set).
func readDumpStats(dir string) (DumpStats, error) {
	e, err := readStatsFile(dir, stats.StatsDump)
	if err != nil {
		return DumpStats{}, err
	}
	return dumpStatsFrom(e.GetDump())
}

func dumpStatsFrom(s *stats.DumpStatsEntry) (DumpStats, error) {
	if s == nil {
		return DumpStats{}, fmt.Errorf("read %s: no dump entry", stats.StatsDump)
	}
	return DumpStats{
		FreezingTime:       usec(s.GetFreezingTime()),
		FrozenTime:         usec(s.GetFrozenTime()),
		MemdumpTime:        usec(s.GetMemdumpTime()),
		MemwriteTime:       usec(s.GetMemwriteTime()),
		IrmapResolve:       usec(s.GetIrmapResolve()),
		PagesScanned:       s.GetPagesScanned(),
		PagesSkippedParent: s.GetPagesSkippedParent(),
		PagesWritten:       s.GetPagesWritten(),
		PagesLazy:          s.GetPagesLazy(),
		PagePipes:          s.GetPagePipes(),
		PagePipeBufs:       s.GetPagePipeBufs(),
		ShpagesScanned:     s.GetShpagesScanned(),
		ShpagesSkipped:     s.GetShpagesSkippedParent(),
		ShpagesWritten:     s.GetShpagesWritten(),
	}, nil
}

// readRestoreStats decodes stats-restore from the directory CRIU worked in.
func readRestoreStats(dir string) (RestoreStats, error) {
	e, err := readStatsFile(dir, stats.StatsRestore)
	if err != nil {
		return RestoreStats{}, err
	}
	return restoreStatsFrom(e.GetRestore())
}

func restoreStatsFrom(s *stats.RestoreStatsEntry) (RestoreStats, error) {
	if s == nil {
		return RestoreStats{}, fmt.Errorf("read %s: no restore entry", stats.StatsRestore)
	}
	return RestoreStats{
		ForkingTime:     usec(s.GetForkingTime()),
		RestoreTime:     usec(s.GetRestoreTime()),
		PagesCompared:   s.GetPagesCompared(),
		PagesSkippedCow: s.GetPagesSkippedCow(),
		PagesRestored:   s.GetPagesRestored(),
	}, nil
}

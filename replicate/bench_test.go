package replicate

import (
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/pierrec/lz4/v4"

	"doppel/replicate/criu"
	"doppel/replicate/store"
)

// BenchmarkEngine1GiB measures the engine on an app with 1 GiB of resident
// memory (every page non-zero, about half of it compressible), against a
// bare CRIU dump of the same tree with the same options (no cgroup
// freezer, images to tmpfs, left running). Run it as root with CRIU:
//
//	go test -run '^$' -bench Engine1GiB -benchtime 5x ./replicate/
//
// (DOPPEL_BENCH_LOG=1 prints the engine's log, with each epoch's dump,
// commit and phase times.)
//
// Sub-benchmarks:
//
//	Freeze       how long the app stays stopped per checkpoint: CRIU's
//	             frozen_time in the epoch's manifest, and the engine's whole
//	             window (from the PSB freeze to the thaw, which includes the
//	             RM scan and the SRM data snapshot), each against the bare
//	             dump's frozen_time (goal: ratio <= 1.10)
//	Incremental  bytes an epoch with 1% of the pages dirtied adds to the
//	             store, and the same content LZ4-compressed in 1 MiB batches
//	             as the wire sends it, against the full epoch (goal <= 3%)
//	Capture      wall time from "checkpoint now" to a committed (fsynced)
//	             epoch whose 1 GiB is all new content, against the bare
//	             dump's wall time (goal <= 2.5x)
func BenchmarkEngine1GiB(b *testing.B) {
	requireE2E(b)
	const bufMB = 1024
	e := newEngine(b, b.TempDir(), nil)
	a := startApp(b, e, "bench", appOpts{bufMB: bufMB})
	c := dial(b, a.port)
	drv, _, err := e.criu(b.Context())
	if err != nil {
		b.Fatal(err)
	}
	// bareDump dumps the app's tree as plain CRIU would and returns the
	// result; its images are deleted at once.
	bareDump := func() *criu.DumpResult {
		b.Helper()
		dir, err := os.MkdirTemp(e.cfg.WorkDir, "bench-bare-")
		if err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(dir)
		res, err := drv.Dump(b.Context(), criu.DumpOptions{Pid: a.st.Pid, ImagesDir: dir, LeaveRunning: true})
		if err != nil {
			b.Fatal(err)
		}
		return res
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

	// Each REFILL and DIRTY gets a seed of its own: a sub-benchmark runs
	// more than once (first with b.N = 1), and content seen before would
	// be deduplicated.
	seed := 0
	nextSeed := func() string { seed++; return strconv.Itoa(seed) }
	full, err := e.Checkpoint(b.Context(), a.name, CheckpointOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if min := int64(bufMB << 20 / store.PageSize); full.Manifest.Pages.Scanned < min {
		b.Fatalf("full epoch scanned %d pages, want at least %d", full.Manifest.Pages.Scanned, min)
	}

	b.Run("Freeze", func(b *testing.B) {
		var bare, criuFrozen, window time.Duration
		for i := 0; i < b.N; i++ {
			e.waitGC() // as in Capture
			r := bareDump()
			bare += r.Stats.FrozenTime
			var start, resumed time.Time
			ep, err := e.Checkpoint(b.Context(), a.name, CheckpointOptions{
				Observer: func(ev Event) {
					if ev.Phase == PSB && !ev.End {
						start = ev.Time
					}
				},
				Resume: func() { resumed = time.Now() },
			})
			if err != nil {
				b.Fatal(err)
			}
			criuFrozen += time.Duration(ep.Manifest.CRIUStats["frozen_time"]) * time.Microsecond
			window += resumed.Sub(start)
		}
		n := time.Duration(b.N)
		b.ReportMetric(ms(bare/n), "bare-frozen-ms")
		b.ReportMetric(ms(criuFrozen/n), "criu-frozen-ms")
		b.ReportMetric(ms(window/n), "window-ms")
		b.ReportMetric(float64(criuFrozen)/float64(bare), "criu-frozen-ratio")
		b.ReportMetric(float64(window)/float64(bare), "window-ratio")
	})

	b.Run("Incremental", func(b *testing.B) {
		// The full epoch: a fresh 1 GiB of content.
		c.ask(b, "REFILL "+nextSeed())
		base, err := e.Checkpoint(b.Context(), a.name, CheckpointOptions{})
		if err != nil {
			b.Fatal(err)
		}
		fullStored := base.Manifest.Bytes.Stored
		fullLZ4 := compressedNew(b, e.Store(), base, nil)
		pages := bufMB << 20 / store.PageSize
		k := pages / 100
		var stored, lz, changed int64
		prev := base
		for i := 0; i < b.N; i++ {
			c.ask(b, "DIRTY "+strconv.Itoa(k)+" "+nextSeed())
			ep, err := e.Checkpoint(b.Context(), a.name, CheckpointOptions{})
			if err != nil {
				b.Fatal(err)
			}
			stored += ep.Manifest.Bytes.Stored
			changed += ep.Manifest.Pages.Changed
			lz += compressedNew(b, e.Store(), ep, prev)
			prev = ep
		}
		n := int64(b.N)
		b.ReportMetric(float64(k), "pages-dirtied")
		b.ReportMetric(float64(changed/n), "pages-changed")
		b.ReportMetric(float64(fullStored)/(1<<20), "full-stored-MiB")
		b.ReportMetric(float64(fullLZ4)/(1<<20), "full-lz4-MiB")
		b.ReportMetric(float64(stored/n)/(1<<20), "incr-stored-MiB")
		b.ReportMetric(float64(lz/n)/(1<<20), "incr-lz4-MiB")
		b.ReportMetric(100*float64(stored/n)/float64(fullStored), "stored-%")
		b.ReportMetric(100*float64(lz/n)/float64(fullLZ4), "lz4-%")
	})

	b.Run("Capture", func(b *testing.B) {
		var bare, capture, prm, ingest time.Duration
		for i := 0; i < b.N; i++ {
			// The store GC that the last epoch started in the background
			// runs on its own in production (epochs are seconds apart);
			// here it would land on one of the two timings.
			e.waitGC()
			r := bareDump()
			bare += r.Wall
			c.ask(b, "REFILL "+nextSeed())
			e.waitGC()
			start := time.Now()
			ep, err := e.Checkpoint(b.Context(), a.name, CheckpointOptions{})
			if err != nil {
				b.Fatal(err)
			}
			capture += time.Since(start)
			prm += ep.Manifest.Phases.PRM
			ingest += ep.Manifest.Phases.Ingest
			if got, want := ep.Manifest.Pages.New, int64(bufMB<<20/store.PageSize); got < want {
				b.Fatalf("epoch %d stored %d new pages, want all %d of the buffer", ep.Manifest.Epoch, got, want)
			}
		}
		n := time.Duration(b.N)
		b.ReportMetric(ms(bare/n), "bare-dump-ms")
		b.ReportMetric(ms(capture/n), "capture-ms")
		b.ReportMetric(ms(prm/n), "prm-ms")
		b.ReportMetric(ms(ingest/n), "ingest-ms")
		b.ReportMetric(float64(capture)/float64(bare), "capture-ratio")
	})
	stopAndWait(b, e, a.name)
	if os.Getenv("DOPPEL_BENCH_LOG") != "" {
		b.Logf("engine log:\n%s", e.logs)
	}
}

// compressedNew returns the size of the content ep added over parent (all
// of it without a parent) compressed as the wire compresses data frames:
// records (uvarint length + bytes) in 1 MiB batches, each an LZ4 block.
func compressedNew(b *testing.B, s *store.Store, ep, parent *store.Epoch) int64 {
	b.Helper()
	had := map[store.Hash]bool{}
	if parent != nil {
		parent.ForEachHash(func(h store.Hash) { had[h] = true })
	}
	var hs []store.Hash
	for _, h := range ep.UniqueHashes() {
		if !had[h] {
			hs = append(hs, h)
		}
	}
	const batch = 1 << 20
	var comp lz4.Compressor
	raw := make([]byte, 0, batch+store.ChunkSize+16)
	dst := make([]byte, lz4.CompressBlockBound(cap(raw)))
	var total int64
	flush := func() {
		if len(raw) == 0 {
			return
		}
		n, err := comp.CompressBlock(raw, dst)
		if err != nil {
			b.Fatal(err)
		}
		if n == 0 || n >= len(raw) { // incompressible: sent raw
			n = len(raw)
		}
		total += int64(n)
		raw = raw[:0]
	}
	err := s.Fetch(hs, func(_ int, data []byte) error {
		raw = appendUvarint(raw, uint64(len(data)))
		raw = append(raw, data...)
		if len(raw) >= batch {
			flush()
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	flush()
	return total
}

func appendUvarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

package bench

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"doppel/replicate/freezer"
)

// TestMeasureTiny runs every measurement for real on a 4 MiB app, with the
// bare CRIU baseline, in two rounds (both orders of the alternation).
func TestMeasureTiny(t *testing.T) {
	requireCRIU(t)
	cfg := DefaultConfig()
	cfg.StateDir = t.TempDir()
	cfg.AppCommand = testAppCommand(t)
	cfg.Size = 4 << 20
	cfg.Rounds = 2
	cfg.Baseline = true
	cfg.CPUBytes, cfg.DiskBytes = 4<<20, 4<<20
	cfg.StartTimeout = time.Minute
	var progress strings.Builder
	cfg.Progress = &progress
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := Measure(ctx, cfg)
	if err != nil {
		t.Fatalf("%v\nprogress:\n%s", err, progress.String())
	}
	t.Logf("progress:\n%s", progress.String())
	c := rep.Checkpoint
	if rep.Size != cfg.Size || rep.Rounds != 2 || rep.Host.CPUs < 1 || rep.Host.CRIU == "" {
		t.Errorf("report header %+v", rep)
	}
	for name, v := range map[string]float64{
		"hash one core": rep.Hash.OneCore, "hash all cores": rep.Hash.AllCores,
		"lz4 one core": rep.LZ4.OneCore, "lz4 all cores": rep.LZ4.AllCores, "disk": rep.Disk,
		"dump rate": rep.DumpRate(),
	} {
		if v <= 0 {
			t.Errorf("%s: %g bytes/s", name, v)
		}
	}
	if rep.LZ4Ratio < 0.3 || rep.LZ4Ratio > 0.8 {
		t.Errorf("LZ4 ratio %.2f, want about half", rep.LZ4Ratio)
	}
	for name, d := range map[string]Millis{
		"freeze": c.Freeze, "CRIU frozen": c.CRIUFrozen, "dump": c.DumpWall, "capture": c.Capture,
		"PRM": c.PRM, "ingest": c.Ingest, "incremental freeze": c.IncrFreeze,
	} {
		if d <= 0 {
			t.Errorf("%s: %v", name, d.D())
		}
	}
	// The freeze window holds CRIU's dump, and the capture holds the PRM
	// phase.
	if c.Freeze < c.CRIUFrozen || c.Capture < c.PRM || c.PRM < c.Ingest {
		t.Errorf("freeze %v < CRIU frozen %v, or capture %v < PRM %v < ingest %v",
			c.Freeze.D(), c.CRIUFrozen.D(), c.Capture.D(), c.PRM.D(), c.Ingest.D())
	}
	// 4 MiB of which about 10% zero pages are all new in the full epoch;
	// 1% of 1024 pages (10) are new in the incremental one.
	if c.FullStored < 3<<20 || c.FullWire <= 0 || c.FullWire >= c.FullStored {
		t.Errorf("full epoch: %d stored, %d on the wire", c.FullStored, c.FullWire)
	}
	if c.DirtiedPages != 10 {
		t.Errorf("dirtied %d pages, want 10", c.DirtiedPages)
	}
	if c.IncrStored < 10*PageSize || c.IncrStored > c.FullStored/4 || c.IncrWire <= 0 {
		t.Errorf("incremental epoch: %d stored, %d on the wire (full %d)", c.IncrStored, c.IncrWire, c.FullStored)
	}
	if rep.Bare == nil || rep.Bare.Frozen <= 0 || rep.Bare.Wall < rep.Bare.Frozen {
		t.Errorf("bare dump %+v", rep.Bare)
	}
	// Nothing left behind: the temporary state directory, the app's
	// cgroup parent.
	if left, _ := filepath.Glob(filepath.Join(cfg.StateDir, "*")); len(left) > 0 {
		t.Errorf("left in the state directory: %v", left)
	}
	fcfg := freezer.DefaultConfig()
	if cg, err := freezer.Open(fcfg, "probe-"+strings.ReplaceAll(t.Name(), "/", "-")); err == nil {
		parent := filepath.Dir(cg.Path)
		_ = cg.Remove()
		if left, _ := filepath.Glob(filepath.Join(parent, "bench-*")); len(left) > 0 {
			t.Errorf("cgroups left: %v", left)
		}
	}
	// The recommendation for a larger app follows from the measurements.
	rec := Recommend(rep.Rates(125e6), Workload{AppSize: 1 << 30, DirtyRate: 0.01, Workers: 3}, DefaultPolicy())
	if rec.Interval <= 0 || rec.Replicas != 2 || len(rec.Costs) != 5 {
		t.Errorf("recommendation %+v", rec)
	}
	var text strings.Builder
	if err := WriteText(&text, rep, rep.Rates(125e6), Workload{AppSize: 1 << 30, DirtyRate: 0.01}, rec); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"checkpoint speed", "bare criu dump", "recommended: --interval", "dominated by"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, text.String())
		}
	}
	if _, err := os.Stat(cfg.StateDir); err != nil {
		t.Errorf("state directory itself removed: %v", err)
	}
}

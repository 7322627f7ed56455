package criu

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/stats"
)

func statsImage(t testing.TB, e *stats.StatsEntry) []byte {
	t.Helper()
	payload, err := e.MarshalVT()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, stats.PayloadOffset, stats.PayloadOffset+len(payload))
	binary.LittleEndian.PutUint32(b[stats.PrimaryMagicOffset:], stats.ImgServiceMagic)
	binary.LittleEndian.PutUint32(b[stats.SecondaryMagicOffset:], stats.StatsMagic)
	binary.LittleEndian.PutUint32(b[stats.SizeOffset:], uint32(len(payload)))
	return append(b, payload...)
}

// minimalDump has every required field of a dump entry.
func minimalDump() *stats.StatsEntry {
	z32, z64 := uint32(0), uint64(0)
	return &stats.StatsEntry{Dump: &stats.DumpStatsEntry{
		FreezingTime: &z32, FrozenTime: &z32, MemdumpTime: &z32, MemwriteTime: &z32,
		PagesScanned: &z64, PagesSkippedParent: &z64, PagesWritten: &z64, PagesLazy: &z64,
	}}
}

func TestReadDumpStats(t *testing.T) {
	u32 := func(v uint32) *uint32 { return &v }
	u64 := func(v uint64) *uint64 { return &v }
	img := statsImage(t, &stats.StatsEntry{Dump: &stats.DumpStatsEntry{
		FreezingTime: u32(1500), FrozenTime: u32(52000), MemdumpTime: u32(10000), MemwriteTime: u32(7000),
		PagesScanned: u64(1048), PagesSkippedParent: u64(3), PagesWritten: u64(755),
		IrmapResolve: u32(1), PagesLazy: u64(0), PagePipes: u64(2), PagePipeBufs: u64(4),
		ShpagesScanned: u64(5), ShpagesSkippedParent: u64(6), ShpagesWritten: u64(7),
	}})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, stats.StatsDump), img, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := readDumpStats(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := DumpStats{
		FreezingTime: 1500 * time.Microsecond, FrozenTime: 52 * time.Millisecond,
		MemdumpTime: 10 * time.Millisecond, MemwriteTime: 7 * time.Millisecond, IrmapResolve: time.Microsecond,
		PagesScanned: 1048, PagesSkippedParent: 3, PagesWritten: 755, PagePipes: 2, PagePipeBufs: 4,
		ShpagesScanned: 5, ShpagesSkipped: 6, ShpagesWritten: 7,
	}
	if s != want {
		t.Fatalf("got %+v\nwant %+v", s, want)
	}
	if _, err := readRestoreStats(dir); err == nil {
		t.Fatal("restore stats read from a dir without them")
	}
}

func TestReadRestoreStats(t *testing.T) {
	u32 := func(v uint32) *uint32 { return &v }
	u64 := func(v uint64) *uint64 { return &v }
	dir := t.TempDir()
	img := statsImage(t, &stats.StatsEntry{Restore: &stats.RestoreStatsEntry{
		PagesCompared: u64(1), PagesSkippedCow: u64(2), ForkingTime: u32(1100), RestoreTime: u32(48000), PagesRestored: u64(737),
	}})
	if err := os.WriteFile(filepath.Join(dir, stats.StatsRestore), img, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := readRestoreStats(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := RestoreStats{ForkingTime: 1100 * time.Microsecond, RestoreTime: 48 * time.Millisecond,
		PagesCompared: 1, PagesSkippedCow: 2, PagesRestored: 737}
	if s != want {
		t.Fatalf("got %+v want %+v", s, want)
	}
	// A restore image holds no dump entry.
	if err := os.WriteFile(filepath.Join(dir, stats.StatsDump), img, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readDumpStats(dir); err == nil {
		t.Fatal("dump stats decoded from a restore entry")
	}
}

func TestDecodeStatsRejectsDamage(t *testing.T) {
	good := statsImage(t, minimalDump())
	bad := [][]byte{
		nil,
		good[:5],
		good[:stats.PayloadOffset-1],
		append([]byte{1, 2, 3, 4}, good[4:]...),
		append(append([]byte{}, good[:4]...), append([]byte{9, 9, 9, 9}, good[8:]...)...),
	}
	long := append([]byte{}, good...)
	binary.LittleEndian.PutUint32(long[stats.SizeOffset:], 1<<31)
	bad = append(bad, long)
	for i, b := range bad {
		if _, err := decodeStats(b); err == nil {
			t.Errorf("damaged image %d accepted", i)
		}
	}
	if _, err := decodeStats(good); err != nil {
		t.Fatal(err)
	}
}

func FuzzDecodeStats(f *testing.F) {
	f.Add(statsImage(f, minimalDump()))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = decodeStats(b) // must not panic
	})
}

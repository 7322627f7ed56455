package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/pierrec/lz4/v4"
	"golang.org/x/sys/unix"

	"doppel/replicate/store/storetest"
)

var benchSizes = []struct {
	name  string
	pages int
}{
	{"16MiB", 4096},
	{"256MiB", 65536},
	{"1GiB", 262144},
}

// BenchmarkIngest measures a full epoch: AddImageDir and Commit of a
// synthetic image directory into an empty store, with and without fsync.
// The image directory and the store are on the same file system (t.TempDir).
func BenchmarkIngest(b *testing.B) {
	for _, sz := range benchSizes {
		mem := storetest.Memory(1, sz.pages)
		src := writeImage(b, storetest.SimpleImage(mem))
		mem = nil
		unix.Sync() // the source's writeback must not compete with the ingest's writes
		for _, sync := range []bool{true, false} {
			b.Run(fmt.Sprintf("%s/sync=%v", sz.name, sync), func(b *testing.B) {
				cfg := testConfig()
				cfg.PackSize = DefaultConfig().PackSize
				cfg.Sync = sync
				b.SetBytes(int64(sz.pages) * PageSize)
				for b.Loop() {
					b.StopTimer()
					s, err := Open(filepath.Join(b.TempDir(), "s"), cfg)
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					ingest(b, s, "app", 1, 0, src)
					b.StopTimer()
					_ = s.Close()
					_ = os.RemoveAll(s.Dir())
					b.StartTimer()
				}
			})
		}
		_ = os.RemoveAll(src)
	}
}

// BenchmarkIngestIncremental measures an epoch with 1% of the pages dirtied
// against a stored parent.
func BenchmarkIngestIncremental(b *testing.B) {
	for _, sz := range benchSizes[:2] {
		b.Run(sz.name, func(b *testing.B) {
			cfg := testConfig()
			cfg.PackSize = DefaultConfig().PackSize
			s := openStore(b, cfg)
			mem := storetest.Memory(1, sz.pages)
			im := storetest.SimpleImage(mem)
			ingest(b, s, "app", 1, 0, writeImage(b, im))
			b.SetBytes(int64(sz.pages) * PageSize)
			n := uint64(1)
			for b.Loop() {
				b.StopTimer()
				storetest.Dirty(mem, 0.01, n)
				src := writeImage(b, im)
				b.StartTimer()
				ingest(b, s, "app", n+1, n, src)
				n++
			}
		})
	}
}

// BenchmarkMaterialise measures writing a stored epoch back as an image
// directory.
func BenchmarkMaterialise(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			cfg := testConfig()
			cfg.PackSize = DefaultConfig().PackSize
			cfg.Sync = false
			s := openStore(b, cfg)
			src := writeImage(b, storetest.SimpleImage(storetest.Memory(1, sz.pages)))
			ingest(b, s, "app", 1, 0, src)
			_ = os.RemoveAll(src)
			b.SetBytes(int64(sz.pages) * PageSize)
			for b.Loop() {
				dir := filepath.Join(b.TempDir(), "m")
				if err := s.Materialise(context.Background(), "app", 1, dir); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				_ = os.RemoveAll(dir)
				b.StartTimer()
			}
		})
	}
}

// BenchmarkPageEncoding compares what storing pages costs per byte raw
// (hash, copy into a pack buffer) and LZ4-compressed (hash, compress into
// the buffer), on one core, for the synthetic memory mix. It is the basis
// for storing pages raw (see the package documentation).
func BenchmarkPageEncoding(b *testing.B) {
	mem := storetest.Memory(1, 16384)
	out := make([]byte, 0, len(mem)+len(mem)/8)
	b.Run("raw", func(b *testing.B) {
		b.SetBytes(int64(len(mem)))
		for b.Loop() {
			out = out[:0]
			for p := 0; p < len(mem); p += PageSize {
				_ = Sum(mem[p : p+PageSize])
				out = append(out, mem[p:p+PageSize]...)
			}
		}
	})
	b.Run("lz4", func(b *testing.B) {
		var c lz4.Compressor
		dst := make([]byte, lz4.CompressBlockBound(PageSize))
		b.SetBytes(int64(len(mem)))
		var stored int
		for b.Loop() {
			out, stored = out[:0], 0
			for p := 0; p < len(mem); p += PageSize {
				_ = Sum(mem[p : p+PageSize])
				n, err := c.CompressBlock(mem[p:p+PageSize], dst)
				if err != nil {
					b.Fatal(err)
				}
				if n == 0 {
					n = copy(dst, mem[p:p+PageSize])
				}
				out = append(out, dst[:n]...)
				stored += n
			}
		}
		b.ReportMetric(float64(stored)/float64(len(mem)), "stored/raw")
	})
}

package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/pierrec/lz4/v4"
	"golang.org/x/sys/unix"

	"doppel/replicate/store"
)

// Host describes the machine a measurement ran on.
type Host struct {
	CPUs     int     `json:"cpus"`
	CPUModel string  `json:"cpu_model"`
	Memory   int64   `json:"memory_bytes"`
	Kernel   string  `json:"kernel"`
	Load1    float64 `json:"load1"` // 1-minute load average when the report was made
	CRIU     string  `json:"criu,omitempty"`
}

// DescribeHost reads the CPU count and model, memory, kernel release and
// load average of this machine.
func DescribeHost() Host {
	h := Host{CPUs: runtime.NumCPU()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		h.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		h.Memory = int64(si.Totalram) * int64(si.Unit)
		h.Load1 = float64(si.Loads[0]) / 65536
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				h.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	return h
}

// Throughput is a processing rate in bytes per second, on one core and on
// all cores (one worker per GOMAXPROCS, as the store and the wire run).
type Throughput struct {
	OneCore  float64 `json:"one_core_bytes_per_s"`
	AllCores float64 `json:"all_cores_bytes_per_s"`
}

// minTiming is how long a CPU timing runs at least (whole passes over the
// data).
const minTiming = 300 * time.Millisecond

// HashRate times the store's content hash (store.Sum, 128-bit xxh3) over
// data page by page.
func HashRate(ctx context.Context, data []byte) (Throughput, error) {
	return parallelRate(ctx, data, PageSize, func() func([]byte) {
		return func(p []byte) { _ = store.Sum(p) }
	})
}

// LZ4Rate times LZ4 block compression of data in 1 MiB blocks, as the wire
// compresses data frames, and returns the compressed size over the raw
// size.
func LZ4Rate(ctx context.Context, data []byte) (Throughput, float64, error) {
	const block = 1 << 20
	var mu sync.Mutex
	var raw, comp int64
	t, err := parallelRate(ctx, data, block, func() func([]byte) {
		var c lz4.Compressor
		dst := make([]byte, lz4.CompressBlockBound(block))
		return func(p []byte) {
			n, err := c.CompressBlock(p, dst)
			if err != nil || n == 0 || n >= len(p) {
				n = len(p) // sent raw
			}
			mu.Lock()
			raw += int64(len(p))
			comp += int64(n)
			mu.Unlock()
		}
	})
	if err != nil || raw == 0 {
		return t, 0, err
	}
	return t, float64(comp) / float64(raw), nil
}

// parallelRate runs work over data in units of unit bytes, first on one
// goroutine, then on GOMAXPROCS goroutines each taking every n-th unit,
// repeating whole passes for at least minTiming.
func parallelRate(ctx context.Context, data []byte, unit int, newWorker func() func([]byte)) (Throughput, error) {
	units := len(data) / unit
	if units == 0 {
		return Throughput{}, fmt.Errorf("%d bytes of data: want at least %d", len(data), unit)
	}
	run := func(workers int) (float64, error) {
		start := time.Now()
		var done int64
		for time.Since(start) < minTiming || done == 0 {
			if err := ctx.Err(); err != nil {
				return 0, err
			}
			var wg sync.WaitGroup
			for w := range workers {
				f := newWorker()
				wg.Add(1)
				go func() {
					defer wg.Done()
					for u := w; u < units; u += workers {
						f(data[u*unit : (u+1)*unit])
					}
				}()
			}
			wg.Wait()
			done += int64(units * unit)
		}
		return float64(done) / time.Since(start).Seconds(), nil
	}
	var t Throughput
	var err error
	if t.OneCore, err = run(1); err != nil {
		return t, err
	}
	if t.AllCores, err = run(runtime.GOMAXPROCS(0)); err != nil {
		return t, err
	}
	return t, nil
}

// DiskRate writes n bytes of data (repeated as needed) in 1 MiB writes to
// a new file in dir, fsyncs it, removes it, and returns bytes per second
// including the fsync.
func DiskRate(ctx context.Context, dir string, data []byte, n int64) (float64, error) {
	const chunk = 1 << 20
	if len(data) < chunk {
		return 0, fmt.Errorf("disk timing: want at least %d bytes of data", chunk)
	}
	f, err := os.CreateTemp(dir, "disk-")
	if err != nil {
		return 0, fmt.Errorf("disk timing: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	start := time.Now()
	var written int64
	for written < n {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		off := int((written / chunk) % int64(len(data)/chunk) * chunk)
		m, err := f.Write(data[off : off+int(min(chunk, n-written))])
		written += int64(m)
		if err != nil {
			return 0, fmt.Errorf("disk timing: write %s: %w", filepath.Base(f.Name()), err)
		}
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("disk timing: fsync: %w", err)
	}
	return float64(written) / time.Since(start).Seconds(), nil
}

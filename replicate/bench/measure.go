package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/stats"
	"github.com/pierrec/lz4/v4"

	"doppel/replicate"
	"doppel/replicate/criu"
	"doppel/replicate/freezer"
	"doppel/replicate/store"
)

// Millis is a duration that JSON encodes as a number of milliseconds.
type Millis time.Duration

// MarshalJSON encodes m in milliseconds with microsecond precision.
func (m Millis) MarshalJSON() ([]byte, error) {
	return []byte(strconv.FormatFloat(math.Round(float64(m)/1e3)/1e3, 'f', -1, 64)), nil
}

// UnmarshalJSON decodes milliseconds.
func (m *Millis) UnmarshalJSON(b []byte) error {
	v, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return err
	}
	*m = Millis(v * 1e6)
	return nil
}

// D is m as a time.Duration.
func (m Millis) D() time.Duration { return time.Duration(m) }

// Checkpoints are the engine's timings and sizes for the synthetic app,
// each the median over the rounds.
type Checkpoints struct {
	// Freeze is how long the app stays stopped per epoch: from the start
	// of the PSB phase (cgroup freeze) to the thaw, which includes the RM
	// scan and the data snapshot. CRIUFrozen is CRIU's own frozen_time
	// inside that window, DumpWall the whole CRIU dump call.
	Freeze     Millis `json:"freeze_ms"`
	CRIUFrozen Millis `json:"criu_frozen_ms"`
	DumpWall   Millis `json:"dump_ms"`
	// MemDump and MemWrite are CRIU's memdump_time (draining the pages
	// out of the frozen tree) and memwrite_time (writing them to images),
	// the part of the freeze that grows with the app's memory.
	MemDump  Millis `json:"criu_memdump_ms"`
	MemWrite Millis `json:"criu_memwrite_ms"`
	// Capture is the wall time from "checkpoint now" to a committed
	// (fsynced) epoch whose memory is all new content; PRM and Ingest are
	// its PRM phase and the store's part of it (hashing every page,
	// writing the new ones to packs, fsync).
	Capture Millis `json:"capture_ms"`
	PRM     Millis `json:"prm_ms"`
	Ingest  Millis `json:"ingest_ms"`
	// FullStored is what an epoch of all-new content adds to the store;
	// FullWire the same content LZ4-compressed in 1 MiB batches as the
	// wire sends it to a clone that holds nothing.
	FullStored int64 `json:"full_stored_bytes"`
	FullWire   int64 `json:"full_wire_bytes"`
	// DirtiedPages are rewritten before each incremental epoch; IncrStored
	// and IncrWire are what that epoch adds to the store and sends to a
	// clone holding its parent; IncrFreeze its freeze window.
	DirtiedPages int64  `json:"dirtied_pages"`
	IncrStored   int64  `json:"incr_stored_bytes"`
	IncrWire     int64  `json:"incr_wire_bytes"`
	IncrFreeze   Millis `json:"incr_freeze_ms"`
}

// Bare is a plain `criu dump --leave-running` of the same app, images to
// the work directory (medians).
type Bare struct {
	Frozen Millis `json:"frozen_ms"` // CRIU's frozen_time
	Wall   Millis `json:"wall_ms"`   // the whole command
}

// Report is the result of Measure.
type Report struct {
	Host   Host  `json:"host"`
	Size   int64 `json:"size_bytes"`
	Rounds int   `json:"rounds"`
	// Hash is the store's content hash, LZ4 the wire's compression
	// (LZ4Ratio = compressed / raw on page-like data), Disk fsynced writes
	// in the state directory.
	Hash     Throughput `json:"hash"`
	LZ4      Throughput `json:"lz4"`
	LZ4Ratio float64    `json:"lz4_ratio"`
	Disk     float64    `json:"disk_bytes_per_s"`
	// Checkpoint is the engine on the synthetic app; Bare the baseline
	// dump, nil unless Config.Baseline.
	Checkpoint Checkpoints `json:"checkpoint"`
	Bare       *Bare       `json:"bare,omitempty"`
	// Link is the measured link to a clone node; nil when the link rate
	// was given (or unknown) rather than measured.
	Link *Link `json:"link,omitempty"`
}

// DumpRate is how fast this host captures memory, in bytes per second:
// the app's memory over CRIU's memdump_time (the part of the freeze that
// grows with the memory), or over the whole frozen_time when CRIU did not
// report it.
func (r *Report) DumpRate() float64 {
	d := r.Checkpoint.MemDump.D()
	if d <= 0 {
		d = r.Checkpoint.CRIUFrozen.D()
	}
	if d <= 0 {
		return 0
	}
	return float64(r.Size) / d.Seconds()
}

// Measure runs the measurements of cfg and returns their report. It needs
// root, CRIU and a cgroup freezer. Everything it starts (the app, CRIU) is
// stopped and its temporary state directory removed before it returns,
// also on error or when ctx ends.
func Measure(ctx context.Context, cfg Config) (rep *Report, err error) {
	if cfg.AppCommand == nil {
		return nil, errors.New("bench: no app command")
	}
	if !filepath.IsAbs(cfg.StateDir) {
		return nil, fmt.Errorf("bench: state directory %q is not absolute", cfg.StateDir)
	}
	if cfg.Size < 16*PageSize {
		return nil, fmt.Errorf("bench: size %d: want at least %d bytes", cfg.Size, 16*PageSize)
	}
	cfg.Rounds = max(cfg.Rounds, 1)
	progress := func(format string, args ...any) {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, format+"\n", args...)
		}
	}
	rep = &Report{Host: DescribeHost(), Size: cfg.Size, Rounds: cfg.Rounds}

	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	dir, err := os.MkdirTemp(cfg.StateDir, "bench-")
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(dir)

	data := make([]byte, max(cfg.CPUBytes, 1<<20))
	Fill(data, 1)
	progress("hashing %s of page-like data (xxh3, as the store)", FormatBytes(int64(len(data))))
	if rep.Hash, err = HashRate(ctx, data); err != nil {
		return nil, err
	}
	progress("compressing it (LZ4 blocks, as the wire)")
	if rep.LZ4, rep.LZ4Ratio, err = LZ4Rate(ctx, data); err != nil {
		return nil, err
	}
	progress("writing %s to %s with fsync", FormatBytes(cfg.DiskBytes), cfg.StateDir)
	if rep.Disk, err = DiskRate(ctx, dir, data, cfg.DiskBytes); err != nil {
		return nil, err
	}
	data = nil

	r, err := startRun(ctx, cfg, dir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := r.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	rep.Host.CRIU = r.criuVersion
	progress("app %s: %s of memory, ready at %s", r.name, FormatBytes(cfg.Size), r.addr)
	if err := r.measure(ctx, rep, progress); err != nil {
		return nil, err
	}
	return rep, nil
}

// run is one Measure's engine and app.
type run struct {
	cfg         Config
	e           *replicate.Engine
	name        string
	addr        string
	conn        net.Conn
	rd          *bufio.Reader
	criuPath    string
	criuVersion string
	freezerCfg  freezer.Config
	seed        uint64
}

func startRun(ctx context.Context, cfg Config, dir string) (*run, error) {
	p, err := criu.Locate(cfg.CRIU.Path, cfg.CRIU.Prefix)
	if err != nil {
		return nil, err
	}
	v, err := criu.BinaryVersion(ctx, p)
	if err != nil {
		return nil, err
	}
	if v.Less(criu.MinVersion) {
		return nil, fmt.Errorf("%w: %s is %s (run: sudo scripts/get-criu.sh)", criu.ErrTooOld, p, v)
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	suffix := hex.EncodeToString(b[:])
	ecfg := replicate.DefaultConfig()
	ecfg.StateDir = dir
	ecfg.WorkDir = cfg.WorkDir
	ecfg.CRIU = cfg.CRIU
	ecfg.CRIU.Path = p
	// A cgroup parent of its own, removed at the end.
	ecfg.Freezer.Parent = path.Join(freezer.DefaultConfig().Parent, "bench-"+suffix)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e, err := replicate.New(ecfg, log)
	if err != nil {
		return nil, err
	}
	r := &run{cfg: cfg, e: e, name: "bench-" + suffix, criuPath: p, criuVersion: v.String(), freezerCfg: ecfg.Freezer}
	args := cfg.AppCommand(AppConfig{Size: cfg.Size, Listen: "127.0.0.1:0", Seed: 1})
	st, err := e.Run(ctx, replicate.Spec{Name: r.name, Args: args, Dir: dir})
	if err != nil {
		r.close()
		return nil, fmt.Errorf("bench: start app: %w", err)
	}
	if r.addr, err = WaitReady(ctx, st, cfg.StartTimeout); err != nil {
		r.close()
		return nil, err
	}
	var d net.Dialer
	if r.conn, err = d.DialContext(ctx, "tcp", r.addr); err != nil {
		r.close()
		return nil, fmt.Errorf("bench: app: %w", err)
	}
	r.rd = bufio.NewReader(r.conn)
	return r, nil
}

// WaitReady waits until an app running RunApp under an engine has printed
// its ready line to its stdout log, and returns its address. It fails when
// the app exits first or timeout passes.
func WaitReady(ctx context.Context, st *replicate.AppState, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		b, _ := os.ReadFile(st.Stdout)
		for l := range strings.Lines(string(b)) {
			if rest, ok := strings.CutPrefix(l, ReadyPrefix); ok {
				return strings.Fields(rest)[0], nil
			}
		}
		if !st.Running() {
			msg, _ := os.ReadFile(st.Stderr)
			return "", fmt.Errorf("bench: app exited before it was ready: %s", strings.TrimSpace(string(msg)))
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("bench: app not ready after %v: %w", timeout, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// close stops the app, closes the engine and removes the app's cgroup.
func (r *run) close() error {
	if r.conn != nil {
		r.conn.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := r.e.Stop(ctx, r.name)
	if errors.Is(err, replicate.ErrNoApp) {
		err = nil
	}
	_ = r.e.Close()
	if err != nil {
		return fmt.Errorf("bench: stop app: %w", err)
	}
	if err := RemoveAppCgroup(r.freezerCfg, r.name, 10*time.Second); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

// ask sends one request line to the app and returns its answer.
func (r *run) ask(req string) (string, error) {
	_ = r.conn.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := io.WriteString(r.conn, req+"\n"); err != nil {
		return "", fmt.Errorf("bench: app: %w", err)
	}
	line, err := r.rd.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("bench: app: %w", err)
	}
	line = strings.TrimSpace(line)
	if strings.HasPrefix(line, "error") {
		return "", fmt.Errorf("bench: app answered %q to %q", line, req)
	}
	return line, nil
}

func (r *run) nextSeed() string {
	r.seed++
	return strconv.FormatUint(r.seed+1000, 10)
}

// timing is how long one checkpoint took.
type timing struct {
	freeze time.Duration // PSB start to thaw: the app stopped
	dump   time.Duration // PRM start to thaw: the CRIU dump
	wall   time.Duration // the whole call: "checkpoint now" to a committed epoch
}

// checkpoint takes an epoch and times it.
func (r *run) checkpoint(ctx context.Context) (*store.Epoch, timing, error) {
	var frozenAt, prmStart, resumed time.Time
	start := time.Now()
	ep, err := r.e.Checkpoint(ctx, r.name, replicate.CheckpointOptions{
		Observer: func(ev replicate.Event) {
			switch {
			case ev.Phase == replicate.PSB && !ev.End:
				frozenAt = ev.Time
			case ev.Phase == replicate.PRM && !ev.End:
				prmStart = ev.Time
			}
		},
		Resume: func() { resumed = time.Now() },
	})
	t := timing{wall: time.Since(start)}
	if err != nil {
		return nil, t, err
	}
	t.freeze, t.dump = resumed.Sub(frozenAt), resumed.Sub(prmStart)
	return ep, t, nil
}

// bareDump runs `criu dump --leave-running` on the app with the engine's
// CRIU options, images to the work directory, and returns CRIU's
// frozen_time and the command's wall time.
func (r *run) bareDump(ctx context.Context) (frozen, wall time.Duration, err error) {
	st, err := r.e.App(r.name)
	if err != nil {
		return 0, 0, err
	}
	work := r.cfg.WorkDir
	if work == "" {
		work = os.TempDir()
		if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
			work = "/dev/shm"
		}
	}
	dir, err := os.MkdirTemp(work, "doppel-bench-bare-")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	args := append([]string{"dump", "--leave-running", "-t", strconv.Itoa(st.Pid), "-D", dir, "-o", "dump.log"}, CLIArgs(r.cfg.CRIU)...)
	cmd := exec.CommandContext(ctx, r.criuPath, args...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	wall = time.Since(start)
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "dump.log"))
		return 0, 0, fmt.Errorf("bench: criu dump: %w: %s%s", err, out, errorLines(string(log)))
	}
	d, err := os.Open(dir)
	if err != nil {
		return 0, 0, err
	}
	defer d.Close()
	s, err := stats.CriuGetDumpStats(d)
	if err != nil {
		return 0, 0, fmt.Errorf("bench: criu dump stats: %w", err)
	}
	return time.Duration(s.GetFrozenTime()) * time.Microsecond, wall, nil
}

// CLIArgs are the criu command-line options equivalent to c (what the
// driver passes over RPC), for a bare dump comparable to the engine's.
func CLIArgs(c criu.Config) []string {
	a := []string{"-v" + strconv.Itoa(c.LogLevel)}
	flag := func(on bool, f string) {
		if on {
			a = append(a, f)
		}
	}
	flag(c.TCPEstablished, "--tcp-established")
	flag(c.TCPSkipInFlight, "--skip-in-flight")
	flag(c.ExtUnixSk, "--ext-unix-sk")
	flag(c.FileLocks, "--file-locks")
	flag(c.ShellJob, "--shell-job")
	flag(c.LinkRemap, "--link-remap")
	if c.NetworkLock != "" {
		a = append(a, "--network-lock", c.NetworkLock)
	}
	return a
}

// errorLines returns the "Error" lines of a CRIU log, one per line, led by
// a newline; "" when there are none.
func errorLines(log string) string {
	var b strings.Builder
	for l := range strings.Lines(log) {
		if strings.Contains(l, "Error") {
			b.WriteString("\n" + strings.TrimRight(l, "\n"))
		}
	}
	return b.String()
}

// measure runs the rounds: a steady epoch (content unchanged) next to a
// bare dump, an epoch of all-new content, and an incremental epoch after
// DirtyFraction of the pages changed.
func (r *run) measure(ctx context.Context, rep *Report, progress func(string, ...any)) error {
	// The first epoch stores everything; the rounds start from it.
	if _, _, err := r.checkpoint(ctx); err != nil {
		return err
	}
	pages := r.cfg.Size / PageSize
	k := int64(math.Round(float64(pages) * r.cfg.DirtyFraction))
	var freeze, frozen, memDump, memWrite, dump, capture, prm, ingest, incrFreeze, bareFrozen, bareWall []time.Duration
	var fullStored, fullWire, incrStored, incrWire []int64
	for i := range r.cfg.Rounds {
		bare := func() error {
			if !r.cfg.Baseline {
				return nil
			}
			f, w, err := r.bareDump(ctx)
			if err != nil {
				return err
			}
			bareFrozen, bareWall = append(bareFrozen, f), append(bareWall, w)
			return nil
		}
		if i%2 == 0 {
			if err := bare(); err != nil {
				return err
			}
		}
		ep, t, err := r.checkpoint(ctx)
		if err != nil {
			return err
		}
		freeze = append(freeze, t.freeze)
		us := func(k string) time.Duration { return time.Duration(ep.Manifest.CRIUStats[k]) * time.Microsecond }
		frozen = append(frozen, us("frozen_time"))
		memDump, memWrite = append(memDump, us("memdump_time")), append(memWrite, us("memwrite_time"))
		if i%2 == 1 {
			if err := bare(); err != nil {
				return err
			}
		}

		if _, err := r.ask("REFILL " + r.nextSeed()); err != nil {
			return err
		}
		full, ft, err := r.checkpoint(ctx)
		if err != nil {
			return err
		}
		dump = append(dump, ft.dump)
		capture = append(capture, ft.wall)
		prm = append(prm, full.Manifest.Phases.PRM)
		ingest = append(ingest, full.Manifest.Phases.Ingest)
		fullStored = append(fullStored, full.Manifest.Bytes.Stored)
		fw, err := wireBytes(r.e.Store(), full, nil)
		if err != nil {
			return err
		}
		fullWire = append(fullWire, fw)

		if _, err := r.ask(fmt.Sprintf("DIRTY %d %s", k, r.nextSeed())); err != nil {
			return err
		}
		incr, it, err := r.checkpoint(ctx)
		if err != nil {
			return err
		}
		incrFreeze = append(incrFreeze, it.freeze)
		incrStored = append(incrStored, incr.Manifest.Bytes.Stored)
		iw, err := wireBytes(r.e.Store(), incr, full)
		if err != nil {
			return err
		}
		incrWire = append(incrWire, iw)
		progress("round %d/%d: freeze %s (CRIU frozen %s), capture of all-new memory %s, incremental epoch %s stored",
			i+1, r.cfg.Rounds, ms(t.freeze), ms(frozen[i]), ms(ft.wall), FormatBytes(incr.Manifest.Bytes.Stored))
	}
	rep.Checkpoint = Checkpoints{
		Freeze: Millis(Median(freeze)), CRIUFrozen: Millis(Median(frozen)), DumpWall: Millis(Median(dump)),
		MemDump: Millis(Median(memDump)), MemWrite: Millis(Median(memWrite)),
		Capture: Millis(Median(capture)), PRM: Millis(Median(prm)), Ingest: Millis(Median(ingest)),
		FullStored: Median(fullStored), FullWire: Median(fullWire),
		DirtiedPages: k, IncrStored: Median(incrStored), IncrWire: Median(incrWire), IncrFreeze: Millis(Median(incrFreeze)),
	}
	if r.cfg.Baseline {
		rep.Bare = &Bare{Frozen: Millis(Median(bareFrozen)), Wall: Millis(Median(bareWall))}
	}
	return nil
}

// ms prints a duration to 0.1 ms below a second, to 1 ms above.
func ms(d time.Duration) string {
	if d >= time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(100 * time.Microsecond).String()
}

// wireBytes returns the size of the content ep added over parent (all of
// it without a parent) compressed as the wire compresses data frames:
// records (uvarint length + bytes) in 1 MiB batches, each an LZ4 block,
// sent raw when it does not compress.
func wireBytes(s *store.Store, ep, parent *store.Epoch) (int64, error) {
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
	flush := func() error {
		if len(raw) == 0 {
			return nil
		}
		n, err := comp.CompressBlock(raw, dst)
		if err != nil {
			return err
		}
		if n == 0 || n >= len(raw) {
			n = len(raw)
		}
		total += int64(n)
		raw = raw[:0]
		return nil
	}
	err := s.Fetch(hs, func(_ int, data []byte) error {
		raw = appendUvarint(raw, uint64(len(data)))
		raw = append(raw, data...)
		if len(raw) >= batch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return 0, fmt.Errorf("bench: wire size of epoch %d: %w", ep.Manifest.Epoch, err)
	}
	return total, nil
}

func appendUvarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// Median returns the median of xs (the mean of the two middle values for
// an even count), 0 for none.
func Median[T int64 | time.Duration | float64](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

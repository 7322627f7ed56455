// Package bench holds the node-level benchmarks of doppel: the naive
// stop-and-copy migration that relocation is measured against.
//
// StopAndCopy moves a synthetic app (package replicate/bench) the naive
// way: a full CRIU dump that stops it, a transfer of every image file over
// the peer transport with the same rate limit as the nodes' streams to
// their clones, and a restore; it reports the pause clients see.
package bench

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"doppel/node/peer"
	"doppel/replicate"
	rbench "doppel/replicate/bench"
	"doppel/replicate/criu"
)

// Config configures StopAndCopy.
type Config struct {
	// StateDir is where the source's temporary state directory is made.
	// Required, absolute.
	StateDir string
	// WorkDir receives the dump and, on the target side, the transferred
	// images (a tmpfs keeps both out of the disk's way, which favours
	// the naive migration); empty means /dev/shm when it exists, else
	// StateDir.
	WorkDir string
	// CRIU is how CRIU runs (the nodes' settings).
	CRIU criu.Config
	// AppCommand returns the command line that runs the synthetic app
	// (see replicate/bench.Config.AppCommand). Required.
	AppCommand func(rbench.AppConfig) []string
	// App is the synthetic app to move. Its Listen address must name a
	// fixed port: the restored app is reached there.
	App rbench.AppConfig
	// Warmup is how long the app runs (dirtying its pages) before it is
	// moved.
	Warmup time.Duration
	// RateLimit caps the transfer in bytes per second, as a node's
	// transfer.rate_limit caps its streams to clones; 0 for none.
	RateLimit int64
	// Bind is the IP address of the two peer transports (source and
	// target) of the transfer.
	Bind string
	// StartTimeout bounds the app's start; Timeout the move.
	StartTimeout time.Duration
	Timeout      time.Duration
	// Logger receives the engine's and the transports' logs; nil
	// discards them.
	Logger *slog.Logger
}

// DefaultConfig moves a 256 MiB app dirtying 1% of its pages per second,
// after 3 s, over an uncapped link on 127.0.0.1.
func DefaultConfig() Config {
	app := rbench.DefaultAppConfig()
	app.DirtyRate = 0.01
	return Config{
		StateDir:     "/var/lib/doppel",
		CRIU:         criu.DefaultConfig(),
		App:          app,
		Warmup:       3 * time.Second,
		Bind:         "127.0.0.1",
		StartTimeout: 2 * time.Minute,
		Timeout:      10 * time.Minute,
	}
}

// Result is one naive move.
type Result struct {
	// ImageBytes is the size of the dump's image files, all sent.
	ImageBytes int64 `json:"image_bytes"`
	// Dump is the CRIU dump (the app stops at its start), Transfer the
	// images' transfer until the target has them, Restore the CRIU
	// restore, Answer the time from the restore's end to the app's first
	// answer.
	Dump     rbench.Millis `json:"dump_ms"`
	Transfer rbench.Millis `json:"transfer_ms"`
	Restore  rbench.Millis `json:"restore_ms"`
	Answer   rbench.Millis `json:"answer_ms"`
	// Pause is what clients see: from the dump's start to the restored
	// app's first answer.
	Pause rbench.Millis `json:"pause_ms"`
}

// streamImages is the peer stream kind of the transfer.
const streamImages = "bench-images"

// StopAndCopy starts the app under an engine of its own, lets it run for
// Warmup, then moves it the naive way and times it. Everything it started
// is stopped, and its directories removed, before it returns.
func StopAndCopy(ctx context.Context, cfg Config) (res *Result, err error) {
	if cfg.AppCommand == nil {
		return nil, errors.New("stop-and-copy: no app command")
	}
	if !filepath.IsAbs(cfg.StateDir) {
		return nil, fmt.Errorf("stop-and-copy: state directory %q is not absolute", cfg.StateDir)
	}
	if strings.HasSuffix(cfg.App.Listen, ":0") || cfg.App.Listen == "" {
		return nil, fmt.Errorf("stop-and-copy: app address %q: want a fixed port", cfg.App.Listen)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r, err := newRig("naive", cfg.StateDir, cfg.WorkDir, cfg.CRIU, log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := r.close("stop-and-copy"); cerr != nil && err == nil {
			err = cerr
		}
	}()
	e, drv, name, stateDir, workDir := r.e, r.drv, r.name, r.stateDir, r.workDir
	dumpDir, recvDir := filepath.Join(workDir, "source"), filepath.Join(workDir, "target")
	for _, d := range []string{dumpDir, recvDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, err
		}
	}
	app := cfg.App
	if app.Seed == 0 {
		app.Seed = 1
	}
	st, err := e.Run(ctx, replicate.Spec{Name: name, Args: cfg.AppCommand(app), Dir: stateDir})
	if err != nil {
		return nil, fmt.Errorf("stop-and-copy: start app: %w", err)
	}
	addr, err := rbench.WaitReady(ctx, st, cfg.StartTimeout)
	if err != nil {
		return nil, fmt.Errorf("stop-and-copy: %w", err)
	}
	if err := rbench.Ping(ctx, addr, 10*time.Second); err != nil {
		return nil, fmt.Errorf("stop-and-copy: app at %s: %w", addr, err)
	}
	select {
	case <-time.After(cfg.Warmup):
	case <-ctx.Done():
		return nil, ctx.Err()
	}

	src, dst, received, err := transports(cfg, log, recvDir)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	defer dst.Close()

	res = &Result{}
	start := time.Now()
	if _, err := drv.Dump(ctx, criu.DumpOptions{Pid: st.Pid, ImagesDir: dumpDir, WorkDir: workDir}); err != nil {
		return nil, fmt.Errorf("stop-and-copy: dump: %w", err)
	}
	dumped := time.Now()
	res.Dump = rbench.Millis(dumped.Sub(start))

	if res.ImageBytes, err = send(ctx, src, dst.Addr(), dumpDir); err != nil {
		return nil, err
	}
	select {
	case err := <-received:
		if err != nil {
			return nil, fmt.Errorf("stop-and-copy: receive: %w", err)
		}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	sent := time.Now()
	res.Transfer = rbench.Millis(sent.Sub(dumped))

	rr, err := drv.Restore(ctx, criu.RestoreOptions{ImagesDir: recvDir, WorkDir: workDir, AppendFiles: []string{st.Stdout, st.Stderr}})
	if err != nil {
		return nil, fmt.Errorf("stop-and-copy: restore: %w", err)
	}
	r.restored = rr.Process
	up := time.Now()
	res.Restore = rbench.Millis(up.Sub(sent))
	if _, _, err := rbench.FirstAnswer(ctx, []string{addr}, time.Millisecond); err != nil {
		return nil, fmt.Errorf("stop-and-copy: restored app: %w", err)
	}
	answered := time.Now()
	res.Answer = rbench.Millis(answered.Sub(up))
	res.Pause = rbench.Millis(answered.Sub(start))
	return res, nil
}

// transports opens the source and target peer transports of the transfer;
// the target writes the images it receives into dir and reports on the
// channel once they are all there (and acknowledged).
func transports(cfg Config, log *slog.Logger, dir string) (src, dst *peer.Transport, received <-chan error, err error) {
	key, err := peer.NewKey()
	if err != nil {
		return nil, nil, nil, err
	}
	tcfg := peer.DefaultConfig()
	tcfg.BindAddr, tcfg.Key, tcfg.NodeName, tcfg.Logger = cfg.Bind+":0", key, "target", log
	dst, err = peer.Listen(tcfg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("stop-and-copy: target transport: %w", err)
	}
	done := make(chan error, 1)
	dst.HandleStream(streamImages, func(ctx context.Context, s *peer.Stream) {
		defer s.Close()
		err := untar(bufio.NewReaderSize(s, 1<<20), dir)
		if err == nil {
			_, err = s.Write([]byte{1})
		}
		done <- err
	})
	scfg := tcfg
	scfg.NodeName, scfg.RateLimit = "source", cfg.RateLimit
	src, err = peer.Listen(scfg)
	if err != nil {
		dst.Close()
		return nil, nil, nil, fmt.Errorf("stop-and-copy: source transport: %w", err)
	}
	return src, dst, done, nil
}

// send streams every file of dir to the target as a tar archive and waits
// for its acknowledgement; it returns the files' total size.
func send(ctx context.Context, src *peer.Transport, addr, dir string) (int64, error) {
	s, err := src.OpenStream(ctx, addr, streamImages, "")
	if err != nil {
		return 0, fmt.Errorf("stop-and-copy: open stream: %w", err)
	}
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	bw := bufio.NewWriterSize(s, 1<<20)
	tw := tar.NewWriter(bw)
	var total int64
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		hdr.Name, _ = filepath.Rel(dir, p)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		n, err := io.Copy(tw, f)
		total += n
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = s.CloseWrite()
	}
	if err == nil {
		var ack [1]byte
		_, err = io.ReadFull(s, ack[:])
	}
	if err != nil {
		return total, fmt.Errorf("stop-and-copy: send images: %w", err)
	}
	return total, nil
}

// untar writes the regular files of a tar archive into dir.
func untar(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if !hdr.FileInfo().Mode().IsRegular() {
			continue
		}
		name := filepath.Clean(hdr.Name)
		if !filepath.IsLocal(name) {
			return fmt.Errorf("image name %q outside the directory", hdr.Name)
		}
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
}

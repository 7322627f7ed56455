package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"doppel/replicate"
	rbench "doppel/replicate/bench"
	"doppel/replicate/criu"
)

// RestoreConfig configures RawRestore, the baseline of a failover: what
// CRIU alone takes to bring an app back on the node it ran on.
type RestoreConfig struct {
	// StateDir is where the temporary state directory is made. Required,
	// absolute.
	StateDir string
	// WorkDir receives the dump (empty: /dev/shm when it exists, else
	// StateDir), as the engine keeps its work on a tmpfs.
	WorkDir string
	// CRIU is how CRIU runs (the nodes' settings).
	CRIU criu.Config
	// Args is the app's command line. Required.
	Args []string
	// Addr is where the app answers (a fixed port: the restored app is
	// reached there too), and Request the line sent to it: any answer
	// line that does not start with "ERR" is a served request.
	Addr    string
	Request string
	// Warmup is how long the app runs after its first answer before the
	// dump.
	Warmup time.Duration
	// StartTimeout bounds the app's start; Timeout the whole run.
	StartTimeout time.Duration
	Timeout      time.Duration
	// Logger receives the engine's log; nil discards it.
	Logger *slog.Logger
}

// DefaultRestoreConfig answers PING (the synthetic app of replicate/bench)
// after a warm-up of 2 s.
func DefaultRestoreConfig() RestoreConfig {
	return RestoreConfig{
		StateDir:     "/var/lib/doppel",
		CRIU:         criu.DefaultConfig(),
		Request:      "PING",
		Warmup:       2 * time.Second,
		StartTimeout: 2 * time.Minute,
		Timeout:      5 * time.Minute,
	}
}

// RestoreResult is one raw restore.
type RestoreResult struct {
	// ImageBytes is the size of the dump's images.
	ImageBytes int64 `json:"image_bytes"`
	// Dump is the `criu dump --leave-running` taken just before the kill
	// (not part of Total).
	Dump rbench.Millis `json:"dump_ms"`
	// Exit is the kill -9 until the app's init is gone (its port free),
	// Restore the `criu restore`, Answer the restore's end to the first
	// served request.
	Exit    rbench.Millis `json:"exit_ms"`
	Restore rbench.Millis `json:"restore_ms"`
	Answer  rbench.Millis `json:"answer_ms"`
	// Total is from the kill to the first served request: what a restore
	// costs with no failure detection, election, transfer or journal.
	Total rbench.Millis `json:"total_ms"`
}

// RawRestore starts the app under an engine of its own (its own PID
// namespace and freezer cgroup, as doppel runs apps), lets it serve, dumps
// it with `criu dump --leave-running`, kills its whole tree with SIGKILL,
// restores it from that dump with CRIU and times the kill to the first
// served request. Everything it started is stopped, and its directories
// removed, before it returns.
func RawRestore(ctx context.Context, cfg RestoreConfig) (res *RestoreResult, err error) {
	if len(cfg.Args) == 0 {
		return nil, errors.New("raw restore: no app command")
	}
	if !filepath.IsAbs(cfg.StateDir) {
		return nil, fmt.Errorf("raw restore: state directory %q is not absolute", cfg.StateDir)
	}
	if strings.HasSuffix(cfg.Addr, ":0") || cfg.Addr == "" {
		return nil, fmt.Errorf("raw restore: app address %q: want a fixed port", cfg.Addr)
	}
	if cfg.Request == "" {
		cfg.Request = "PING"
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r, err := newRig("rawrestore", cfg.StateDir, cfg.WorkDir, cfg.CRIU, log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := r.close("raw restore"); cerr != nil && err == nil {
			err = cerr
		}
	}()
	e, drv, name, stateDir, workDir := r.e, r.drv, r.name, r.stateDir, r.workDir
	imgDir := filepath.Join(workDir, "images")
	if err := os.Mkdir(imgDir, 0o700); err != nil {
		return nil, err
	}
	st, err := e.Run(ctx, replicate.Spec{Name: name, Args: cfg.Args, Dir: stateDir})
	if err != nil {
		return nil, fmt.Errorf("raw restore: start app: %w", err)
	}
	if err := waitServed(ctx, st, cfg.Addr, cfg.Request, cfg.StartTimeout); err != nil {
		return nil, fmt.Errorf("raw restore: %w", err)
	}
	select {
	case <-time.After(cfg.Warmup):
	case <-ctx.Done():
		return nil, ctx.Err()
	}

	res = &RestoreResult{}
	t0 := time.Now()
	if _, err := drv.Dump(ctx, criu.DumpOptions{Pid: st.Pid, ImagesDir: imgDir, WorkDir: workDir, LeaveRunning: true}); err != nil {
		return nil, fmt.Errorf("raw restore: dump: %w", err)
	}
	res.Dump = rbench.Millis(time.Since(t0))
	res.ImageBytes = dirSize(imgDir)

	// kill -9 of the app's init: its PID namespace, so its whole tree,
	// dies with it.
	killed := time.Now()
	if err := syscall.Kill(st.Pid, syscall.SIGKILL); err != nil {
		return nil, fmt.Errorf("raw restore: kill app pid %d: %w", st.Pid, err)
	}
	for st.Running() {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("raw restore: app pid %d still runs after SIGKILL: %w", st.Pid, ctx.Err())
		}
		time.Sleep(200 * time.Microsecond)
	}
	gone := time.Now()
	res.Exit = rbench.Millis(gone.Sub(killed))
	rr, err := drv.Restore(ctx, criu.RestoreOptions{ImagesDir: imgDir, WorkDir: workDir, AppendFiles: []string{st.Stdout, st.Stderr}})
	if err != nil {
		return nil, fmt.Errorf("raw restore: restore: %w", err)
	}
	r.restored = rr.Process
	up := time.Now()
	res.Restore = rbench.Millis(up.Sub(gone))
	for {
		if err := ask(ctx, cfg.Addr, cfg.Request, 10*time.Second); err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("raw restore: the restored app never answered at %s: %w", cfg.Addr, ctx.Err())
		}
		time.Sleep(time.Millisecond)
	}
	answered := time.Now()
	res.Answer = rbench.Millis(answered.Sub(up))
	res.Total = rbench.Millis(answered.Sub(killed))
	return res, nil
}

// waitServed waits until the app answers req at addr, failing early when
// it exits.
func waitServed(ctx context.Context, st *replicate.AppState, addr, req string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := ask(ctx, addr, req, 10*time.Second)
		if err == nil {
			return nil
		}
		if !st.Running() {
			msg, _ := os.ReadFile(st.Stderr)
			return fmt.Errorf("app exited before it answered: %s", strings.TrimSpace(string(msg)))
		}
		if ctx.Err() != nil {
			return fmt.Errorf("app did not answer at %s: %w (last error: %w)", addr, ctx.Err(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ask sends one request line to addr and waits for an answer line that is
// not an error.
func ask(ctx context.Context, addr, req string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write([]byte(req + "\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line = strings.TrimSpace(line); line == "" || strings.HasPrefix(line, "ERR") {
		return fmt.Errorf("answer %q to %q", line, req)
	}
	return nil
}

// dirSize is the total size of the regular files under dir.
func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	nbench "doppel/node/bench"
	"doppel/replicate/bench"
	"doppel/replicate/criu"
)

func newBenchCmd(a *app) *cobra.Command {
	var sizeS, appSizeS, dirtyS, linkS, peerName, probeS string
	var rounds, workers int
	var baseline, asJSON bool
	cmd := &cobra.Command{
		Use:   "bench [--size 256MiB] [--app-size SIZE] [--dirty-rate 1%] [--link-rate RATE | --peer NODE] [--baseline] [--json]",
		Short: "Measure this host's checkpoint speed and recommend an interval and replica count",
		Long: "Runs a synthetic app of --size under a checkpoint engine of its own (a temporary directory in the state " +
			"directory, which is the disk measured) and times its epochs: the freeze, an epoch of all-new memory, an " +
			"incremental epoch after 1% of the pages changed; it also times the store's hash (xxh3) and the wire's LZ4 on " +
			"page-like data and fsynced writes. From these it recommends an interval and a number of clones for an app of " +
			"--app-size that rewrites --dirty-rate of its pages per second, and says what dominates an epoch's cost " +
			"(freeze, hashing, compression, disk, network). The link to the clones is measured with --peer NODE: the " +
			"local daemon sends --probe-size of random bytes to that node over the peer transport, through its " +
			"transfer.rate_limit, and times a few round trips; otherwise give --link-rate (default: " +
			"transfer.rate_limit when set). --baseline also times a bare `criu dump --leave-running` of the same " +
			"app, alternated with the engine's epochs. Needs root and CRIU; the daemon need not run, except with --peer.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			size, err := bench.ParseSize(sizeS)
			if err != nil {
				return usageError{err}
			}
			appSize := size
			if appSizeS != "" {
				if appSize, err = bench.ParseSize(appSizeS); err != nil {
					return usageError{err}
				}
			}
			dirty, err := bench.ParseFraction(dirtyS)
			if err != nil {
				return usageError{err}
			}
			link := a.cfg.Transfer.RateLimit
			if linkS != "" {
				if link, err = bench.ParseRate(linkS); err != nil {
					return usageError{err}
				}
			}
			if rounds < 1 {
				return usageError{fmt.Errorf("--rounds %d: want at least 1", rounds)}
			}
			probeSize, err := checkPeerFlags(peerName, linkS, probeS)
			if err != nil {
				return usageError{err}
			}
			if os.Geteuid() != 0 {
				return errors.New("doppel bench needs root: it checkpoints a process with CRIU (run it with sudo)")
			}
			var measured *bench.Link
			if peerName != "" {
				// First, so that a bad peer fails before minutes of CRIU.
				if measured, err = probeLink(cmd, a.client(cmd), peerName, probeSize); err != nil {
					return err
				}
				link = int64(measured.Rate)
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			_ = criu.SetChildSubreaper()
			cfg := bench.DefaultConfig()
			cfg.StateDir = a.cfg.Node.StateDir
			cfg.CRIU.Path, cfg.CRIU.Prefix = a.cfg.CRIU.Path, a.cfg.CRIU.Prefix
			cfg.AppCommand = benchAppCommand(exe)
			cfg.Size, cfg.Rounds, cfg.Baseline = size, rounds, baseline
			cfg.CPUBytes = min(max(size, 64<<20), 256<<20)
			cfg.DiskBytes = cfg.CPUBytes
			cfg.Progress = cmd.ErrOrStderr()
			rep, err := bench.Measure(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			rep.Link = measured
			rates := rep.Rates(float64(link))
			w := bench.Workload{AppSize: appSize, DirtyRate: dirty, Workers: workers}
			rec := bench.Recommend(rates, w, bench.DefaultPolicy())
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), map[string]any{
					"report": rep, "rates": rates, "workload": w, "recommendation": rec,
				})
			}
			return bench.WriteText(cmd.OutOrStdout(), rep, rates, w, rec)
		},
	}
	f := cmd.Flags()
	f.StringVar(&sizeS, "size", "256MiB", "memory of the synthetic app measured")
	f.StringVar(&appSizeS, "app-size", "", "memory of the app to recommend for (default: --size)")
	f.StringVar(&dirtyS, "dirty-rate", "1%", "fraction of its pages the app rewrites per second")
	f.StringVar(&linkS, "link-rate", "", "transfer rate to the clones, e.g. 1Gbit or 100MB/s (default: transfer.rate_limit)")
	f.StringVar(&peerName, "peer", "", "measure the link to this node through the local daemon instead of --link-rate")
	f.StringVar(&probeS, "probe-size", "64MiB", "bytes sent to --peer to measure the link (at most 1GiB; a slow link stops after 15 s)")
	f.IntVar(&rounds, "rounds", 3, "repetitions of each measurement (medians are reported)")
	f.IntVar(&workers, "workers", 0, "worker nodes in the cluster, to cap the replica count (0: unknown)")
	f.BoolVar(&baseline, "baseline", false, "also time a bare criu dump of the same app, alternated with the engine's epochs")
	f.BoolVar(&asJSON, "json", false, "print the measurements and the recommendation as JSON")
	cmd.AddCommand(newBenchAppCmd(), newBenchLoadCmd(), newBenchProbeCmd(), newBenchStopAndCopyCmd(a), newBenchRawRestoreCmd(a))
	return cmd
}

// benchAppCommand returns the command line of the synthetic app.
func benchAppCommand(exe string) func(bench.AppConfig) []string {
	return func(c bench.AppConfig) []string {
		return []string{exe, "bench", "app", "--size", strconv.FormatInt(c.Size, 10),
			"--dirty-rate", strconv.FormatFloat(c.DirtyRate, 'g', -1, 64), "--listen", c.Listen,
			"--seed", strconv.FormatUint(c.Seed, 10)}
	}
}

// newBenchAppCmd is the synthetic app that doppel bench and the benchmark
// scripts checkpoint.
func newBenchAppCmd() *cobra.Command {
	var sizeS, dirtyS string
	c := bench.DefaultAppConfig()
	cmd := &cobra.Command{
		Use:    "app --size SIZE --listen ADDR [--dirty-rate F]",
		Short:  "The synthetic app of doppel bench: page-like memory, a line protocol (PING, WORK, DIRTY K SEED, REFILL SEED)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if c.Size, err = bench.ParseSize(sizeS); err != nil {
				return usageError{err}
			}
			if c.DirtyRate, err = bench.ParseFraction(dirtyS); err != nil {
				return usageError{err}
			}
			return bench.RunApp(cmd.Context(), c, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&sizeS, "size", "256MiB", "resident memory")
	f.StringVar(&dirtyS, "dirty-rate", "0", "fraction of the pages rewritten per second")
	f.StringVar(&c.Listen, "listen", c.Listen, "TCP address to serve")
	f.Uint64Var(&c.Seed, "seed", 0, "seed of the initial content (0: random)")
	return cmd
}

// newBenchLoadCmd measures the synthetic app's request rate.
func newBenchLoadCmd() *cobra.Command {
	var addr, request string
	var conns int
	var d, pace time.Duration
	cmd := &cobra.Command{
		Use:    "load --addr ADDR [--conns N] [--duration D] [--request WORK|PING] [--pace D]",
		Short:  "Send WORK (or PING) requests to the synthetic app and print the answered rate and the longest wait",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if addr == "" {
				return usageError{errors.New("load needs --addr")}
			}
			r, err := bench.LoadWith(cmd.Context(), addr, request, conns, d, pace)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "requests=%d seconds=%.3f rate=%.1f max_gap_ms=%.1f\n",
				r.Requests, r.Elapsed.Seconds(), r.Rate(), float64(r.MaxGap)/1e6)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "", "the app's address")
	f.IntVar(&conns, "conns", 4, "connections, one request in flight on each")
	f.DurationVar(&d, "duration", 5*time.Second, "how long to send")
	f.StringVar(&request, "request", "WORK", "WORK (rewrites a page per request) or PING (changes nothing)")
	f.DurationVar(&pace, "pace", 0, "wait between an answer and the next request on a connection")
	return cmd
}

// newBenchProbeCmd waits for the first answer of the synthetic app at any
// of several addresses.
func newBenchProbeCmd() *cobra.Command {
	var addrs string
	var since int64
	var timeout, poll time.Duration
	cmd := &cobra.Command{
		Use:    "probe --addr A[,B...] [--since UNIX_NS] [--timeout D]",
		Short:  "Wait until one of the addresses answers PING; print it and the milliseconds since --since",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list := strings.FieldsFunc(addrs, func(r rune) bool { return r == ',' || r == ' ' })
			if len(list) == 0 {
				return usageError{errors.New("probe needs --addr")}
			}
			from := time.Now()
			if since > 0 {
				from = time.Unix(0, since)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			addr, at, err := bench.FirstAnswer(ctx, list, poll)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "addr=%s ms=%.1f\n", addr, float64(at.Sub(from))/1e6)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&addrs, "addr", "", "addresses to poll, comma-separated")
	f.Int64Var(&since, "since", 0, "start of the measured time, Unix nanoseconds (default: now)")
	f.DurationVar(&timeout, "timeout", time.Minute, "give up after this long")
	f.DurationVar(&poll, "poll", 5*time.Millisecond, "time between two attempts on one address")
	return cmd
}

// newBenchStopAndCopyCmd times a naive migration of the synthetic app.
func newBenchStopAndCopyCmd(a *app) *cobra.Command {
	var sizeS, dirtyS, rateS string
	var asJSON bool
	c := nbench.DefaultConfig()
	cmd := &cobra.Command{
		Use:    "stop-and-copy --listen 127.0.0.1:PORT [--size 256MiB] [--dirty-rate 1%] [--rate-limit BYTES/S]",
		Short:  "Time a naive migration of the synthetic app: full dump (app stopped), capped transfer, restore",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if c.App.Listen == "" {
				return usageError{errors.New("stop-and-copy needs --listen 127.0.0.1:PORT (a free port)")}
			}
			var err error
			if c.App.Size, err = bench.ParseSize(sizeS); err != nil {
				return usageError{err}
			}
			if c.App.DirtyRate, err = bench.ParseFraction(dirtyS); err != nil {
				return usageError{err}
			}
			c.RateLimit = a.cfg.Transfer.RateLimit
			if rateS != "" {
				if c.RateLimit, err = bench.ParseRate(rateS); err != nil {
					return usageError{err}
				}
			}
			if os.Geteuid() != 0 {
				return errors.New("stop-and-copy needs root: it checkpoints a process with CRIU")
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			_ = criu.SetChildSubreaper()
			c.StateDir = a.cfg.Node.StateDir
			c.CRIU.Path, c.CRIU.Prefix = a.cfg.CRIU.Path, a.cfg.CRIU.Prefix
			c.AppCommand = benchAppCommand(exe)
			res, err := nbench.StopAndCopy(cmd.Context(), c)
			if err != nil {
				return err
			}
			if asJSON {
				b, err := json.Marshal(res)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "pause %.0f ms: dump %.0f ms, transfer of %s %.0f ms, restore %.0f ms, first answer %.0f ms later\n",
				float64(res.Pause)/1e6, float64(res.Dump)/1e6, bench.FormatBytes(res.ImageBytes), float64(res.Transfer)/1e6,
				float64(res.Restore)/1e6, float64(res.Answer)/1e6)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&sizeS, "size", "256MiB", "memory of the synthetic app")
	f.StringVar(&dirtyS, "dirty-rate", "1%", "fraction of its pages the app rewrites per second")
	f.StringVar(&c.App.Listen, "listen", "", "the app's address, a fixed port (required)")
	f.StringVar(&rateS, "rate-limit", "", "transfer cap, bytes/s or e.g. 1Gbit (default: transfer.rate_limit)")
	f.StringVar(&c.Bind, "bind", c.Bind, "IP address of the transfer's two endpoints")
	f.DurationVar(&c.Warmup, "warmup", c.Warmup, "how long the app runs before it is moved")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON (milliseconds)")
	return cmd
}

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	nbench "doppel/node/bench"
	"doppel/replicate/bench"
	"doppel/replicate/criu"
)

// newBenchRawRestoreCmd times the failover baseline: CRIU alone restoring
// an app on its own node.
func newBenchRawRestoreCmd(a *app) *cobra.Command {
	var sizeS, dirtyS string
	var asJSON bool
	c := nbench.DefaultRestoreConfig()
	cmd := &cobra.Command{
		Use:   "raw-restore --listen 127.0.0.1:PORT [--size 64MiB] [--dirty-rate 1%] [--request LINE] [-- CMD ARGS...]",
		Short: "Time the failover baseline: criu dump --leave-running, kill -9 of the app, criu restore, first served request",
		Long: "Runs the synthetic app (or CMD, which must answer on --listen) in its own PID namespace as doppel runs apps, " +
			"dumps it with criu dump --leave-running, kills its tree with SIGKILL and restores it from that dump with CRIU " +
			"on this node, and prints the time from the kill to the first answer to --request: a restore without failure " +
			"detection, election, transfer or journal.",
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if c.Addr == "" {
				return usageError{errors.New("raw-restore needs --listen 127.0.0.1:PORT (a free port)")}
			}
			if len(args) > 0 && cmd.ArgsLenAtDash() != 0 {
				return usageError{errors.New("raw-restore takes a command only after --")}
			}
			c.Args = args
			if len(args) == 0 {
				size, err := bench.ParseSize(sizeS)
				if err != nil {
					return usageError{err}
				}
				dirty, err := bench.ParseFraction(dirtyS)
				if err != nil {
					return usageError{err}
				}
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				c.Args = benchAppCommand(exe)(bench.AppConfig{Size: size, DirtyRate: dirty, Listen: c.Addr, Seed: 1})
			}
			if os.Geteuid() != 0 {
				return errors.New("raw-restore needs root: it checkpoints a process with CRIU")
			}
			_ = criu.SetChildSubreaper()
			c.StateDir = a.cfg.Node.StateDir
			c.CRIU.Path, c.CRIU.Prefix = a.cfg.CRIU.Path, a.cfg.CRIU.Prefix
			res, err := nbench.RawRestore(cmd.Context(), c)
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
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "kill → first answer %.0f ms: exit %.0f ms, restore of %s %.0f ms, answer %.0f ms later (dump before the kill %.0f ms)\n",
				float64(res.Total)/1e6, float64(res.Exit)/1e6, bench.FormatBytes(res.ImageBytes), float64(res.Restore)/1e6,
				float64(res.Answer)/1e6, float64(res.Dump)/1e6)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&sizeS, "size", "64MiB", "memory of the synthetic app")
	f.StringVar(&dirtyS, "dirty-rate", "1%", "fraction of its pages the synthetic app rewrites per second")
	f.StringVar(&c.Addr, "listen", "", "the app's address, a fixed port (required)")
	f.StringVar(&c.Request, "request", c.Request, "the request line; any answer not starting with ERR counts as served")
	f.DurationVar(&c.Warmup, "warmup", c.Warmup, "how long the app serves before the dump")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON (milliseconds)")
	return cmd
}

// Command doppel keeps a running Linux application alive across machine
// failures and maintenance by replicating it, checkpoint after checkpoint,
// to stand-by nodes.
//
// This file wires the packages into cobra commands; the logic lives in the
// packages (see DESIGN.md).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"doppel/node/config"
	"doppel/node/doctor"
	"doppel/replicate/shim"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// usageError is a bad command line or configuration: exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// exitError carries an exit code for a command that has already printed
// its result (doctor with failures).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// app is the state shared by the commands of one invocation.
type app struct {
	configPath string
	cfg        config.Config
	log        *slog.Logger
}

// flagKeys binds persistent flags to configuration keys.
var flagKeys = map[string]string{
	"state-dir": "node.state_dir",
	"criu":      "criu.path",
	"log-level": "log.level",
	"socket":    "api.socket",
}

func newRoot(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:           "doppel",
		Short:         "Keep a running application alive across machine failures and maintenance",
		Long:          "doppel replicates a running application — memory, registers, file descriptors, sockets, IPC and data files — to stand-by nodes by incremental checkpoints, and moves it when a node fails or needs maintenance.",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       buildVersion(),
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			keys := flagKeys
			if cmd.Name() == "node" {
				keys = map[string]string{}
				for k, v := range flagKeys {
					keys[k] = v
				}
				for k, v := range nodeFlagKeys {
					keys[k] = v
				}
			}
			cfg, err := config.Load(a.configPath, cmd.Flags(), keys)
			if err != nil {
				return usageError{err}
			}
			a.cfg = cfg
			a.log = newLogger(os.Stderr, cfg.Log)
			return nil
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see --help)", err)}
	})
	pf := root.PersistentFlags()
	pf.StringVar(&a.configPath, "config", "", "configuration file (default "+config.DefaultPath+" if it exists)")
	pf.String("state-dir", "", "state directory (config node.state_dir)")
	pf.String("criu", "", "criu binary (config criu.path)")
	pf.String("log-level", "", "debug, info, warn or error (config log.level)")
	pf.String("socket", "", "the local daemon's API socket (env DOPPEL_SOCKET, config api.socket)")

	root.AddCommand(newDoctorCmd(a), newVersionCmd(), newInitCmd(a), newNodeCmd(a),
		newStatusCmd(a), newNodesCmd(a), newLsCmd(a),
		newRunCmd(a), newAdoptCmd(a), newCheckpointCmd(a), newRestoreCmd(a), newFailoverCmd(a), newRelocateCmd(a), newDrainCmd(a), newUndrainCmd(a), newBalanceCmd(a),
		newStopCmd(a), newRmCmd(a),
		newEpochsCmd(a), newExportCmd(a), newImportCmd(a), newInspectCmd(a),
		newTUICmd(a), newDemoCmd(a), newDemoAppCmd(), newBenchCmd(a))
	root.RunE = rootRunE(a)
	return root
}

func newDoctorCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that this host can run doppel",
		Long:  "Checks root, CRIU (version, criu check, features), the cgroup freezer, the nftables network lock, the kernel and free space in the state directory. Exits 0 only when no check fails.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dc := doctor.DefaultConfig()
			dc.CRIUPath = a.cfg.CRIU.Path
			dc.CRIUPrefix = a.cfg.CRIU.Prefix
			dc.StateDir = a.cfg.Node.StateDir
			checks := doctor.Run(cmd.Context(), dc)
			out := cmd.OutOrStdout()
			var err error
			if asJSON {
				err = doctor.WriteJSON(out, checks)
			} else {
				err = doctor.WriteText(out, checks)
			}
			if err != nil {
				return err
			}
			if doctor.Failed(checks) {
				return exitError{1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the checks as JSON")
	return cmd
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print doppel's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), "doppel", buildVersion())
			return err
		},
	}
}

func buildVersion() string {
	v := version
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " (" + s.Value[:12] + ")"
			}
		}
	}
	return v
}

func newLogger(w io.Writer, c config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level)) // validated by config
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func main() {
	// The init of an app's PID namespace is this binary; it skips cobra and
	// configuration so that nothing but the init runs in the app's tree.
	// It closes what it inherited itself, except what its helper modes
	// pass on (CRIU's RPC socket when it wraps CRIU).
	if len(os.Args) > 1 && os.Args[1] == shim.Subcommand {
		os.Exit(shim.Main(os.Args[2:]))
	}
	// Descriptors inherited from the shell (without close-on-exec) would
	// leak into every app doppel starts and tie it to processes outside
	// its tree, which CRIU cannot checkpoint.
	_ = unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC)
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command line and returns the exit code: 0 success,
// 1 failure, 2 bad command line or configuration.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a := &app{}
	root := newRoot(a)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintln(stderr, "doppel:", err)
		return 2
	}
	if isCobraUsage(err) {
		fmt.Fprintf(stderr, "doppel: %v (see doppel --help)\n", err)
		return 2
	}
	fmt.Fprintln(stderr, "doppel:", err)
	return 1
}

// isCobraUsage recognises cobra's own command-line errors (unknown command,
// wrong number of arguments), which it does not type.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "accepts ", "requires ", "unknown flag", "unknown shorthand"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"doppel/tui"
)

func newTUICmd(a *app) *cobra.Command {
	var logFile string
	cmd := &cobra.Command{
		Use:   "tui [--log-file FILE]",
		Short: "Open the operator's dashboard of the local daemon",
		Long: "Shows, live, the cluster's nodes, the apps with their clones, the resource tree of the selected app, " +
			"its checkpoint phases and the cluster's events, with actions (checkpoint now, stop, restore here). " +
			"It talks to the local daemon's API only, reconnects when the daemon restarts, and logs to a file. " +
			"doppel without a command opens it too when run on a terminal. NO_COLOR turns colours off.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runTUI(cmd, a, logFile)
		},
	}
	cmd.Flags().StringVar(&logFile, "log-file", "", "write the dashboard's log here (default: "+defaultTUILog()+")")
	return cmd
}

// rootRunE opens the dashboard when doppel runs without a command on a
// terminal, and prints the help otherwise.
func rootRunE(a *app) func(cmd *cobra.Command, args []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 && onTerminal() {
			return runTUI(cmd, a, "")
		}
		return cmd.Help()
	}
}

// onTerminal says whether stdin and stdout are both terminals.
func onTerminal() bool {
	return term.IsTerminal(int(os.Stdin.Fd())) && term.IsTerminal(int(os.Stdout.Fd()))
}

// defaultTUILog is where the dashboard logs without --log-file.
func defaultTUILog() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "doppel", "tui.log")
}

// openLogFile returns a logger appending to path (created with its
// directory), never to the terminal.
func openLogFile(a *app, path string) (*slog.Logger, io.Closer, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, err
	}
	return newLogger(f, a.cfg.Log), f, nil
}

func runTUI(cmd *cobra.Command, a *app, logFile string) error {
	if !onTerminal() {
		return usageError{fmt.Errorf("doppel tui needs a terminal (for scripts: doppel status, doppel ls, doppel nodes)")}
	}
	if logFile == "" {
		logFile = defaultTUILog()
	}
	log, closer, err := openLogFile(a, logFile)
	if err != nil {
		return fmt.Errorf("dashboard log: %w", err)
	}
	defer closer.Close()
	cfg := tui.DefaultConfig(a.socket(cmd))
	cfg.Logger = log
	return tui.Run(cmd.Context(), cfg, tui.Options{})
}

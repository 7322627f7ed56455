package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"doppel/tui"
	"doppel/tui/demo"
	"doppel/tui/demoapp"
)

func newDemoCmd(a *app) *cobra.Command {
	var noTUI, keep bool
	var appName string
	var interval, every time.Duration
	cmd := &cobra.Command{
		Use:   "demo [--no-tui] [--keep]",
		Short: "Run a 3-node cluster with a sample app on this machine and open the dashboard on it",
		Long: "Starts three nodes on 127.0.0.11-13 (other ports when the defaults are taken) with a new cluster key, " +
			"state in a temporary directory, a small key-value server replicated to two clones and a light client load " +
			"against it, then opens the dashboard on the first node. Keys to try are shown at the bottom: stop the app and " +
			"restore it on another node, or kill a node to simulate a failure. Quitting (or Ctrl-C) stops everything and " +
			"removes the directory. With --no-tui it prints a status line every few seconds until interrupted. Needs root.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !noTUI && !onTerminal() {
				return usageError{fmt.Errorf("doppel demo shows a dashboard and needs a terminal (or use --no-tui)")}
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			// A closed terminal (SIGHUP) ends the demo like Ctrl-C and
			// SIGTERM do: with its cleanup.
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGHUP)
			defer stop()
			cmd.SetContext(ctx)
			cfg := demo.DefaultConfig(exe)
			cfg.Keep = keep
			cfg.App = appName
			cfg.Interval = interval
			cfg.CRIUPath, cfg.CRIUPrefix = a.cfg.CRIU.Path, a.cfg.CRIU.Prefix
			cfg.LogLevel = a.cfg.Log.Level
			cfg.Progress = cmd.ErrOrStderr()
			c, err := demo.Start(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			// Everything started is stopped, whatever ends the demo.
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), cfg.StopTimeout+10*time.Second)
				defer cancel()
				if err := c.Close(ctx); err != nil {
					fmt.Fprintln(cmd.ErrOrStderr(), "doppel demo:", err)
				}
			}()
			if noTUI {
				return headless(cmd, c, every)
			}
			log, closer, err := openLogFile(a, filepath.Join(c.Dir(), "tui.log"))
			if err != nil {
				return err
			}
			defer closer.Close()
			tc := tui.DefaultConfig(c.Nodes()[0].Socket)
			tc.Endpoints = c.Endpoints()
			tc.Demo = c
			tc.Logger = log
			return tui.Run(cmd.Context(), tc, tui.Options{})
		},
	}
	f := cmd.Flags()
	f.BoolVar(&noTUI, "no-tui", false, "run without the dashboard, printing status lines until interrupted")
	f.BoolVar(&keep, "keep", false, "keep the state directory and the logs when the demo ends")
	f.StringVar(&appName, "app", "kv", "name of the sample app")
	f.DurationVar(&interval, "interval", 2*time.Second, "time between two epochs of the sample app")
	f.DurationVar(&every, "every", 2*time.Second, "time between two status lines (--no-tui)")
	return cmd
}

// headless prints a status line every period until the command's context
// ends (Ctrl-C, SIGTERM).
func headless(cmd *cobra.Command, c *demo.Cluster, every time.Duration) error {
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "demo running in %s; app at %s; Ctrl-C stops it\n", c.Dir(), c.AppAddr())
	for _, n := range c.Nodes() {
		fmt.Fprintf(out, "node %s: %s (doppel --socket %s status)\n", n.Name, n.IP, n.Socket)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-cmd.Context().Done():
			fmt.Fprintln(out, "stopping the demo")
			return nil
		case now := <-t.C:
			fmt.Fprintln(out, now.Format("15:04:05"), c.Status(cmd.Context()))
		}
	}
}

// newDemoAppCmd is the sample app of the demo: a TCP key-value server.
func newDemoAppCmd() *cobra.Command {
	var listen, data string
	cmd := &cobra.Command{
		Use:    "demo-app --listen ADDR --data DIR",
		Short:  "The sample app of doppel demo (a TCP key-value server)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := demoapp.DefaultConfig(data)
			cfg.Listen = listen
			s, err := demoapp.New(cfg)
			if err != nil {
				return err
			}
			return s.Serve(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:7070", "TCP address to serve")
	cmd.Flags().StringVar(&data, "data", ".", "directory of the write log")
	return cmd
}

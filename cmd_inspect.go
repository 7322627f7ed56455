package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"doppel/introspect"
)

func newInspectCmd(a *app) *cobra.Command {
	var appName string
	var asJSON, asDOT, watch bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "inspect PID | --app NAME [--json|--dot] [--watch]",
		Short: "Show the resource graph of a process tree, and whether it can be checkpointed",
		Long: "Reads the process tree rooted at PID (or, with --app, the app's tree as its OP node sees it) from the kernel: " +
			"processes, threads, memory mappings, file descriptors, pipes, sockets, IPC objects and the dependencies between them, " +
			"each with a verdict (ok, warn, blocker) on whether CRIU can checkpoint it. --watch follows it as it forks and opens things.",
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case appName != "" && len(args) > 0:
				return usageError{fmt.Errorf("inspect takes a PID or --app NAME, not both")}
			case appName == "" && len(args) != 1:
				return usageError{fmt.Errorf("inspect needs a PID or --app NAME")}
			case asJSON && asDOT:
				return usageError{fmt.Errorf("--json and --dot exclude each other")}
			case appName != "":
				return checkName(appName)
			}
			if pid, err := strconv.Atoi(args[0]); err != nil || pid <= 0 {
				return usageError{fmt.Errorf("PID %q is not a process ID", args[0])}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			render := func(g *introspect.Graph) error {
				switch {
				case asJSON:
					return g.WriteJSON(out)
				case asDOT:
					return g.WriteDOT(out)
				}
				return g.WriteText(out)
			}
			if appName != "" {
				return inspectApp(cmd.Context(), a, cmd, appName, watch, interval, render, out)
			}
			pid, _ := strconv.Atoi(args[0])
			cfg := introspect.DefaultConfig()
			cfg.ScanInterval = interval
			if !watch {
				g, err := introspect.Scan(cmd.Context(), pid, cfg)
				if err != nil {
					return err
				}
				return render(g)
			}
			w, err := introspect.NewWatcher(cmd.Context(), pid, cfg)
			if err != nil {
				return err
			}
			defer w.Close()
			first := true
			for {
				u, err := w.Next(cmd.Context())
				if err != nil {
					if cmd.Context().Err() != nil {
						return nil
					}
					return err
				}
				if first || asJSON || asDOT {
					first = false
					if u.Graph == nil {
						fmt.Fprintf(out, "pid %d exited\n", pid)
						return nil
					}
					if asJSON {
						if err := json.NewEncoder(out).Encode(u); err != nil {
							return err
						}
						continue
					}
					if err := render(u.Graph); err != nil {
						return err
					}
					continue
				}
				for _, c := range u.Changes {
					fmt.Fprintf(out, "%s %-7s %s\n", u.Time.Format("15:04:05.000"), c.Op, describeChange(c))
				}
				if u.Graph == nil {
					fmt.Fprintf(out, "pid %d exited\n", pid)
					return nil
				}
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&appName, "app", "", "inspect an app of the cluster by name (through the local daemon)")
	f.BoolVar(&asJSON, "json", false, "print the graph as JSON (with --watch: one update per line)")
	f.BoolVar(&asDOT, "dot", false, "print the graph in Graphviz DOT")
	f.BoolVar(&watch, "watch", false, "follow changes until interrupted")
	f.DurationVar(&interval, "interval", 500*time.Millisecond, "re-scan interval with --watch")
	return cmd
}

func describeChange(c introspect.Change) string {
	if c.Node != nil {
		s := fmt.Sprintf("%s %s", c.Node.ID, c.Node.Label)
		if c.Node.Verdict.Level != "" && c.Node.Verdict.Level != introspect.LevelOK {
			s += fmt.Sprintf(" [%s: %s]", c.Node.Verdict.Level, c.Node.Verdict.Reason)
		}
		return s
	}
	if c.Edge != nil {
		return fmt.Sprintf("edge %s %s → %s (%s)", c.Edge.Kind, c.Edge.From, c.Edge.To, c.Edge.Reason)
	}
	return ""
}

// inspectApp shows the graph the app's OP node reports, polling with
// --watch and printing it again whenever it changes.
func inspectApp(ctx context.Context, a *app, cmd *cobra.Command, name string, watch bool, interval time.Duration,
	render func(*introspect.Graph) error, out io.Writer) error {
	c := a.client(cmd)
	var last []byte
	for {
		d, err := c.App(ctx, name)
		if err != nil {
			return err
		}
		if len(d.Graph) == 0 {
			if !watch {
				return fmt.Errorf("%s is %s: no process tree to inspect (its OP is %q)", name, d.State, d.OP)
			}
		} else if !bytes.Equal(nodesOnly(d.Graph), last) {
			last = nodesOnly(d.Graph)
			var g introspect.Graph
			if err := json.Unmarshal(d.Graph, &g); err != nil {
				return fmt.Errorf("graph of %s: %w", name, err)
			}
			g.BuildIndex()
			if watch {
				fmt.Fprintf(out, "--- %s on %s, %s\n", name, d.OP, time.Now().Format("15:04:05"))
			}
			if err := render(&g); err != nil {
				return err
			}
		}
		if !watch {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(max(interval, 500*time.Millisecond)):
		}
	}
}

// nodesOnly strips the scan's timing fields so that unchanged graphs
// compare equal.
func nodesOnly(raw json.RawMessage) []byte {
	var g struct {
		Nodes json.RawMessage `json:"nodes"`
		Edges json.RawMessage `json:"edges"`
	}
	if json.Unmarshal(raw, &g) != nil {
		return raw
	}
	return append(append([]byte{}, g.Nodes...), g.Edges...)
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"doppel/node/api"
	"doppel/replicate"
)

// socket is the local daemon's API socket: --socket, DOPPEL_SOCKET, then
// config api.socket.
func (a *app) socket(cmd *cobra.Command) string {
	if f := cmd.Flags().Lookup("socket"); f != nil && f.Changed {
		return f.Value.String()
	}
	if s := os.Getenv("DOPPEL_SOCKET"); s != "" {
		return s
	}
	return a.cfg.API.Socket
}

// client talks to the local daemon.
func (a *app) client(cmd *cobra.Command) *api.Client {
	return api.NewClient(a.socket(cmd))
}

func newRunCmd(a *app) *cobra.Command {
	var dir string
	var fl appFlags
	cmd := &cobra.Command{
		Use:   "run NAME [--replicas N] [--interval D] [--data PATH]... [--service LISTEN=TARGET] -- CMD [ARGS...]",
		Short: "Start an application under doppel and replicate it to N clones",
		Long: "Submits the app to the cluster: it runs on this node (unless this node cannot host apps) as the child of a " +
			"small init in a new PID namespace, and is checkpointed every interval to N clones on other nodes. " +
			"--data names files or directories the app writes whose contents travel with every epoch.",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 || cmd.ArgsLenAtDash() != 1 || len(args) < 2 {
				return usageError{fmt.Errorf("run needs one NAME before -- and a command after it: doppel run NAME -- CMD ARGS")}
			}
			return checkName(args[0])
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				wd, err := os.Getwd()
				if err != nil {
					return err
				}
				dir = wd
			}
			abs, err := fl.dataPaths()
			if err != nil {
				return err
			}
			dirAbs, err := filepath.Abs(dir)
			if err != nil {
				return err
			}
			req := api.RunRequest{
				Name: args[0], Args: args[1:], Dir: dirAbs, Env: os.Environ(), DataPaths: abs,
				Replicas: fl.replicas, Interval: api.Duration(fl.interval), Policy: fl.policy, Health: fl.health,
			}
			if req.Service, err = fl.serviceSpec(cmd); err != nil {
				return err
			}
			c := a.client(cmd)
			info, err := c.Run(cmd.Context(), req)
			if err != nil {
				return err
			}
			if info, err = fl.awaitRunning(cmd.Context(), c, info); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s on %s (term %d, %d clone(s) wanted, interval %s)\n",
				info.Name, info.State, info.OP, info.Term, fl.replicas, time.Duration(info.Interval))
			return nil
		},
	}
	fl.bind(cmd)
	cmd.Flags().StringVar(&dir, "dir", "", "working directory (default: the current one)")
	return cmd
}

// waitState polls the app until it reaches one of the states.
func waitState(ctx context.Context, c *api.Client, name string, timeout time.Duration, states ...string) (api.AppInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last api.AppInfo
	for {
		d, err := c.App(ctx, name)
		if err == nil {
			last = d.AppInfo
			for _, s := range states {
				if last.State == s {
					return last, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("%s is %s after %s (see doppel ls and the daemon's log)", name, last.State, timeout)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func checkName(name string) error {
	if err := replicate.ValidName(name); err != nil {
		return usageError{err}
	}
	return nil
}

func nameArg(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usageError{fmt.Errorf("%s needs exactly one app NAME (see doppel ls)", cmd.Name())}
	}
	return checkName(args[0])
}

func newCheckpointCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "checkpoint NAME",
		Short: "Take an epoch of a running application now",
		Args:  nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := a.client(cmd).Checkpoint(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			p := e.Phases
			fmt.Fprintf(cmd.OutOrStdout(), "%s epoch %d: PSB %.1fms RM %.1fms SRM %.1fms PRM %.1fms (frozen %.1fms), %d pages changed of %d, %s stored\n",
				e.App, e.Epoch, p.PSB, p.RM, p.SRM, p.PRM, p.Frozen, e.PagesChanged, e.PagesScanned, humanBytes(e.BytesStored))
			return nil
		},
	}
}

func newRestoreCmd(a *app) *cobra.Command {
	var force bool
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "restore NAME",
		Short: "Restore a stopped application on this node from the newest epoch it holds",
		Args:  nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.client(cmd)
			info, err := c.Restore(cmd.Context(), args[0], 0, force)
			if err != nil {
				return err
			}
			if wait > 0 {
				if info, err = waitState(cmd.Context(), c, info.Name, wait, api.AppRunning); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s on %s (term %d, epoch %d)\n", info.Name, info.State, info.OP, info.Term, info.NewestEpoch)
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "restore here even if the cluster says the app runs elsewhere")
	cmd.Flags().DurationVar(&wait, "wait", 30*time.Second, "wait this long for the app to run (0: return at once)")
	return cmd
}

func newFailoverCmd(a *app) *cobra.Command {
	var to string
	var force bool
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "failover NAME [--to NODE] [--force]",
		Short: "Move an application to a clone now, the way a node failure would",
		Long: "Promotes a clone of the app with a new term (a raft commit): the clone holding the newest acknowledged epoch, " +
			"or --to NODE. The new OP restores the epoch, replays the journal of the app's service and opens it; the old OP, " +
			"if it still runs, kills its copy. Without a raft majority nothing is promoted: --force explains what is possible.",
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.client(cmd)
			if force {
				fmt.Fprintln(cmd.ErrOrStderr(), "doppel: --force: if the cluster has no majority, the app starts on this node on your word that its OP is down; "+
					"if the OP is still up, two copies serve until the majority returns (then one of them is ended)")
			}
			info, err := c.Failover(cmd.Context(), args[0], to, force)
			if err != nil {
				return err
			}
			if wait > 0 {
				if info, err = waitState(cmd.Context(), c, info.Name, wait, api.AppRunning); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s on %s (term %d)\n", info.Name, info.State, info.OP, info.Term)
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "the clone node to promote (default: the one holding the newest epoch)")
	cmd.Flags().BoolVar(&force, "force", false, "the operator vouches that the old OP is down")
	cmd.Flags().DurationVar(&wait, "wait", 60*time.Second, "wait this long for the app to run on its new OP (0: return at once)")
	return cmd
}

func newRelocateCmd(a *app) *cobra.Command {
	var to string
	cmd := &cobra.Command{
		Use:   "relocate NAME --to NODE",
		Short: "Move a running application to another node with the shortest pause (maintenance)",
		Long: "Takes a warm-up epoch while the app runs, then at a barrier (service paused, app frozen) a last epoch whose " +
			"delta goes to NODE, which restores it and opens the service; only then is the source copy gone. If anything " +
			"fails before the switch, the app resumes on its node from that last epoch and nothing is lost.",
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return usageError{fmt.Errorf("relocate needs --to NODE (doppel nodes lists them)")}
			}
			c := a.client(cmd)
			stop := showMove(cmd, c, args[0])
			res, err := c.Relocate(cmd.Context(), args[0], to)
			stop()
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s moved from %s to %s (term %d, epoch %d): pause %.0f ms (source frozen → target serving), %s in the last epoch\n",
				res.App, res.From, res.To, res.Term, res.Epoch, res.PauseMs, humanBytes(res.BytesSent))
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "the node to move the app to")
	return cmd
}

// showMove prints a relocation's phases as the daemon reports them, on a
// terminal.
func showMove(cmd *cobra.Command, c *api.Client, app string) func() {
	bar := newProgressBar(cmd.ErrOrStderr(), "relocate")
	return followEvents(cmd, c, bar, func(ev api.Event) {
		if ev.App != app || (ev.Kind != api.KindRelocation && ev.Kind != api.KindPhase) {
			return
		}
		line := ev.Message
		if ev.Kind == api.KindPhase {
			if !ev.End {
				return
			}
			line = fmt.Sprintf("epoch %d %s %.1f ms", ev.Epoch, ev.Phase, ev.DurationMs)
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "\r\033[K%s %s", time.Now().Format("15:04:05.000"), line)
		bar.drawn = true
	})
}

func newDrainCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "drain NODE",
		Short: "Move every application off a node, one at a time, and mark it not schedulable",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{fmt.Errorf("drain needs exactly one NODE (doppel nodes)")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := a.client(cmd).Drain(cmd.Context(), args[0])
			for _, m := range res.Moves {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s → %s, pause %.0f ms\n", m.App, m.From, m.To, m.PauseMs)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s drained (%d app(s) moved); doppel undrain %s makes it schedulable again\n", args[0], len(res.Moves), args[0])
			return nil
		},
	}
}

func newUndrainCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "undrain NODE",
		Short: "Make a drained node schedulable again",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{fmt.Errorf("undrain needs exactly one NODE")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.client(cmd).Undrain(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s is schedulable\n", args[0])
			return nil
		},
	}
}

func newBalanceCmd(a *app) *cobra.Command {
	var dry bool
	cmd := &cobra.Command{
		Use:   "balance --dry-run",
		Short: "Show what the load balancer would do now",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !dry {
				return usageError{fmt.Errorf("balance only supports --dry-run; the leader balances by itself when balance.enabled is true")}
			}
			p, err := a.client(cmd).Balance(cmd.Context())
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			state := "off (balance.enabled: false)"
			if p.Enabled {
				state = "on"
			}
			fmt.Fprintf(w, "balancer %s\n", state)
			names := make([]string, 0, len(p.Loads))
			for n := range p.Loads {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				fmt.Fprintf(w, "  %-16s load %3.0f%%\n", n, p.Loads[n]*100)
			}
			if p.Move != nil {
				fmt.Fprintf(w, "would move %s from %s to %s: %s\n", p.Move.App, p.Move.From, p.Move.To, p.Move.Reason)
			} else {
				fmt.Fprintf(w, "no move: %s\n", p.Reason)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&dry, "dry-run", false, "print the move the balancer would make now, without making it")
	return cmd
}

func newStopCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "stop NAME",
		Short: "Stop an application everywhere; its epochs stay on the nodes that hold them",
		Args:  nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.client(cmd).Stop(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s stopped\n", args[0])
			return nil
		},
	}
}

func newRmCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove an application from the cluster (stop it first)",
		Args:  nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.client(cmd).Remove(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s removed\n", args[0])
			return nil
		},
	}
}

func newLsCmd(a *app) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the applications of the cluster with their clones",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			apps, err := a.client(cmd).Apps(cmd.Context())
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSON(cmd.OutOrStdout(), apps)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tOP\tTERM\tEPOCH\tAGE\tCLONES\tCOMMAND")
			for _, ai := range apps {
				var clones []string
				for _, c := range ai.Clones {
					s := fmt.Sprintf("%s:%s", c.Node, c.State)
					if c.LagEpochs > 1 {
						s += fmt.Sprintf("(-%d)", c.LagEpochs)
					}
					clones = append(clones, s)
				}
				age := "-"
				if ai.NewestEpoch > 0 {
					age = (time.Duration(ai.NewestEpochAge * float64(time.Second))).Round(time.Second).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", ai.Name, ai.State, dash(ai.OP), ai.Term,
					ai.NewestEpoch, age, dash(strings.Join(clones, " ")), strings.Join(ai.Args, " "))
			}
			return tw.Flush()
		},
	}
	addOutputFlag(cmd, &output)
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newEpochsCmd(a *app) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "epochs NAME",
		Short: "List an application's epochs with their phase times and sizes",
		Args:  nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			eps, err := a.client(cmd).Epochs(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSON(cmd.OutOrStdout(), eps)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "EPOCH\tPARENT\tAGE\tPSB ms\tRM ms\tSRM ms\tPRM ms\tFROZEN ms\tPAGES\tCHANGED\tDATA BLOCKS\tSTORED\t")
			now := time.Now()
			for _, e := range eps {
				p := e.Phases
				fmt.Fprintf(tw, "%d\t%d\t%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%d\t%d\t%d\t%s\t\n",
					e.Epoch, e.Parent, now.Sub(e.Created).Round(time.Second), p.PSB, p.RM, p.SRM, p.PRM, p.Frozen,
					e.PagesScanned, e.PagesChanged, e.DataBlocksChanged, humanBytes(e.BytesStored))
			}
			return tw.Flush()
		},
	}
	addOutputFlag(cmd, &output)
	return cmd
}

func newExportCmd(a *app) *cobra.Command {
	var out string
	var epoch uint64
	cmd := &cobra.Command{
		Use:   "export NAME -o FILE",
		Short: "Hibernate an application: write its newest epoch (or --epoch N) to one portable archive",
		Args:  nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return usageError{fmt.Errorf("export needs -o FILE (the archive to write)")}
			}
			path, err := filepath.Abs(out)
			if err != nil {
				return err
			}
			c := a.client(cmd)
			stop := showProgress(cmd, c, args[0], "export")
			res, err := c.Export(cmd.Context(), args[0], api.ExportRequest{Path: path, Epoch: epoch})
			stop()
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s epoch %d exported to %s (%s, %s before compression)\n",
				res.App, res.Epoch, res.Path, humanBytes(res.Bytes), humanBytes(res.RawBytes))
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "archive file to write")
	cmd.Flags().Uint64Var(&epoch, "epoch", 0, "epoch to export (default: the newest)")
	return cmd
}

func newImportCmd(a *app) *cobra.Command {
	var start bool
	cmd := &cobra.Command{
		Use:   "import FILE [--start]",
		Short: "Register an application from an archive; --start resumes it on this node",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{fmt.Errorf("import needs exactly one archive FILE")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			path, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			if _, err := os.Stat(path); err != nil {
				return err
			}
			c := a.client(cmd)
			stop := showProgress(cmd, c, "", "import")
			res, err := c.Import(cmd.Context(), api.ImportRequest{Path: path, Start: start})
			stop()
			if err != nil {
				return err
			}
			state := "registered (stopped; doppel restore " + res.App + " resumes it)"
			if res.Started {
				state = "resuming on this node"
				if info, err := waitState(cmd.Context(), c, res.App, 30*time.Second, api.AppRunning); err == nil {
					state = fmt.Sprintf("running on %s", info.OP)
				} else {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s epoch %d imported, %s\n", res.App, res.Epoch, state)
			return nil
		},
	}
	cmd.Flags().BoolVar(&start, "start", false, "resume the application on this node right after the import")
	return cmd
}

// showProgress draws an export's or import's progress from the daemon's
// events on a terminal; the returned function stops it.
func showProgress(cmd *cobra.Command, c *api.Client, app, op string) func() {
	bar := newProgressBar(cmd.ErrOrStderr(), op)
	return followEvents(cmd, c, bar, func(ev api.Event) {
		if ev.Kind != api.KindApp || ev.Fields["op"] != op || (app != "" && ev.App != app) {
			return
		}
		d, _ := ev.Fields["done"].(float64)
		t, _ := ev.Fields["total"].(float64)
		bar.update(int64(d), int64(t))
	})
}

// followEvents feeds the daemon's events to show while a command runs, on a
// terminal only; the returned function stops it and ends bar's line.
func followEvents(cmd *cobra.Command, c *api.Client, bar *progressBar, show func(api.Event)) func() {
	if !bar.tty {
		return func() {}
	}
	ctx, cancel := context.WithCancel(cmd.Context())
	w, err := c.Events(ctx)
	if err != nil {
		cancel()
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ev, err := w.Next()
			if err != nil {
				return
			}
			show(ev)
		}
	}()
	return func() {
		cancel()
		w.Close()
		<-done
		bar.done()
	}
}

func newStatusCmd(a *app) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show this node's view of the cluster: leader, quorum, nodes and apps",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := a.client(cmd)
			st, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			nodes, err := c.Nodes(cmd.Context())
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSON(cmd.OutOrStdout(), map[string]any{"status": st, "nodes": nodes})
			}
			w := cmd.OutOrStdout()
			q := "yes"
			if !st.Quorum {
				q = "NO — " + st.QuorumReason
			}
			fmt.Fprintf(w, "node %s (doppel %s), leader %s, quorum %s, %d member(s) alive, %d app(s)\n",
				st.Node, st.Version, dash(st.Leader), q, st.Members, st.Apps)
			var drained []string
			for _, n := range nodes {
				if n.Drained {
					drained = append(drained, n.Name)
				}
			}
			if len(drained) > 0 {
				fmt.Fprintf(w, "drained: %s\n", strings.Join(drained, ", "))
			}
			return nil
		},
	}
	addOutputFlag(cmd, &output)
	return cmd
}

func newNodesCmd(a *app) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "nodes",
		Short: "List the cluster's nodes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			nodes, err := a.client(cmd).Nodes(cmd.Context())
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSON(cmd.OutOrStdout(), nodes)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tROLE\tSTATE\tRAFT\tLOAD\tMEM FREE\tAPPS\tCLONES\tADDR")
			for _, n := range nodes {
				name := n.Name
				if n.Self {
					name += "*"
				}
				st := n.State
				if n.Drained {
					st += ",drained"
				}
				raft := "-"
				switch {
				case n.Leader:
					raft = "leader"
				case n.Voter:
					raft = "voter"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.2f\t%s\t%s\t%s\t%s\n", name, n.Role, st, raft, n.Load,
					humanBytes(int64(n.MemFree)), dash(strings.Join(n.Apps, ",")), dash(strings.Join(n.Clones, ",")), n.Addr)
			}
			return tw.Flush()
		},
	}
	addOutputFlag(cmd, &output)
	return cmd
}

func addOutputFlag(cmd *cobra.Command, output *string) {
	cmd.Flags().StringVarP(output, "output", "o", "table", "table or json")
	cmd.PreRunE = func(*cobra.Command, []string) error {
		if *output != "table" && *output != "json" {
			return usageError{fmt.Errorf("-o %q: use table or json", *output)}
		}
		return nil
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func humanBytes(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

// progressBar draws a one-line bar on a terminal and nothing elsewhere.
type progressBar struct {
	w     io.Writer
	label string
	tty   bool
	start time.Time
	drawn bool
}

func newProgressBar(w io.Writer, label string) *progressBar {
	tty := false
	if f, ok := w.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	return &progressBar{w: w, label: label, tty: tty, start: time.Now()}
}

func (p *progressBar) update(done, total int64) {
	if !p.tty || total <= 0 {
		return
	}
	const width = 30
	frac := float64(done) / float64(total)
	if frac > 1 {
		frac = 1
	}
	n := int(frac * width)
	eta := "?"
	if el := time.Since(p.start); done > 0 {
		eta = (time.Duration(float64(el)/frac) - el).Round(time.Second).String()
	}
	fmt.Fprintf(p.w, "\r%s [%s%s] %3.0f%% %s/%s ETA %s ", p.label, strings.Repeat("=", n), strings.Repeat(" ", width-n),
		frac*100, humanBytes(done), humanBytes(total), eta)
	p.drawn = true
}

func (p *progressBar) done() {
	if p.drawn {
		fmt.Fprintln(p.w)
	}
}

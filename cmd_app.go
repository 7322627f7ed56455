package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"doppel/replicate"
	"doppel/replicate/criu"
	"doppel/replicate/store"
)

// engine opens the replicate engine on this node's state directory.
func (a *app) engine() (*replicate.Engine, error) {
	cfg := replicate.DefaultConfig()
	cfg.StateDir = a.cfg.Node.StateDir
	cfg.CRIU.Path = a.cfg.CRIU.Path
	cfg.CRIU.Prefix = a.cfg.CRIU.Prefix
	cfg.Store.Retention = a.cfg.Checkpoint.Retention
	if err := criu.SetChildSubreaper(); err != nil {
		a.log.Warn("cannot become a child subreaper", "err", err)
	}
	return replicate.New(cfg, a.log)
}

func newRunCmd(a *app) *cobra.Command {
	var data []string
	var dir string
	cmd := &cobra.Command{
		Use:   "run NAME [--data PATH]... -- CMD [ARGS...]",
		Short: "Start an application under doppel, in its own PID namespace",
		Long: "Starts CMD as the child of a small init in a new PID namespace, in a freezer cgroup of its own, " +
			"with stdout and stderr in the app's log files under the state directory. --data names files or " +
			"directories the app writes whose contents travel with every epoch.",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError{fmt.Errorf("run needs a NAME and a command: doppel run NAME -- CMD ARGS")}
			}
			if cmd.ArgsLenAtDash() != 1 || len(args) < 2 {
				return usageError{fmt.Errorf("run needs exactly one NAME before -- and a command after it: doppel run NAME -- CMD ARGS")}
			}
			return replicateName(args[0])
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := a.engine()
			if err != nil {
				return err
			}
			defer e.Close()
			if dir == "" {
				if dir, err = os.Getwd(); err != nil {
					return err
				}
			}
			st, err := e.Run(cmd.Context(), replicate.Spec{
				Name: args[0], Args: args[1:], Dir: dir, Env: os.Environ(), DataPaths: data,
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s running as pid %d (logs: %s)\n", st.Spec.Name, st.Pid, filepath.Dir(st.Stdout))
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&data, "data", nil, "file or directory the app writes, replicated with every epoch (repeatable)")
	cmd.Flags().StringVar(&dir, "dir", "", "working directory (default: the current one)")
	return cmd
}

func replicateName(name string) error {
	if err := replicate.ValidName(name); err != nil {
		return usageError{err}
	}
	return nil
}

func nameArg(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usageError{fmt.Errorf("%s needs exactly one app NAME (see doppel ls)", cmd.Name())}
	}
	return replicateName(args[0])
}

func newCheckpointCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "checkpoint NAME",
		Short: "Take an epoch of a running application now",
		Args:  nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := a.engine()
			if err != nil {
				return err
			}
			defer e.Close()
			var obs replicate.Observer
			if a.cfg.Log.Level == "debug" {
				obs = func(ev replicate.Event) { a.log.Debug("phase", "app", ev.App, "epoch", ev.Epoch, "phase", ev.Phase, "end", ev.End, "took", ev.Duration) }
			}
			ep, err := e.Checkpoint(cmd.Context(), args[0], replicate.CheckpointOptions{Observer: obs})
			if err != nil {
				return err
			}
			m := ep.Manifest
			fmt.Fprintf(cmd.OutOrStdout(), "%s epoch %d: PSB %s RM %s SRM %s PRM %s (frozen %s), %d pages changed of %d, %s stored\n",
				m.App, m.Epoch, ms(m.Phases.PSB), ms(m.Phases.RM), ms(m.Phases.SRM), ms(m.Phases.PRM),
				ms(time.Duration(m.CRIUStats["frozen_time"])*time.Microsecond),
				m.Pages.Changed, m.Pages.Scanned, humanBytes(m.Bytes.Stored))
			return nil
		},
	}
}

func newRestoreCmd(a *app) *cobra.Command {
	var epoch uint64
	var force bool
	cmd := &cobra.Command{
		Use:   "restore NAME [--epoch N]",
		Short: "Restore a stopped application from an epoch (default: the newest)",
		Args:  nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := a.engine()
			if err != nil {
				return err
			}
			defer e.Close()
			st, ep, err := e.Restore(cmd.Context(), args[0], replicate.RestoreOptions{Epoch: epoch, Force: force})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s restored from epoch %d as pid %d\n", st.Spec.Name, ep.Manifest.Epoch, st.Pid)
			return nil
		},
	}
	cmd.Flags().Uint64Var(&epoch, "epoch", 0, "epoch to restore (default: the newest)")
	cmd.Flags().BoolVar(&force, "force", false, "restore even if the epoch was taken with another CRIU version or kernel")
	return cmd
}

func newStopCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "stop NAME",
		Short: "Kill an application's whole process tree (its epochs are kept)",
		Args:  nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := a.engine()
			if err != nil {
				return err
			}
			defer e.Close()
			if err := e.Stop(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s stopped\n", args[0])
			return nil
		},
	}
}

func newLsCmd(a *app) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the applications on this node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, err := a.engine()
			if err != nil {
				return err
			}
			defer e.Close()
			apps, err := e.Apps()
			if err != nil {
				return err
			}
			type row struct {
				Name    string   `json:"name"`
				State   string   `json:"state"`
				Pid     int      `json:"pid"`
				Term    uint64   `json:"term"`
				Epochs  int      `json:"epochs"`
				Newest  uint64   `json:"newest_epoch"`
				Command []string `json:"command"`
			}
			rows := []row{}
			for _, st := range apps {
				r := row{Name: st.Spec.Name, State: "stopped", Term: st.Term, Command: st.Spec.Args}
				if st.Running() {
					r.State, r.Pid = "running", st.Pid
				}
				if ms, err := e.Epochs(st.Spec.Name); err == nil && len(ms) > 0 {
					r.Epochs, r.Newest = len(ms), ms[len(ms)-1].Epoch
				}
				rows = append(rows, r)
			}
			if output == "json" {
				return writeJSON(cmd.OutOrStdout(), rows)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tPID\tTERM\tEPOCHS\tNEWEST\tCOMMAND")
			for _, r := range rows {
				pid := "-"
				if r.Pid > 0 {
					pid = strconv.Itoa(r.Pid)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\n", r.Name, r.State, pid, r.Term, r.Epochs, r.Newest, strings.Join(r.Command, " "))
			}
			return tw.Flush()
		},
	}
	addOutputFlag(cmd, &output)
	return cmd
}

func newEpochsCmd(a *app) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "epochs NAME",
		Short: "List an application's epochs with their phase times and sizes",
		Args:  nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := a.engine()
			if err != nil {
				return err
			}
			defer e.Close()
			if _, err := e.App(args[0]); err != nil {
				return err
			}
			ms, err := e.Epochs(args[0])
			if err != nil {
				return err
			}
			if output == "json" {
				if ms == nil {
					ms = []store.Manifest{}
				}
				return writeJSON(cmd.OutOrStdout(), ms)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "EPOCH\tPARENT\tAGE\tPSB ms\tRM ms\tSRM ms\tPRM ms\tFROZEN ms\tPAGES\tCHANGED\tDATA BLOCKS\tSTORED\t")
			now := time.Now()
			for _, m := range ms {
				fmt.Fprintf(tw, "%d\t%d\t%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%d\t%d\t%d\t%s\t\n",
					m.Epoch, m.Parent, now.Sub(m.Created).Round(time.Second),
					msf(m.Phases.PSB), msf(m.Phases.RM), msf(m.Phases.SRM), msf(m.Phases.PRM),
					float64(m.CRIUStats["frozen_time"])/1000,
					m.Pages.Scanned, m.Pages.Changed, m.Data.BlocksChanged, humanBytes(m.Bytes.Stored))
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
		Short: "Write an application's epoch (default: the newest) to one portable archive",
		Args:  nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return usageError{fmt.Errorf("export needs -o FILE (the archive to write)")}
			}
			e, err := a.engine()
			if err != nil {
				return err
			}
			defer e.Close()
			tmp := out + ".partial"
			f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			defer os.Remove(tmp)
			bar := newProgressBar(cmd.ErrOrStderr(), "export")
			h, err := e.Export(cmd.Context(), args[0], epoch, f, bar.update)
			bar.done()
			if err == nil {
				err = f.Sync()
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			if err := os.Rename(tmp, out); err != nil {
				return err
			}
			fi, _ := os.Stat(out)
			fmt.Fprintf(cmd.OutOrStdout(), "%s epoch %d exported to %s (%s, %s before compression)\n",
				args[0], h.Epoch, out, humanBytes(fi.Size()), humanBytes(h.Bytes))
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "archive file to write")
	cmd.Flags().Uint64Var(&epoch, "epoch", 0, "epoch to export (default: the newest)")
	return cmd
}

func newImportCmd(a *app) *cobra.Command {
	var start, force bool
	cmd := &cobra.Command{
		Use:   "import FILE [--start]",
		Short: "Register an application from an archive; --start restores it at once",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{fmt.Errorf("import needs exactly one archive FILE")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			e, err := a.engine()
			if err != nil {
				return err
			}
			defer e.Close()
			bar := newProgressBar(cmd.ErrOrStderr(), "import")
			st, ep, err := e.Import(cmd.Context(), f, replicate.ImportOptions{Progress: bar.update})
			bar.done()
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s epoch %d imported\n", st.Spec.Name, ep.Manifest.Epoch)
			if !start {
				return nil
			}
			st, _, err = e.Restore(cmd.Context(), st.Spec.Name, replicate.RestoreOptions{Force: force})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s running as pid %d\n", st.Spec.Name, st.Pid)
			return nil
		},
	}
	cmd.Flags().BoolVar(&start, "start", false, "restore the application right after the import")
	cmd.Flags().BoolVar(&force, "force", false, "with --start: restore even if CRIU version or kernel differ")
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

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", msf(d)) }

func msf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

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

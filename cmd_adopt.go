package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"doppel/node/api"
)

func newAdoptCmd(a *app) *cobra.Command {
	var pid int
	var name string
	var data []string
	var replicas int
	var interval time.Duration
	var wait time.Duration
	var service, framing, journalMode, policy, health, vipAddr, vipDev string
	cmd := &cobra.Command{
		Use:   "adopt --pid N [--name NAME] [--replicas N] [--interval D] [--data PATH]... [--service LISTEN=TARGET]",
		Short: "Take a running process tree under doppel and replicate it like run does",
		Long: "Checkpoints the process tree rooted at PID N (started without doppel, on the machine of the local daemon), " +
			"restores it at once into a new PID namespace under doppel's init, where every process keeps its PID, and " +
			"registers it as an app of this node, as run would. If anything fails after the checkpoint, the tree is put " +
			"back as it was. The name defaults to the process's command name. Its standard output and error stay where " +
			"they were when they are files.",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("adopt takes no arguments: doppel adopt --pid N [--name NAME]")}
			}
			if !cmd.Flags().Changed("pid") {
				return usageError{fmt.Errorf("adopt needs the process: doppel adopt --pid N (see ps)")}
			}
			if pid <= 1 {
				return usageError{fmt.Errorf("--pid %d: give the PID of a running process other than init", pid)}
			}
			if name != "" {
				return checkName(name)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			abs := make([]string, 0, len(data))
			for _, p := range data {
				ap, err := filepath.Abs(p)
				if err != nil {
					return err
				}
				abs = append(abs, ap)
			}
			req := api.AdoptRequest{
				Pid: pid, Name: name, DataPaths: abs,
				Replicas: replicas, Interval: api.Duration(interval), Policy: policy, Health: health,
			}
			if service != "" {
				listen, target, ok := strings.Cut(service, "=")
				if !ok || listen == "" || target == "" {
					return usageError{fmt.Errorf("--service %q: use LISTEN=TARGET, e.g. :7000=127.0.0.1:8000", service)}
				}
				req.Service = &api.Service{Listen: listen, Target: target, Framing: framing, Journal: journalMode, VIP: vipAddr, VIPDev: vipDev}
			} else if cmd.Flags().Changed("framing") || cmd.Flags().Changed("journal") || vipAddr != "" {
				return usageError{fmt.Errorf("--framing, --journal and --vip need --service LISTEN=TARGET")}
			}
			c := a.client(cmd)
			info, err := c.Adopt(cmd.Context(), req)
			if err != nil {
				return err
			}
			if wait > 0 {
				if info, err = waitState(cmd.Context(), c, info.Name, wait, api.AppRunning); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pid %d adopted: %s %s on %s (init pid %d, term %d, %d clone(s) wanted, interval %s)\n",
				pid, info.Name, info.State, info.OP, info.Pid, info.Term, replicas, time.Duration(info.Interval))
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&pid, "pid", 0, "root of the process tree to adopt")
	f.StringVar(&name, "name", "", "app name (default: the process's command name)")
	f.StringArrayVar(&data, "data", nil, "file or directory the app writes, replicated with every epoch (repeatable)")
	f.IntVar(&replicas, "replicas", 1, "number of clones on other nodes")
	f.DurationVar(&interval, "interval", 0, "time between epochs (default: checkpoint.interval)")
	f.DurationVar(&wait, "wait", 30*time.Second, "wait this long for the app to run (0: return at once)")
	f.StringVar(&service, "service", "", "LISTEN=TARGET: clients connect to LISTEN on the OP node, doppel journals their messages and forwards them to the app at TARGET")
	f.StringVar(&framing, "framing", "line", "how the service cuts messages: line, len32 or raw")
	f.StringVar(&journalMode, "journal", "sync", "service journal: sync (forward once a clone stored it), async, or off")
	f.StringVar(&health, "health", "", "health check: tcp:HOST:PORT, http://HOST:PORT/PATH or cmd:COMMAND; 3 failures in a row count as the app dying")
	f.StringVar(&vipAddr, "vip", "", "floating service address ADDR/PREFIX moved with the OP (needs --vip-dev)")
	f.StringVar(&vipDev, "vip-dev", "", "network device of each node that carries the --vip address")
	f.StringVar(&policy, "policy", "restart", "when the app dies by itself: restart (restore it from its newest epoch), failover (promote a clone), none")
	return cmd
}

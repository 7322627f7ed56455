package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"doppel/node/api"
)

func newAdoptCmd(a *app) *cobra.Command {
	var pid int
	var name string
	var fl appFlags
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
			abs, err := fl.dataPaths()
			if err != nil {
				return err
			}
			req := api.AdoptRequest{
				Pid: pid, Name: name, DataPaths: abs,
				Replicas: fl.replicas, Interval: api.Duration(fl.interval), Policy: fl.policy, Health: fl.health,
			}
			if req.Service, err = fl.serviceSpec(cmd); err != nil {
				return err
			}
			c := a.client(cmd)
			info, err := c.Adopt(cmd.Context(), req)
			if err != nil {
				return err
			}
			if info, err = fl.awaitRunning(cmd.Context(), c, info); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pid %d adopted: %s %s on %s (init pid %d, term %d, %d clone(s) wanted, interval %s)\n",
				pid, info.Name, info.State, info.OP, info.Pid, info.Term, fl.replicas, time.Duration(info.Interval))
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&pid, "pid", 0, "root of the process tree to adopt")
	f.StringVar(&name, "name", "", "app name (default: the process's command name)")
	fl.bind(cmd)
	return cmd
}

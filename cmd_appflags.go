package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"doppel/node/api"
)

// appFlags are the flags run and adopt share: where the app's data is,
// how it is replicated and supervised, and its service.
type appFlags struct {
	data                                                           []string
	replicas                                                       int
	interval, wait                                                 time.Duration
	service, framing, journalMode, policy, health, vipAddr, vipDev string
}

func (p *appFlags) bind(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringArrayVar(&p.data, "data", nil, "file or directory the app writes, replicated with every epoch (repeatable)")
	f.IntVar(&p.replicas, "replicas", 1, "number of clones on other nodes")
	f.DurationVar(&p.interval, "interval", 0, "time between epochs (default: checkpoint.interval)")
	f.DurationVar(&p.wait, "wait", 30*time.Second, "wait this long for the app to run (0: return at once)")
	f.StringVar(&p.service, "service", "", "LISTEN=TARGET: clients connect to LISTEN on the OP node, doppel journals their messages and forwards them to the app at TARGET")
	f.StringVar(&p.framing, "framing", "line", "how the service cuts messages: line, len32 or raw")
	f.StringVar(&p.journalMode, "journal", "sync", "service journal: sync (forward once a clone stored it), async, or off")
	f.StringVar(&p.health, "health", "", "health check: tcp:HOST:PORT, http://HOST:PORT/PATH or cmd:COMMAND; 3 failures in a row count as the app dying")
	f.StringVar(&p.vipAddr, "vip", "", "floating service address ADDR/PREFIX moved with the OP (needs --vip-dev)")
	f.StringVar(&p.vipDev, "vip-dev", "", "network device of each node that carries the --vip address")
	f.StringVar(&p.policy, "policy", "restart", "when the app dies by itself: restart (restore it from its newest epoch), failover (promote a clone), none")
}

// dataPaths are the --data paths made absolute.
func (p *appFlags) dataPaths() ([]string, error) {
	abs := make([]string, 0, len(p.data))
	for _, d := range p.data {
		ap, err := filepath.Abs(d)
		if err != nil {
			return nil, err
		}
		abs = append(abs, ap)
	}
	return abs, nil
}

// serviceSpec is the --service and its options, nil without --service.
func (p *appFlags) serviceSpec(cmd *cobra.Command) (*api.Service, error) {
	if p.service == "" {
		if cmd.Flags().Changed("framing") || cmd.Flags().Changed("journal") || p.vipAddr != "" {
			return nil, usageError{fmt.Errorf("--framing, --journal and --vip need --service LISTEN=TARGET")}
		}
		return nil, nil
	}
	listen, target, ok := strings.Cut(p.service, "=")
	if !ok || listen == "" || target == "" {
		return nil, usageError{fmt.Errorf("--service %q: use LISTEN=TARGET, e.g. :7000=127.0.0.1:8000", p.service)}
	}
	return &api.Service{Listen: listen, Target: target, Framing: p.framing, Journal: p.journalMode, VIP: p.vipAddr, VIPDev: p.vipDev}, nil
}

// awaitRunning waits up to --wait for the app to run (not at all with
// --wait 0).
func (p *appFlags) awaitRunning(ctx context.Context, c *api.Client, info api.AppInfo) (api.AppInfo, error) {
	if p.wait <= 0 {
		return info, nil
	}
	return waitState(ctx, c, info.Name, p.wait, api.AppRunning)
}

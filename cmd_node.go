package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"doppel/failover"
	"doppel/node"
	"doppel/node/peer"
	"doppel/replicate"
)

func newNodeCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node [--name N] [--bind ADDR] [--join ADDR,...] [--role worker|witness] [--state-dir DIR]",
		Short: "Run this machine's doppel daemon (foreground)",
		Long: "Runs the node daemon in the foreground: it joins the cluster (or starts one when --join is empty), " +
			"runs and checkpoints the apps placed on it, holds clones of others, and serves the local API. " +
			"SIGTERM stops it cleanly; the apps keep running.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := a.cfg
			key, err := peer.LoadKey(c.Node.KeyFile, a.log)
			if err != nil {
				return usageError{fmt.Errorf("%w (create one with: doppel init, then copy %s to every node)", err, c.Node.KeyFile)}
			}
			nc := node.DefaultConfig()
			if c.Node.Name != "" {
				nc.Name = c.Node.Name
			}
			nc.Role = c.Node.Role
			nc.Priority = c.Node.Priority
			nc.BindIP = c.Node.Bind
			nc.GossipPort, nc.RaftPort, nc.PeerPort = c.Ports.Gossip, c.Ports.Raft, c.Ports.Peer
			nc.Join = c.Node.Join
			nc.StateDir = c.Node.StateDir
			nc.Socket = a.socket(cmd)
			nc.Key = key
			nc.Preset = c.Node.Preset
			if nc.Preset == "fast" {
				// Failure detection is about a second: an OP cut off for
				// a second stops serving; a promoted clone serves only
				// once the old OP's lease has run out (see node/lease.go).
				nc.FenceLease = time.Second
			}
			nc.MetricsListen = c.Metrics.Listen
			nc.RateLimit = c.Transfer.RateLimit
			nc.Interval = c.Checkpoint.Interval
			nc.Engine = replicate.DefaultConfig()
			nc.Engine.CRIU.Path = c.CRIU.Path
			nc.Engine.CRIU.Prefix = c.CRIU.Prefix
			nc.Engine.Store.Retention = c.Checkpoint.Retention
			nc.Engine.NoStandby = !c.Checkpoint.Standby
			nc.Balance.Enabled = c.Balance.Enabled
			nc.Balance.Config = failover.BalanceConfig{High: c.Balance.High, Low: c.Balance.Low, Window: c.Balance.Window, MinInterval: c.Balance.MinInterval}
			nc.Version = version
			nc.Logger = a.log
			if err := nc.Validate(); err != nil {
				return usageError{err}
			}
			n, err := node.New(nc)
			if err != nil {
				return err
			}
			return n.Serve(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.String("name", "", "node name (config node.name; default: host name)")
	f.String("bind", "", "IP address to listen on (config node.bind)")
	f.StringSlice("join", nil, "nodes to join, IP or IP:PORT, comma-separated (config node.join)")
	f.String("role", "", "worker or witness (config node.role)")
	f.Int("priority", 0, "preference of this node when a clone is promoted, higher first (config node.priority)")
	f.String("preset", "", "failure detection and raft timing: lan or fast (config node.preset)")
	f.String("key-file", "", "cluster key (config node.key_file)")
	f.Int("gossip-port", 0, "gossip port (config ports.gossip)")
	f.Int("raft-port", 0, "raft port (config ports.raft)")
	f.Int("peer-port", 0, "peer stream port (config ports.peer)")
	f.String("metrics", "", "Prometheus /metrics address (config metrics.listen)")
	f.Int64("rate-limit", 0, "bytes per second sent to clones at most (config transfer.rate_limit)")
	return cmd
}

// nodeFlagKeys binds doppel node's flags to configuration keys.
var nodeFlagKeys = map[string]string{
	"name":        "node.name",
	"bind":        "node.bind",
	"join":        "node.join",
	"role":        "node.role",
	"priority":    "node.priority",
	"preset":      "node.preset",
	"key-file":    "node.key_file",
	"gossip-port": "ports.gossip",
	"raft-port":   "ports.raft",
	"peer-port":   "ports.peer",
	"metrics":     "metrics.listen",
	"rate-limit":  "transfer.rate_limit",
}

func newInitCmd(a *app) *cobra.Command {
	var force bool
	var configOut string
	cmd := &cobra.Command{
		Use:   "init [--key-file FILE] [--write-config FILE] [--force]",
		Short: "Create the cluster key (and a configuration file) for a new cluster",
		Long: "Creates a new random cluster key in node.key_file (mode 0600). Every node of the cluster needs the same key: " +
			"copy the file to each of them. Gossip is encrypted with it, and raft and peer streams trust only nodes that hold it.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := a.cfg.Node.KeyFile
			if f := cmd.Flags().Lookup("key-file"); f.Changed {
				path = f.Value.String()
			}
			key, err := peer.NewKey()
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				return err
			}
			if err := key.Save(path, force); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "cluster key written to %s (fingerprint %s)\n", path, key.Fingerprint())
			if configOut != "" {
				if _, err := os.Stat(configOut); err == nil && !force {
					return fmt.Errorf("%s exists (use --force to overwrite)", configOut)
				}
				if err := os.MkdirAll(filepath.Dir(configOut), 0o755); err != nil {
					return err
				}
				body := fmt.Sprintf("# doppel configuration written by doppel init; see config.example.yaml for every key.\nnode:\n  key_file: %s\n  state_dir: %s\n  bind: %s\n", path, a.cfg.Node.StateDir, guessBind())
				if err := os.WriteFile(configOut, []byte(body), 0o644); err != nil {
					return err
				}
				fmt.Fprintf(w, "configuration written to %s\n", configOut)
			}
			fmt.Fprintf(w, "next: copy %s to every node, then run there: doppel node --join <this node's address>\n", path)
			return nil
		},
	}
	cmd.Flags().String("key-file", "", "where to write the key (config node.key_file)")
	cmd.Flags().BoolVar(&force, "force", false, "overwrite an existing key (nodes with the old key can no longer join)")
	cmd.Flags().StringVar(&configOut, "write-config", "", "also write a configuration file here (e.g. /etc/doppel/config.yaml)")
	return cmd
}

// guessBind picks this host's first non-loopback IPv4 address for a fresh
// configuration, or 0.0.0.0.
func guessBind() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
				return ipn.IP.String()
			}
		}
	}
	return "0.0.0.0"
}

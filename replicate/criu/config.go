package criu

import (
	"fmt"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
)

// Network lock methods CRIU can use to keep the peers of a dumped TCP
// connection from seeing a reset while the tree is frozen or gone.
const (
	NetworkLockNftables = "nftables"
	NetworkLockIptables = "iptables"
	NetworkLockSkip     = "skip"
)

// Config is how doppel runs CRIU. It holds node-wide settings; what changes
// per call is in DumpOptions and RestoreOptions.
type Config struct {
	// Path is the CRIU binary (or its wrapper script). Empty means Locate:
	// Prefix/bin/criu, then criu on PATH.
	Path string
	// Prefix is the private CRIU installation searched when Path is
	// empty; empty means DefaultPrefix.
	Prefix string
	// LogLevel is CRIU's verbosity, 0 (none) to 4 (debug). Error lines,
	// which a failed call reports, need at least 1.
	LogLevel int
	// TCPEstablished dumps established TCP connections in repair mode so
	// that they survive a restore (--tcp-established). Restore needs the
	// same local addresses to exist.
	TCPEstablished bool
	// TCPSkipInFlight drops half-open connections that have not been
	// accepted yet instead of failing the dump (--skip-in-flight); their
	// clients see a reset and reconnect.
	TCPSkipInFlight bool
	// NetworkLock is how CRIU keeps peers out while connections are being
	// dumped and restored: "nftables" (default; libnftables, no nft binary
	// needed), "iptables" or "skip".
	NetworkLock string
	// ExtUnixSk allows unix sockets connected to peers outside the tree
	// (syslog, D-Bus, ...) (--ext-unix-sk).
	ExtUnixSk bool
	// FileLocks dumps and restores flock/posix locks (--file-locks).
	FileLocks bool
	// ShellJob allows a tree whose session or process group leader is
	// outside it, or that has a controlling terminal (--shell-job). Trees
	// started by replicate/shim are their own session and need not set it.
	ShellJob bool
	// OrphanPtsMaster lets a restored tree whose terminal master was
	// outside it get a fresh master (--orphan-pts-master).
	OrphanPtsMaster bool
	// LinkRemap lets CRIU dump open files that were unlinked but still
	// have a hard link elsewhere (--link-remap).
	LinkRemap bool
	// FreezeTimeout bounds how long CRIU waits for the tree to stop
	// (--timeout). Zero means CRIU's default (10s); CRIU counts in whole
	// seconds, rounded up.
	FreezeTimeout time.Duration
}

// DefaultConfig returns the settings doppel uses unless configured
// otherwise. Every field is set here on purpose.
func DefaultConfig() Config {
	return Config{
		Path:   "", // locate: DefaultPrefix/bin/criu, then PATH
		Prefix: "", // DefaultPrefix
		// Warnings and errors: enough to explain a failure without
		// slowing the dump with debug output.
		LogLevel: 2,
		// Established connections of the app survive a failover.
		TCPEstablished: true,
		// A connection still in the accept queue must not fail an epoch.
		TCPSkipInFlight: true,
		// iptables' CRIU lock needs the iptables binaries; nftables works
		// through libnftables (DESIGN, platform facts).
		NetworkLock: NetworkLockNftables,
		// Apps commonly talk to syslog or other local daemons.
		ExtUnixSk: true,
		// Apps that lock their data files keep the locks.
		FileLocks: true,
		// replicate/shim makes the app its own session leader.
		ShellJob:        false,
		OrphanPtsMaster: false,
		LinkRemap:       false,
		FreezeTimeout:   0, // CRIU's default
	}
}

// networkLockMethod maps Config.NetworkLock to CRIU's RPC enum.
func networkLockMethod(s string) (rpc.CriuNetworkLockMethod, error) {
	switch s {
	case "", NetworkLockNftables:
		return rpc.CriuNetworkLockMethod_NFTABLES, nil
	case NetworkLockIptables:
		return rpc.CriuNetworkLockMethod_IPTABLES, nil
	case NetworkLockSkip:
		return rpc.CriuNetworkLockMethod_SKIP, nil
	}
	return 0, fmt.Errorf("criu network lock %q: want %s, %s or %s", s,
		NetworkLockNftables, NetworkLockIptables, NetworkLockSkip)
}

// Validate reports a setting CRIU would reject.
func (c Config) Validate() error {
	if c.LogLevel < 0 || c.LogLevel > 4 {
		return fmt.Errorf("criu log level %d: want 0..4", c.LogLevel)
	}
	if _, err := networkLockMethod(c.NetworkLock); err != nil {
		return err
	}
	if c.FreezeTimeout < 0 {
		return fmt.Errorf("criu freeze timeout %v: negative", c.FreezeTimeout)
	}
	return nil
}

// rpcOpts returns the CRIU options common to every request.
func (c Config) rpcOpts() (*rpc.CriuOpts, error) {
	lock, err := networkLockMethod(c.NetworkLock)
	if err != nil {
		return nil, err
	}
	o := &rpc.CriuOpts{
		LogLevel:        ptr(int32(c.LogLevel)),
		TcpEstablished:  ptr(c.TCPEstablished),
		TcpSkipInFlight: ptr(c.TCPSkipInFlight),
		NetworkLock:     ptr(lock),
		ExtUnixSk:       ptr(c.ExtUnixSk),
		FileLocks:       ptr(c.FileLocks),
		ShellJob:        ptr(c.ShellJob),
		OrphanPtsMaster: ptr(c.OrphanPtsMaster),
		LinkRemap:       ptr(c.LinkRemap),
	}
	if c.FreezeTimeout > 0 {
		o.Timeout = ptr(uint32((c.FreezeTimeout + time.Second - 1) / time.Second))
	}
	return o, nil
}

func ptr[T any](v T) *T { return &v }

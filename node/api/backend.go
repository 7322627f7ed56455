package api

import "context"

// Backend is what the daemon implements behind the local API. Every method
// may be called from many goroutines at once and must return when ctx ends
// (the server cancels ctx when the client goes away). Errors that wrap
// ErrNotFound, ErrBadRequest, ErrConflict or ErrUnavailable reach the client
// with that code; any other error is reported as internal with its message.
type Backend interface {
	// Status is this node's view of the cluster.
	Status(ctx context.Context) (Status, error)
	// Nodes lists the cluster's members, this node included.
	Nodes(ctx context.Context) ([]NodeInfo, error)
	// Apps lists every app in the cluster state.
	Apps(ctx context.Context) ([]AppInfo, error)
	// App describes one app; an unknown name wraps ErrNotFound.
	App(ctx context.Context, name string) (AppDetail, error)
	// Epochs lists an app's epochs, oldest first; an unknown app wraps
	// ErrNotFound.
	Epochs(ctx context.Context, name string) ([]EpochInfo, error)
	// Run registers and starts an app. The request has passed the server's
	// validation (name, non-empty args, absolute paths, no negative
	// numbers). An existing app wraps ErrConflict.
	Run(ctx context.Context, req RunRequest) (AppInfo, error)
	// Adopt makes a process tree of this node's machine an app running
	// here (see AdoptRequest), validated like Run's request. A process that
	// cannot be adopted wraps ErrBadRequest, an existing app ErrConflict.
	Adopt(ctx context.Context, req AdoptRequest) (AppInfo, error)
	// Checkpoint takes an epoch of a running app now and returns it once
	// committed.
	Checkpoint(ctx context.Context, name string) (EpochInfo, error)
	// Restore starts the app from an epoch (0: the newest). An app that
	// runs wraps ErrConflict unless force is set.
	Restore(ctx context.Context, name string, epoch uint64, force bool) (AppInfo, error)
	// Failover moves the app to a clone now, as after a failure: to the
	// named node, or to the clone holding the newest epoch. force promotes
	// even without a raft majority (the operator vouches that the old OP
	// is down). An unknown app wraps ErrNotFound; no eligible clone wraps
	// ErrConflict; no quorum without force wraps ErrUnavailable.
	Failover(ctx context.Context, name, to string, force bool) (AppInfo, error)
	// Relocate moves an app to node to with the shortest pause; an unknown
	// app wraps ErrNotFound, a target that cannot take it (unknown, dead,
	// drained, witness) or a move already running wraps ErrConflict.
	Relocate(ctx context.Context, name, to string) (RelocateResult, error)
	// Drain marks a node not schedulable and moves each app it runs, one
	// at a time; Undrain reverses the mark.
	Drain(ctx context.Context, node string) (DrainResult, error)
	Undrain(ctx context.Context, node string) error
	// Probe measures the link from this node to node over the peer
	// transport, sending size bytes (see ProbeResult); an unknown node
	// wraps ErrNotFound, a dead one or this node itself ErrConflict.
	Probe(ctx context.Context, node string, size int64) (ProbeResult, error)
	// Balance returns the move the balancer would make now.
	Balance(ctx context.Context) (BalancePlan, error)
	// Stop stops a running app, keeping its epochs and clones.
	Stop(ctx context.Context, name string) error
	// Remove forgets a stopped app, its epochs and clones.
	Remove(ctx context.Context, name string) error
	// Export writes an app's epoch to an archive file; an unknown app
	// wraps ErrNotFound.
	Export(ctx context.Context, name string, req ExportRequest) (ExportResult, error)
	// Import registers an app from an archive file; an app that exists
	// wraps ErrConflict.
	Import(ctx context.Context, req ImportRequest) (ImportResult, error)
	// Subscribe returns live events, in order, until ctx ends; the backend
	// closes the channel after ctx ends (or earlier if it stops, which ends
	// the clients' streams). Events emitted after Subscribe returns must be
	// delivered. The server drains the channel promptly, but a backend must
	// not let a slow subscriber block the daemon (drop or buffer).
	Subscribe(ctx context.Context) (<-chan Event, error)
}

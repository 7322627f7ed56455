package criu

import (
	"context"
	"fmt"
	"sync"
	"time"

	gocriu "github.com/checkpoint-restore/go-criu/v8"
)

// Names of CRIU's notifications, as they appear in Event.Name.
const (
	EventPreDump             = "pre-dump"
	EventPostDump            = "post-dump"
	EventNetworkLock         = "network-lock"
	EventNetworkUnlock       = "network-unlock"
	EventPreRestore          = "pre-restore"
	EventPostRestore         = "post-restore"
	EventSetupNamespaces     = "setup-namespaces"
	EventPostSetupNamespaces = "post-setup-namespaces"
	EventPostResume          = "post-resume"
)

// Hooks are called at CRIU's notification points. Each runs on the
// goroutine of the Dump or Restore call and holds CRIU until it returns, so
// it must be quick. A non-nil error aborts the operation: a dump aborted
// before it finished thaws the tree and leaves it running. Nil hooks are
// skipped.
//
// Order for a dump: PreDump (before CRIU freezes the tree: the start of the
// barrier; DumpResult.Barrier adds CRIU's freezing time to it), PostDump
// (images written, tree still frozen). With LeaveRunning the tree is thawed
// after PostDump and before Dump returns, so an ingress proxy paused in
// PreDump resumes when Dump returns. For a restore:
// PreRestore, SetupNamespaces, PostSetupNamespaces, PostRestore (tree
// created, not yet running), PostResume (tree running). NetworkLock and
// NetworkUnlock come only for trees with a network namespace of their own;
// trees in the host's (as replicate/shim starts them) get each TCP
// connection locked by CRIU instead, without a notification.
type Hooks struct {
	PreDump             func() error
	PostDump            func() error
	NetworkLock         func() error
	NetworkUnlock       func() error
	PreRestore          func() error
	SetupNamespaces     func(pid int) error
	PostSetupNamespaces func() error
	// PostRestore receives the restored root's PID in the caller's PID
	// namespace.
	PostRestore func(pid int) error
	PostResume  func() error
}

// Event is one notification CRIU sent during an operation.
type Event struct {
	// Name is CRIU's name for it (EventPreDump, ...).
	Name string
	// At is when it arrived, counted from the start of the call.
	At time.Duration
	// Hook is how long the hook took; CRIU waited that long.
	Hook time.Duration
}

// Events is the timeline of one operation, in arrival order.
type Events []Event

// At returns when the first event called name arrived.
func (ev Events) At(name string) (time.Duration, bool) {
	for _, e := range ev {
		if e.Name == name {
			return e.At, true
		}
	}
	return 0, false
}

// Between returns the time from the first event from to the first event to
// after it; ok is false when either is missing.
func (ev Events) Between(from, to string) (d time.Duration, ok bool) {
	a, ok1 := ev.At(from)
	b, ok2 := ev.At(to)
	if !ok1 || !ok2 || b < a {
		return 0, false
	}
	return b - a, true
}

// notifier adapts Hooks to go-criu's Notify, timing every notification
// and turning a cancelled context into an abort at the next one.
type notifier struct {
	gocriu.NoNotify

	ctx   context.Context
	hooks Hooks
	start time.Time

	mu      sync.Mutex
	events  Events
	pid     int   // from post-restore
	hookErr error // first error a hook (or the context) returned
}

var _ gocriu.Notify = (*notifier)(nil)

func newNotifier(ctx context.Context, h Hooks, start time.Time) *notifier {
	return &notifier{ctx: ctx, hooks: h, start: start}
}

func (n *notifier) run(name string, f func() error) error {
	at := time.Since(n.start)
	var err error
	if cerr := n.ctx.Err(); cerr != nil {
		err = fmt.Errorf("%s: %w", name, cerr)
	} else if f != nil {
		if err = f(); err != nil {
			err = fmt.Errorf("%s hook: %w", name, err)
		}
	}
	n.mu.Lock()
	n.events = append(n.events, Event{Name: name, At: at, Hook: time.Since(n.start) - at})
	if err != nil && n.hookErr == nil {
		n.hookErr = err
	}
	n.mu.Unlock()
	return err
}

func (n *notifier) result() (Events, int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append(Events(nil), n.events...), n.pid, n.hookErr
}

func (n *notifier) PreDump() error       { return n.run(EventPreDump, n.hooks.PreDump) }
func (n *notifier) PostDump() error      { return n.run(EventPostDump, n.hooks.PostDump) }
func (n *notifier) NetworkLock() error   { return n.run(EventNetworkLock, n.hooks.NetworkLock) }
func (n *notifier) NetworkUnlock() error { return n.run(EventNetworkUnlock, n.hooks.NetworkUnlock) }
func (n *notifier) PreRestore() error    { return n.run(EventPreRestore, n.hooks.PreRestore) }
func (n *notifier) PostResume() error    { return n.run(EventPostResume, n.hooks.PostResume) }

func (n *notifier) PostSetupNamespaces() error {
	return n.run(EventPostSetupNamespaces, n.hooks.PostSetupNamespaces)
}

func (n *notifier) SetupNamespaces(pid int32) error {
	return n.run(EventSetupNamespaces, bindPid(n.hooks.SetupNamespaces, int(pid)))
}

func (n *notifier) PostRestore(pid int32) error {
	n.mu.Lock()
	n.pid = int(pid)
	n.mu.Unlock()
	return n.run(EventPostRestore, bindPid(n.hooks.PostRestore, int(pid)))
}

func bindPid(f func(int) error, pid int) func() error {
	if f == nil {
		return nil
	}
	return func() error { return f(pid) }
}

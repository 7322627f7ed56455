package tui

import (
	"context"

	"doppel/node/api"
)

// Source is the part of a daemon's local API the dashboard uses. Every
// method may be called from several goroutines at once and returns when
// ctx ends. *api.Client provides it through NewClientSource; tests may
// provide their own.
type Source interface {
	Status(ctx context.Context) (api.Status, error)
	Nodes(ctx context.Context) ([]api.NodeInfo, error)
	Apps(ctx context.Context) ([]api.AppInfo, error)
	App(ctx context.Context, name string) (api.AppDetail, error)
	Epochs(ctx context.Context, name string) ([]api.EpochInfo, error)
	Checkpoint(ctx context.Context, name string) (api.EpochInfo, error)
	Restore(ctx context.Context, name string, epoch uint64, force bool) (api.AppInfo, error)
	Stop(ctx context.Context, name string) error
	Relocate(ctx context.Context, name, to string) (api.RelocateResult, error)
	Failover(ctx context.Context, name, to string, force bool) (api.AppInfo, error)
	Drain(ctx context.Context, node string) (api.DrainResult, error)
	Undrain(ctx context.Context, node string) error
	// Events opens the event stream; it ends when ctx ends or the stream
	// is closed.
	Events(ctx context.Context) (EventStream, error)
}

// EventStream is an open event stream. Next blocks until the next event
// and its errors are final (see api.Watcher.Next); Close may be called
// from any goroutine, more than once, and makes a blocked Next return.
type EventStream interface {
	Next() (api.Event, error)
	Close() error
}

// clientSource adapts *api.Client to Source.
type clientSource struct {
	*api.Client
}

// NewClientSource returns a Source talking to the daemon at socket.
func NewClientSource(socket string) Source {
	return clientSource{api.NewClient(socket)}
}

// Events implements Source.
func (c clientSource) Events(ctx context.Context) (EventStream, error) {
	w, err := c.Client.Events(ctx)
	if err != nil {
		return nil, err
	}
	return w, nil
}

var _ Source = clientSource{}

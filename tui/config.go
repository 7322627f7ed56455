package tui

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"
)

// Endpoint is one daemon the dashboard can attach to: its local API socket
// and, when known in advance, the name of its node.
type Endpoint struct {
	Node   string
	Socket string
}

// Demo is the supervisor of `doppel demo`, which the dashboard calls back
// into for what the local API does not offer: simulating a node failure.
// Its methods are called from commands (other goroutines) and must be safe
// for concurrent use.
type Demo interface {
	// KillNode simulates the failure of node: its daemon and the apps it
	// runs are killed at once (SIGKILL). It returns a one-line account of
	// what it did. It must return within ctx.
	KillNode(ctx context.Context, node string) (string, error)
	// Hint is a one-line list of things to try, shown while idle.
	Hint() string
}

// Config configures the dashboard. Start from DefaultConfig.
type Config struct {
	// Endpoints are the daemons the dashboard can attach to; it attaches
	// to the first. Outside the demo there is one: the local daemon.
	Endpoints []Endpoint
	// Dial returns the Source for a socket; nil means NewClientSource.
	Dial func(socket string) Source
	// Demo enables the demo's keys (kill a node); nil outside the demo.
	Demo Demo
	// Logger receives the dashboard's log; it must not write to the
	// terminal the dashboard draws on. Nil discards.
	Logger *slog.Logger
	// NoColor draws without colours (bold, reverse and glyphs only).
	// DefaultConfig sets it when the NO_COLOR environment variable is set
	// to anything but the empty string.
	NoColor bool
	// Now is the clock; tests fix it.
	Now func() time.Time

	// PollNodes is how often node load and memory are refreshed (the event
	// stream does not carry them).
	PollNodes time.Duration
	// PollApps is how often the app list is refreshed besides the events
	// that change it (clone lag and ages drift without events).
	PollApps time.Duration
	// PollGraph is how often the resource graph of the selected app is
	// refreshed while it is on screen.
	PollGraph time.Duration
	// ReconnectMin and ReconnectMax bound the exponential backoff between
	// attempts to reach a daemon that went away.
	ReconnectMin, ReconnectMax time.Duration
	// RequestTimeout bounds every API request but actions.
	RequestTimeout time.Duration
	// ActionTimeout bounds an action (checkpoint, stop, restore) and the
	// wait for its effect.
	ActionTimeout time.Duration
	// Frame is the animation period of a checkpoint in progress.
	Frame time.Duration
	// EventLog is the number of events the log keeps.
	EventLog int
	// Epochs is the number of epochs the checkpoint pane keeps per app.
	Epochs int
}

// DefaultConfig attaches to the daemon at socket.
func DefaultConfig(socket string) Config {
	return Config{
		Endpoints:      []Endpoint{{Socket: socket}},
		NoColor:        os.Getenv("NO_COLOR") != "",
		Now:            time.Now,
		PollNodes:      3 * time.Second,
		PollApps:       5 * time.Second,
		PollGraph:      3 * time.Second,
		ReconnectMin:   250 * time.Millisecond,
		ReconnectMax:   5 * time.Second,
		RequestTimeout: 5 * time.Second,
		ActionTimeout:  2 * time.Minute,
		Frame:          120 * time.Millisecond,
		EventLog:       1000,
		Epochs:         32,
	}
}

// ErrNoEndpoint is returned for a Config without endpoints.
var ErrNoEndpoint = errors.New("tui: no daemon socket to attach to")

// validate fills unset fields from DefaultConfig and checks the rest.
func (c Config) validate() (Config, error) {
	if len(c.Endpoints) == 0 {
		return c, ErrNoEndpoint
	}
	// The dashboard fills in node names as daemons answer: its own copy.
	c.Endpoints = append([]Endpoint(nil), c.Endpoints...)
	for i, e := range c.Endpoints {
		if e.Socket == "" {
			return c, fmt.Errorf("tui: endpoint %d has no socket", i)
		}
	}
	d := DefaultConfig("")
	if c.Dial == nil {
		c.Dial = func(socket string) Source { return NewClientSource(socket) }
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.Now == nil {
		c.Now = d.Now
	}
	setDur := func(p *time.Duration, v time.Duration) {
		if *p <= 0 {
			*p = v
		}
	}
	setDur(&c.PollNodes, d.PollNodes)
	setDur(&c.PollApps, d.PollApps)
	setDur(&c.PollGraph, d.PollGraph)
	setDur(&c.ReconnectMin, d.ReconnectMin)
	setDur(&c.ReconnectMax, d.ReconnectMax)
	setDur(&c.RequestTimeout, d.RequestTimeout)
	setDur(&c.ActionTimeout, d.ActionTimeout)
	setDur(&c.Frame, d.Frame)
	if c.ReconnectMax < c.ReconnectMin {
		c.ReconnectMax = c.ReconnectMin
	}
	if c.EventLog <= 0 {
		c.EventLog = d.EventLog
	}
	if c.Epochs <= 0 {
		c.Epochs = d.Epochs
	}
	return c, nil
}

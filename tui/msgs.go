package tui

import (
	"context"
	"time"

	tea "charm.land/bubbletea/v2"

	"doppel/node/api"
)

// Every asynchronous result is its own message type. Results of requests
// carry the connection generation (gen) they were made in: after a
// reconnection or a switch to another daemon, late answers of the old
// connection are dropped.

// connectedMsg: the daemon answered and its event stream is open.
type connectedMsg struct {
	gen    uint64
	status api.Status
	stream EventStream
}

// connectErrMsg: the daemon could not be reached.
type connectErrMsg struct {
	gen uint64
	err error
}

// reconnectMsg: the backoff after a failure is over; try again.
type reconnectMsg struct{ gen uint64 }

// eventMsg is one event of the stream; the command that produced it is
// re-armed by the root model.
type eventMsg struct {
	gen uint64
	ev  api.Event
}

// streamEndMsg: the event stream ended (the daemon went away).
type streamEndMsg struct {
	gen uint64
	err error
}

type statusMsg struct {
	gen    uint64
	status api.Status
	err    error
}

type nodesMsg struct {
	gen   uint64
	nodes []api.NodeInfo
	err   error
}

type appsMsg struct {
	gen  uint64
	apps []api.AppInfo
	at   time.Time // when the answer arrived, for the ages in it
	err  error
}

type detailMsg struct {
	gen    uint64
	app    string
	detail api.AppDetail
	at     time.Time
	err    error
}

type epochsMsg struct {
	gen    uint64
	app    string
	epochs []api.EpochInfo
	err    error
}

// Poll ticks carry the generation that armed them; a tick of an older
// generation is dropped and its chain ends.
type (
	nodesTickMsg struct{ gen uint64 }
	appsTickMsg  struct{ gen uint64 }
	graphTickMsg struct{ gen uint64 }
)

// frameMsg advances the animation of a checkpoint in progress; id is the
// animation chain it belongs to.
type frameMsg struct{ id uint64 }

// actionDoneMsg is the answer to an action's request.
type actionDoneMsg struct {
	id     uint64
	result actionResult
}

// selectAppMsg tells the panes which app is selected (sent by the root
// model to the panes directly, not through a command).
type selectAppMsg struct{ app string }

// attachedMsg tells the panes that the dashboard attached to another daemon
// (sent directly): they forget what they knew of the old one.
type attachedMsg struct{ node string }

// connectedToMsg tells the panes which node answered (sent directly, on
// every connection).
type connectedToMsg struct{ node string }

// request bounds one API call.
func request(timeout time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), timeout)
}

// Commands. Each takes copies of what it needs: none reads the model.

func connectCmd(src Source, gen uint64, timeout time.Duration) tea.Cmd {
	return func() tea.Msg {
		ctx, cancel := request(timeout)
		st, err := src.Status(ctx)
		cancel()
		if err != nil {
			return connectErrMsg{gen: gen, err: err}
		}
		// The stream outlives the request: it is closed by the model.
		stream, err := src.Events(context.Background())
		if err != nil {
			return connectErrMsg{gen: gen, err: err}
		}
		return connectedMsg{gen: gen, status: st, stream: stream}
	}
}

// waitEventCmd blocks for the next event of the stream.
func waitEventCmd(stream EventStream, gen uint64) tea.Cmd {
	return func() tea.Msg {
		ev, err := stream.Next()
		if err != nil {
			return streamEndMsg{gen: gen, err: err}
		}
		return eventMsg{gen: gen, ev: ev}
	}
}

func fetchStatusCmd(src Source, gen uint64, timeout time.Duration) tea.Cmd {
	return func() tea.Msg {
		ctx, cancel := request(timeout)
		defer cancel()
		st, err := src.Status(ctx)
		return statusMsg{gen: gen, status: st, err: err}
	}
}

func fetchNodesCmd(src Source, gen uint64, timeout time.Duration) tea.Cmd {
	return func() tea.Msg {
		ctx, cancel := request(timeout)
		defer cancel()
		ns, err := src.Nodes(ctx)
		return nodesMsg{gen: gen, nodes: ns, err: err}
	}
}

func fetchAppsCmd(src Source, gen uint64, timeout time.Duration, now func() time.Time) tea.Cmd {
	return func() tea.Msg {
		ctx, cancel := request(timeout)
		defer cancel()
		as, err := src.Apps(ctx)
		return appsMsg{gen: gen, apps: as, at: now(), err: err}
	}
}

func fetchDetailCmd(src Source, gen uint64, app string, timeout time.Duration, now func() time.Time) tea.Cmd {
	return func() tea.Msg {
		ctx, cancel := request(timeout)
		defer cancel()
		d, err := src.App(ctx, app)
		return detailMsg{gen: gen, app: app, detail: d, at: now(), err: err}
	}
}

func fetchEpochsCmd(src Source, gen uint64, app string, timeout time.Duration) tea.Cmd {
	return func() tea.Msg {
		ctx, cancel := request(timeout)
		defer cancel()
		es, err := src.Epochs(ctx, app)
		return epochsMsg{gen: gen, app: app, epochs: es, err: err}
	}
}

func reconnectAfter(d time.Duration, gen uint64) tea.Cmd {
	return tea.Tick(d, func(time.Time) tea.Msg { return reconnectMsg{gen: gen} })
}

func nodesTick(d time.Duration, gen uint64) tea.Cmd {
	return tea.Tick(d, func(time.Time) tea.Msg { return nodesTickMsg{gen: gen} })
}

func appsTick(d time.Duration, gen uint64) tea.Cmd {
	return tea.Tick(d, func(time.Time) tea.Msg { return appsTickMsg{gen: gen} })
}

func graphTick(d time.Duration, gen uint64) tea.Cmd {
	return tea.Tick(d, func(time.Time) tea.Msg { return graphTickMsg{gen: gen} })
}

func frameTick(d time.Duration, id uint64) tea.Cmd {
	return tea.Tick(d, func(time.Time) tea.Msg { return frameMsg{id: id} })
}

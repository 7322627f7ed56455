package tui

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"charm.land/bubbles/v2/help"
	"charm.land/bubbles/v2/key"
	"charm.land/bubbles/v2/textinput"
	tea "charm.land/bubbletea/v2"

	"doppel/node/api"
)

// Model is the dashboard's root model: it owns the connection to a daemon
// (event stream, polls, reconnection), routes messages to the panes, runs
// actions and lays the panes out.
type Model struct {
	env    *env
	cfg    Config
	keys   KeyMap
	styles Styles

	panes   [numPanes]pane
	nodes   *nodesPane
	apps    *appsPane
	tree    *treePane
	phases  *phasesPane
	events  *eventsPane
	focus   paneID
	actions []action

	width, height int
	help          help.Model
	showHelp      bool
	filter        textinput.Model
	filtering     bool
	filters       [numPanes]string

	// Connection.
	ep        int // index in cfg.Endpoints
	src       Source
	gen       uint64 // connection generation
	stream    EventStream
	connected bool
	attempt   int
	lastErr   error
	retryAt   time.Time
	status    api.Status
	lastSeq   uint64 // newest event seen from this endpoint
	lastTime  time.Time
	timeouts  int // requests timed out in a row

	// Requests in flight and requests wanted after them.
	inflight, dirty map[string]bool

	selected string // the selected app

	// Actions.
	confirm *pending
	running *running
	actionN uint64
	flash   flash

	frameID     uint64
	frameActive bool
	frame       int
	quitting    bool
}

// pending is an action waiting for y/n.
type pending struct {
	act      action
	t        target
	question string
}

// running is an action in progress.
type running struct {
	id      uint64
	name    string
	app     string
	started time.Time
	// After the request: waiting for its effect.
	waiting  bool
	result   actionResult
	deadline time.Time
}

// flash is the last message of the status line.
type flash struct {
	text  string
	level string // "ok", "warn", "bad", "" (info)
	at    time.Time
}

// New returns the dashboard's model for cfg (see Run).
func New(cfg Config) (*Model, error) {
	cfg, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	m := &Model{
		cfg:      cfg,
		keys:     DefaultKeyMap(),
		styles:   NewStyles(cfg.NoColor),
		inflight: map[string]bool{},
		dirty:    map[string]bool{},
	}
	m.env = &env{styles: m.styles, keys: m.keys, cfg: cfg}
	m.nodes = newNodesPane(m.env)
	m.apps = newAppsPane(m.env)
	m.tree = newTreePane(m.env)
	m.phases = newPhasesPane(m.env)
	m.events = newEventsPane(m.env)
	m.panes = [numPanes]pane{m.nodes, m.apps, m.tree, m.phases, m.events}
	m.focus = paneApps
	m.actions = newActions(m.keys, cfg.Demo)
	if cfg.Demo == nil {
		m.keys.Kill.SetEnabled(false)
	}
	if len(cfg.Endpoints) < 2 {
		m.keys.Attach.SetEnabled(false)
	}
	m.help = help.New()
	m.help.Styles = m.styles.Help
	m.filter = textinput.New()
	m.filter.Prompt = "/"
	m.filter.Placeholder = "filter"
	m.src = cfg.Dial(cfg.Endpoints[0].Socket)
	m.gen = 1
	return m, nil
}

// Init implements tea.Model: connect to the first daemon.
func (m *Model) Init() tea.Cmd {
	m.cfg.Logger.Info("attaching", "socket", m.cfg.Endpoints[m.ep].Socket)
	return tea.Batch(connectCmd(m.src, m.gen, m.cfg.RequestTimeout), m.animate())
}

// attachedNode is the name of the node attached to ("" until it answers).
func (m *Model) attachedNode() string {
	if m.status.Node != "" {
		return m.status.Node
	}
	return m.cfg.Endpoints[m.ep].Node
}

// Update implements tea.Model.
func (m *Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	var cmds []tea.Cmd
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
		m.layout()
	case tea.KeyPressMsg:
		cmds = append(cmds, m.onKey(msg))
	case tea.PasteMsg:
		if m.filtering {
			var cmd tea.Cmd
			m.filter, cmd = m.filter.Update(msg)
			m.applyFilter()
			cmds = append(cmds, cmd)
		}
	case connectedMsg:
		cmds = append(cmds, m.onConnected(msg))
	case connectErrMsg:
		if msg.gen == m.gen {
			cmds = append(cmds, m.lost(msg.err))
		}
	case reconnectMsg:
		if msg.gen == m.gen && !m.connected {
			cmds = append(cmds, connectCmd(m.src, m.gen, m.cfg.RequestTimeout))
		}
	case streamEndMsg:
		if msg.gen == m.gen {
			cmds = append(cmds, m.lost(fmt.Errorf("event stream ended: %w", msg.err)))
		}
	case eventMsg:
		if msg.gen != m.gen {
			break
		}
		cmds = append(cmds, waitEventCmd(m.stream, m.gen))
		if m.seen(msg.ev) {
			break
		}
		cmds = append(cmds, m.route(msg), m.onEvent(msg.ev))
	case statusMsg:
		if msg.gen != m.gen {
			break
		}
		m.done("status")
		if msg.err == nil {
			m.status = msg.status
		}
		cmds = append(cmds, m.failed(msg.err), m.again("status"))
	case nodesMsg:
		if msg.gen != m.gen {
			break
		}
		m.done("nodes")
		cmds = append(cmds, m.route(msg), m.failed(msg.err), m.again("nodes"))
	case appsMsg:
		if msg.gen != m.gen {
			break
		}
		m.done("apps")
		cmds = append(cmds, m.route(msg), m.followSelection(), m.failed(msg.err), m.again("apps"))
		m.checkWait(msg)
	case detailMsg:
		if msg.gen != m.gen {
			break
		}
		m.done("detail")
		if msg.app == m.selected {
			cmds = append(cmds, m.route(msg))
			if msg.err == nil {
				// The detail carries the epochs too.
				cmds = append(cmds, m.route(epochsMsg{gen: msg.gen, app: msg.app, epochs: msg.detail.Epochs}))
			}
		}
		cmds = append(cmds, m.failed(msg.err), m.again("detail"))
	case epochsMsg:
		if msg.gen != m.gen {
			break
		}
		m.done("epochs")
		cmds = append(cmds, m.route(msg), m.failed(msg.err), m.again("epochs"))
	case nodesTickMsg:
		if msg.gen == m.gen {
			cmds = append(cmds, m.fetch("nodes"), m.fetch("status"), nodesTick(m.cfg.PollNodes, m.gen))
		}
	case appsTickMsg:
		if msg.gen == m.gen {
			cmds = append(cmds, m.fetch("apps"), appsTick(m.cfg.PollApps, m.gen))
		}
	case graphTickMsg:
		if msg.gen == m.gen {
			if m.treeVisible() {
				cmds = append(cmds, m.fetch("detail"))
			}
			cmds = append(cmds, graphTick(m.cfg.PollGraph, m.gen))
		}
	case frameMsg:
		if msg.id != m.frameID {
			break
		}
		m.frameActive = false
		m.frame++
		cmds = append(cmds, m.route(msg))
	case actionDoneMsg:
		cmds = append(cmds, m.onActionDone(msg))
	}
	cmds = append(cmds, m.animate())
	if m.quitting {
		return m, tea.Quit
	}
	return m, tea.Batch(cmds...)
}

// route sends a message to every pane.
func (m *Model) route(msg tea.Msg) tea.Cmd {
	var cmds []tea.Cmd
	for _, p := range m.panes {
		cmds = append(cmds, p.Update(msg))
	}
	return tea.Batch(cmds...)
}

// seen drops events already received from this daemon: a new stream
// replays the daemon's recent events.
func (m *Model) seen(ev api.Event) bool {
	if ev.Seq != 0 && ev.Seq <= m.lastSeq && !ev.Time.After(m.lastTime) {
		return true
	}
	if ev.Seq != 0 {
		m.lastSeq = ev.Seq
	}
	if ev.Time.After(m.lastTime) {
		m.lastTime = ev.Time
	}
	return false
}

// onEvent refreshes what an event changed.
func (m *Model) onEvent(ev api.Event) tea.Cmd {
	var cmds []tea.Cmd
	switch ev.Kind {
	case api.KindMember:
		cmds = append(cmds, m.fetch("nodes"), m.fetch("status"))
	case api.KindApp, api.KindPromotion, api.KindRelocation:
		cmds = append(cmds, m.fetch("apps"), m.fetch("nodes"))
		if ev.App == m.selected {
			cmds = append(cmds, m.fetch("detail"))
		}
	case api.KindEpoch:
		cmds = append(cmds, m.fetch("apps"))
		if ev.App == m.selected {
			cmds = append(cmds, m.fetch("epochs"))
		}
	case api.KindAck:
		cmds = append(cmds, m.fetch("apps"))
	case api.KindError:
		cmds = append(cmds, m.fetch("apps"))
		if r := m.running; r != nil && r.waiting && ev.App == r.result.waitApp {
			m.setFlash(fmt.Sprintf("%s failed: %s", r.name, ev.Message), "bad")
			m.running = nil
		}
	}
	return tea.Batch(cmds...)
}

// fetch starts a request unless one of its kind is in flight, in which
// case it is repeated when that one returns.
func (m *Model) fetch(what string) tea.Cmd {
	if !m.connected {
		return nil
	}
	if m.inflight[what] {
		m.dirty[what] = true
		return nil
	}
	var cmd tea.Cmd
	to := m.cfg.RequestTimeout
	switch what {
	case "status":
		cmd = fetchStatusCmd(m.src, m.gen, to)
	case "nodes":
		cmd = fetchNodesCmd(m.src, m.gen, to)
	case "apps":
		cmd = fetchAppsCmd(m.src, m.gen, to, m.cfg.Now)
	case "detail":
		if m.selected == "" {
			return nil
		}
		cmd = fetchDetailCmd(m.src, m.gen, m.selected, to, m.cfg.Now)
	case "epochs":
		if m.selected == "" {
			return nil
		}
		cmd = fetchEpochsCmd(m.src, m.gen, m.selected, to)
	}
	m.inflight[what] = true
	return cmd
}

func (m *Model) done(what string) { m.inflight[what] = false }

// again repeats a request that was wanted while it was in flight.
func (m *Model) again(what string) tea.Cmd {
	if !m.dirty[what] {
		return nil
	}
	m.dirty[what] = false
	return m.fetch(what)
}

// failed handles a failed request: a daemon that went away means
// reconnecting; other errors are shown.
func (m *Model) failed(err error) tea.Cmd {
	if err == nil {
		m.timeouts = 0
		return nil
	}
	if errors.Is(err, api.ErrNoDaemon) {
		return m.lost(err)
	}
	// A daemon that stopped answering (hung, or its machine is gone) is
	// treated as lost after a second request in a row times out.
	if errors.Is(err, context.DeadlineExceeded) {
		m.timeouts++
		if m.timeouts >= 2 {
			return m.lost(fmt.Errorf("the daemon does not answer: %w", err))
		}
	}
	if !errors.Is(err, api.ErrNotFound) {
		m.cfg.Logger.Warn("request failed", "err", err)
		m.setFlash(err.Error(), "warn")
	}
	return nil
}

// onConnected starts the stream and the polls of a new connection.
func (m *Model) onConnected(msg connectedMsg) tea.Cmd {
	if msg.gen != m.gen {
		msg.stream.Close()
		return nil
	}
	m.connected, m.attempt, m.lastErr, m.timeouts = true, 0, nil, 0
	m.stream = msg.stream
	m.status = msg.status
	if m.cfg.Endpoints[m.ep].Node == "" {
		m.cfg.Endpoints[m.ep].Node = msg.status.Node
	}
	m.cfg.Logger.Info("attached", "node", msg.status.Node, "socket", m.cfg.Endpoints[m.ep].Socket)
	for k := range m.inflight {
		m.inflight[k], m.dirty[k] = false, false
	}
	cmds := []tea.Cmd{
		m.route(connectedToMsg{node: msg.status.Node}),
		waitEventCmd(m.stream, m.gen),
		m.fetch("nodes"), m.fetch("apps"), m.fetch("detail"), m.fetch("epochs"),
		nodesTick(m.cfg.PollNodes, m.gen),
		appsTick(m.cfg.PollApps, m.gen),
		graphTick(m.cfg.PollGraph, m.gen),
	}
	return tea.Batch(cmds...)
}

// lost handles the loss of the daemon: the stream is closed, the polls of
// this generation end, and a reconnection is scheduled with backoff.
func (m *Model) lost(err error) tea.Cmd {
	if m.stream != nil {
		m.stream.Close()
		m.stream = nil
	}
	if m.connected {
		m.cfg.Logger.Warn("daemon lost", "socket", m.cfg.Endpoints[m.ep].Socket, "err", err)
	}
	m.connected = false
	m.lastErr = err
	m.gen++
	d := m.cfg.ReconnectMin
	for i := 0; i < m.attempt && d < m.cfg.ReconnectMax; i++ {
		d *= 2
	}
	d = min(d, m.cfg.ReconnectMax)
	m.attempt++
	m.retryAt = m.cfg.Now().Add(d)
	return reconnectAfter(d, m.gen)
}

// attach switches to another daemon.
func (m *Model) attach(i int) tea.Cmd {
	if m.stream != nil {
		m.stream.Close()
		m.stream = nil
	}
	m.ep = i
	m.src = m.cfg.Dial(m.cfg.Endpoints[i].Socket)
	m.gen++
	m.connected, m.attempt, m.lastErr = false, 0, nil
	m.status = api.Status{}
	m.lastSeq, m.lastTime = 0, time.Time{}
	m.cfg.Logger.Info("attaching", "node", m.cfg.Endpoints[i].Node, "socket", m.cfg.Endpoints[i].Socket)
	return tea.Batch(m.route(attachedMsg{node: m.cfg.Endpoints[i].Node}), connectCmd(m.src, m.gen, m.cfg.RequestTimeout))
}

// endpointOf is the index of the endpoint of a node, -1 when unknown.
func (m *Model) endpointOf(node string) int {
	for i, e := range m.cfg.Endpoints {
		if e.Node == node {
			return i
		}
	}
	return -1
}

// followSelection follows the selection of the Apps pane: the panes that show
// the selected app are told, and its details fetched.
func (m *Model) followSelection() tea.Cmd {
	name := ""
	if a, ok := m.apps.Selected(); ok {
		name = a.Name
	}
	if name == m.selected {
		return nil
	}
	m.selected = name
	m.inflight["detail"], m.dirty["detail"] = false, false
	m.inflight["epochs"], m.dirty["epochs"] = false, false
	return tea.Batch(m.route(selectAppMsg{app: name}), m.fetch("detail"))
}

// treeVisible says whether the resource tree is on screen.
func (m *Model) treeVisible() bool {
	return m.grid() || m.focus == paneTree
}

// animate keeps frames coming while something moves on screen.
func (m *Model) animate() tea.Cmd {
	need := m.running != nil || !m.connected || m.phases.Animating()
	if !need || m.frameActive {
		return nil
	}
	m.frameActive = true
	m.frameID++
	return frameTick(m.cfg.Frame, m.frameID)
}

func (m *Model) setFlash(text, level string) {
	m.flash = flash{text: text, level: level, at: m.cfg.Now()}
}

// onKey handles a key: the confirmation line, the filter, the help, the
// global keys, then the focused pane.
func (m *Model) onKey(msg tea.KeyPressMsg) tea.Cmd {
	km := m.keys
	if m.confirm != nil {
		p := m.confirm
		m.confirm = nil
		if key.Matches(msg, km.Confirm) {
			return m.start(p)
		}
		m.setFlash(p.act.name+" cancelled", "")
		return nil
	}
	if m.filtering {
		switch msg.String() {
		case "enter":
			m.filtering = false
			m.filter.Blur()
			return nil
		case "esc":
			m.filtering = false
			m.filter.Blur()
			m.filter.SetValue("")
			m.applyFilter()
			return nil
		}
		var cmd tea.Cmd
		m.filter, cmd = m.filter.Update(msg)
		m.applyFilter()
		return cmd
	}
	if m.showHelp {
		if key.Matches(msg, km.Quit) {
			m.quitting = true
			return nil
		}
		m.showHelp = false
		return nil
	}
	switch {
	case key.Matches(msg, km.Quit):
		m.quitting = true
		return nil
	case key.Matches(msg, km.Help):
		m.showHelp = true
		return nil
	case key.Matches(msg, km.NextPane):
		m.focus = (m.focus + 1) % numPanes
		return m.focusChanged()
	case key.Matches(msg, km.PrevPane):
		m.focus = (m.focus + numPanes - 1) % numPanes
		return m.focusChanged()
	case key.Matches(msg, km.Pane):
		m.focus = paneID(msg.String()[0] - '1')
		return m.focusChanged()
	case key.Matches(msg, km.Filter):
		m.filtering = true
		m.filter.SetValue(m.filters[m.focus])
		m.filter.CursorEnd()
		return m.filter.Focus()
	case key.Matches(msg, km.ClearFilter):
		if m.filters[m.focus] != "" {
			m.filter.SetValue("")
			m.applyFilter()
		}
		return nil
	case key.Matches(msg, km.Attach):
		return m.onAttach()
	}
	for _, a := range m.actions {
		if a.key.Enabled() && key.Matches(msg, a.key) {
			return m.ask(a)
		}
	}
	cmd := m.panes[m.focus].Update(msg)
	return tea.Batch(cmd, m.followSelection())
}

// focusChanged fetches the graph when the tree comes into view.
func (m *Model) focusChanged() tea.Cmd {
	if m.focus == paneTree {
		return m.fetch("detail")
	}
	return nil
}

func (m *Model) applyFilter() {
	f := strings.TrimSpace(m.filter.Value())
	m.filters[m.focus] = f
	m.panes[m.focus].SetFilter(f)
}

func (m *Model) onAttach() tea.Cmd {
	n, ok := m.nodes.Selected()
	if !ok {
		m.setFlash("select a node in the Nodes pane first", "warn")
		return nil
	}
	if n.Name == m.attachedNode() {
		m.setFlash("already attached to "+n.Name, "")
		return nil
	}
	i := m.endpointOf(n.Name)
	if i < 0 {
		m.setFlash("no API socket known for "+n.Name+" (the dashboard talks to the daemon of its own machine)", "warn")
		return nil
	}
	m.setFlash("attaching to "+n.Name, "")
	return m.attach(i)
}

// target copies what an action needs from the model.
func (m *Model) target() target {
	t := target{
		Self: m.attachedNode(), Nodes: append([]api.NodeInfo(nil), m.nodes.Nodes()...),
		Src: m.src, Demo: m.cfg.Demo, Timeout: m.cfg.ActionTimeout,
	}
	t.App, t.HasApp = m.apps.Selected()
	if m.focus == paneNodes {
		t.Node, t.HasNode = m.nodes.Selected()
	} else if t.HasApp && t.App.OP != "" {
		for _, n := range t.Nodes {
			if n.Name == t.App.OP {
				t.Node, t.HasNode = n, true
			}
		}
	}
	if !t.HasNode && m.focus != paneNodes {
		t.Node, t.HasNode = m.nodes.Selected()
	}
	return t
}

// ask checks an action and asks for confirmation.
func (m *Model) ask(a action) tea.Cmd {
	if m.running != nil {
		m.setFlash(fmt.Sprintf("%s is still in progress", m.running.name), "warn")
		return nil
	}
	if !m.connected {
		m.setFlash("not attached to a daemon", "warn")
		return nil
	}
	t := m.target()
	if err := a.check(t); err != nil {
		m.setFlash(a.name+": "+err.Error(), "warn")
		return nil
	}
	m.confirm = &pending{act: a, t: t, question: a.confirm(t)}
	return nil
}

// start runs a confirmed action.
func (m *Model) start(p *pending) tea.Cmd {
	m.actionN++
	m.running = &running{id: m.actionN, name: p.act.name, app: p.t.App.Name, started: m.cfg.Now()}
	m.cfg.Logger.Info("action", "action", p.act.name, "app", p.t.App.Name, "node", p.t.Node.Name)
	return runActionCmd(p.act.run, p.t, m.actionN)
}

// runActionCmd runs an action's request in a command.
func runActionCmd(run func(ctx context.Context, t target) actionResult, t target, id uint64) tea.Cmd {
	return func() tea.Msg {
		ctx, cancel := request(t.Timeout)
		defer cancel()
		return actionDoneMsg{id: id, result: run(ctx, t)}
	}
}

func (m *Model) onActionDone(msg actionDoneMsg) tea.Cmd {
	r := m.running
	if r == nil || r.id != msg.id {
		return nil
	}
	res := msg.result
	el := m.cfg.Now().Sub(r.started)
	if res.err != nil {
		m.cfg.Logger.Warn("action failed", "action", r.name, "app", r.app, "err", res.err)
		m.setFlash(fmt.Sprintf("%s failed: %v", r.name, res.err), "bad")
		m.running = nil
		return tea.Batch(m.fetch("apps"), m.fetch("nodes"))
	}
	m.cfg.Logger.Info("action done", "action", r.name, "app", r.app, "result", res.text)
	if res.waitApp != "" {
		r.waiting, r.result = true, res
		r.deadline = m.cfg.Now().Add(m.cfg.ActionTimeout)
		return tea.Batch(m.fetch("apps"), m.fetch("nodes"))
	}
	m.running = nil
	m.setFlash(fmt.Sprintf("%s (%s)", res.text, el.Round(time.Millisecond)), "ok")
	cmds := []tea.Cmd{m.fetch("apps"), m.fetch("nodes"), m.fetch("status")}
	if r.name == "kill node" {
		cmds = append(cmds, m.afterKill(res))
	}
	return tea.Batch(cmds...)
}

// afterKill reports a simulated failure and, when the node killed is the
// one attached to, attaches to a survivor (one holding a clone of the
// selected app if possible).
func (m *Model) afterKill(res actionResult) tea.Cmd {
	t := m.target()
	if res.killed == "" || res.killed != m.attachedNode() {
		m.setFlash(res.text, "warn")
		return nil
	}
	best := -1
	for i, e := range m.cfg.Endpoints {
		if e.Node == res.killed {
			continue
		}
		if best < 0 {
			best = i
		}
		if t.HasApp && t.holdsClone(e.Node) {
			best = i
			break
		}
	}
	if best < 0 {
		m.setFlash(res.text, "warn")
		return nil
	}
	node := m.cfg.Endpoints[best].Node
	cmd := m.attach(best)
	m.setFlash(fmt.Sprintf("%s; attached to %s", res.text, node), "warn")
	return cmd
}

// checkWait ends an action that waited for its effect on an app.
func (m *Model) checkWait(msg appsMsg) {
	r := m.running
	if r == nil || !r.waiting || msg.err != nil {
		return
	}
	for _, a := range msg.apps {
		if a.Name != r.result.waitApp {
			continue
		}
		if a.State == r.result.waitState && (r.result.waitNode == "" || a.OP == r.result.waitNode) {
			m.setFlash(fmt.Sprintf("%s (%s)", r.result.text, m.cfg.Now().Sub(r.started).Round(time.Millisecond)), "ok")
			m.running = nil
			return
		}
		if a.State == api.AppFailed && r.result.waitState == api.AppRunning && a.OP == r.result.waitNode {
			m.setFlash(fmt.Sprintf("%s: %s is failed on %s (see Events)", r.name, a.Name, a.OP), "bad")
			m.running = nil
			return
		}
	}
	if m.cfg.Now().After(r.deadline) {
		m.setFlash(fmt.Sprintf("%s: %s did not become %s within %s", r.name, r.result.waitApp, r.result.waitState, m.cfg.ActionTimeout), "bad")
		m.running = nil
	}
}

package tui

import (
	"context"
	"errors"
	"fmt"
	"time"

	"charm.land/bubbles/v2/key"

	"doppel/node/api"
)

// target is what an action applies to, copied from the model when the
// key is pressed: the selected app, the selected node, and the node the
// dashboard is attached to.
type target struct {
	App     api.AppInfo
	HasApp  bool
	Node    api.NodeInfo // the node selected in the Nodes pane, or the app's OP
	HasNode bool
	Self    string // the node attached to
	Nodes   []api.NodeInfo
	Src     Source
	Demo    Demo
	Timeout time.Duration
}

// actionResult is what an action's request returned.
type actionResult struct {
	text string // one line for the status bar
	err  error
	// waitApp, when set, keeps the action in progress until the app
	// reaches waitState on waitNode (restore answers before the app runs).
	waitApp, waitState, waitNode string
	// killed is the node a simulated failure killed.
	killed string
}

// action is one operator action. The list of actions is a table: adding
// one (relocate, drain, ...) is one entry and one key binding.
type action struct {
	name string      // short name, for progress: "checkpoint"
	key  key.Binding // from the KeyMap
	// check says why the action does not apply to t (nil: it does).
	check func(t target) error
	// confirm is the question asked before running it.
	confirm func(t target) string
	// run does it; it blocks and is called from a command, with copies.
	run func(ctx context.Context, t target) actionResult
}

var errNoApp = errors.New("select an app first (Apps pane)")

// nodeState returns the state of the named node in t.Nodes ("" unknown).
func (t target) nodeState(name string) string {
	for _, n := range t.Nodes {
		if n.Name == name {
			return n.State
		}
	}
	return ""
}

// holdsClone says whether node holds a clone of the app.
func (t target) holdsClone(node string) bool {
	for _, c := range t.App.Clones {
		if c.Node == node {
			return true
		}
	}
	return false
}

// newActions builds the action table from the key map; the demo adds its
// own.
func newActions(km KeyMap, demo Demo) []action {
	acts := []action{
		{
			name: "checkpoint",
			key:  km.Checkpoint,
			check: func(t target) error {
				if !t.HasApp {
					return errNoApp
				}
				if t.App.State != api.AppRunning {
					return fmt.Errorf("%s is %s: only a running app can be checkpointed", t.App.Name, t.App.State)
				}
				return nil
			},
			confirm: func(t target) string {
				return fmt.Sprintf("checkpoint %s on %s now?", t.App.Name, t.App.OP)
			},
			run: func(ctx context.Context, t target) actionResult {
				e, err := t.Src.Checkpoint(ctx, t.App.Name)
				if err != nil {
					return actionResult{err: err}
				}
				p := e.Phases
				return actionResult{text: fmt.Sprintf("%s: epoch #%d in %s (frozen %s), %d pages changed, %s stored",
					t.App.Name, e.Epoch, fmtMs(p.PSB+p.RM+p.SRM+p.PRM), fmtMs(p.Frozen), e.PagesChanged, humanBytes(e.BytesStored))}
			},
		},
		{
			name: "stop",
			key:  km.Stop,
			check: func(t target) error {
				if !t.HasApp {
					return errNoApp
				}
				if t.App.OP == "" {
					return fmt.Errorf("%s is already stopped", t.App.Name)
				}
				return nil
			},
			confirm: func(t target) string {
				return fmt.Sprintf("stop %s on %s? (its epochs and clones are kept; r restores it)", t.App.Name, t.App.OP)
			},
			run: func(ctx context.Context, t target) actionResult {
				if err := t.Src.Stop(ctx, t.App.Name); err != nil {
					return actionResult{err: err}
				}
				return actionResult{text: t.App.Name + " stopped", waitApp: t.App.Name, waitState: api.AppStopped}
			},
		},
		{
			name: "restore",
			key:  km.Restore,
			check: func(t target) error {
				if !t.HasApp {
					return errNoApp
				}
				if t.App.OP == t.Self && t.App.State == api.AppRunning {
					return fmt.Errorf("%s already runs here on %s", t.App.Name, t.Self)
				}
				if t.App.NewestEpoch == 0 {
					return fmt.Errorf("%s has no epoch to restore", t.App.Name)
				}
				return nil
			},
			confirm: func(t target) string {
				a := t.App
				from := "its newest epoch here"
				if t.holdsClone(t.Self) {
					from = "the clone " + t.Self + " holds"
				}
				switch {
				case a.OP == "":
					return fmt.Sprintf("restore %s here on %s from %s?", a.Name, t.Self, from)
				case t.nodeState(a.OP) == api.NodeDead || t.nodeState(a.OP) == api.NodeLeft:
					return fmt.Sprintf("%s is %s: restore %s here on %s from %s (manual failover)?", a.OP, t.nodeState(a.OP), a.Name, t.Self, from)
				default:
					return fmt.Sprintf("%s runs on %s: restore it here on %s from %s? (%s stops its copy)", a.Name, a.OP, t.Self, from, a.OP)
				}
			},
			run: func(ctx context.Context, t target) actionResult {
				force := t.App.OP != ""
				info, err := t.Src.Restore(ctx, t.App.Name, 0, force)
				if err != nil {
					return actionResult{err: err}
				}
				return actionResult{
					text:    fmt.Sprintf("%s restored on %s (term %d)", info.Name, t.Self, info.Term),
					waitApp: info.Name, waitState: api.AppRunning, waitNode: t.Self,
				}
			},
		},
	}
	acts = append(acts, moveActions(km)...)
	if demo != nil {
		acts = append(acts, action{
			name: "kill node",
			key:  km.Kill,
			check: func(t target) error {
				if !t.HasNode {
					return errors.New("select a node first (Nodes pane)")
				}
				if t.Node.State == api.NodeDead || t.Node.State == api.NodeLeft {
					return fmt.Errorf("%s is already %s", t.Node.Name, t.Node.State)
				}
				return nil
			},
			confirm: func(t target) string {
				what := "its daemon and every app it runs are killed (SIGKILL)"
				if len(t.Node.Apps) > 0 {
					what = fmt.Sprintf("its daemon and %v are killed (SIGKILL)", t.Node.Apps)
				}
				return fmt.Sprintf("simulate a failure of %s: %s?", t.Node.Name, what)
			},
			run: func(ctx context.Context, t target) actionResult {
				text, err := t.Demo.KillNode(ctx, t.Node.Name)
				return actionResult{text: text, err: err, killed: t.Node.Name}
			},
		})
	}
	return acts
}

var errNoNode = errors.New("select a node first (Nodes pane)")

// moveActions are the maintenance actions: relocate the selected app to
// the selected node, fail it over to a clone, drain and undrain a node.
func moveActions(km KeyMap) []action {
	return []action{
		{
			name: "relocate",
			key:  km.Relocate,
			check: func(t target) error {
				switch {
				case !t.HasApp:
					return errNoApp
				case !t.HasNode || t.Node.Name == t.App.OP:
					return fmt.Errorf("select the target node in the Nodes pane (not %s, where %s runs)", t.App.OP, t.App.Name)
				case t.App.OP == "":
					return fmt.Errorf("%s is stopped", t.App.Name)
				}
				return nil
			},
			confirm: func(t target) string {
				how := "a full copy first"
				if t.holdsClone(t.Node.Name) {
					how = "only the last delta, it holds a clone"
				}
				return fmt.Sprintf("relocate %s from %s to %s (%s)?", t.App.Name, t.App.OP, t.Node.Name, how)
			},
			run: func(ctx context.Context, t target) actionResult {
				res, err := t.Src.Relocate(ctx, t.App.Name, t.Node.Name)
				if err != nil {
					return actionResult{err: err}
				}
				return actionResult{text: fmt.Sprintf("%s moved %s → %s: pause %s, %s in the last epoch",
					res.App, res.From, res.To, fmtMs(res.PauseMs), humanBytes(res.BytesSent))}
			},
		},
		{
			name: "failover",
			key:  km.Failover,
			check: func(t target) error {
				if !t.HasApp {
					return errNoApp
				}
				if len(t.App.Clones) == 0 {
					return fmt.Errorf("%s has no clone", t.App.Name)
				}
				return nil
			},
			confirm: func(t target) string {
				if t.HasNode && t.holdsClone(t.Node.Name) {
					return fmt.Sprintf("fail %s over to its clone %s now (as if %s died)?", t.App.Name, t.Node.Name, t.App.OP)
				}
				return fmt.Sprintf("fail %s over to the clone holding the newest epoch now (as if %s died)?", t.App.Name, t.App.OP)
			},
			run: func(ctx context.Context, t target) actionResult {
				to := ""
				if t.HasNode && t.holdsClone(t.Node.Name) {
					to = t.Node.Name
				}
				info, err := t.Src.Failover(ctx, t.App.Name, to, false)
				if err != nil {
					return actionResult{err: err}
				}
				return actionResult{text: fmt.Sprintf("%s promoted on %s (term %d)", info.Name, info.OP, info.Term),
					waitApp: info.Name, waitState: api.AppRunning, waitNode: info.OP}
			},
		},
		{
			name: "drain",
			key:  km.Drain,
			check: func(t target) error {
				if !t.HasNode {
					return errNoNode
				}
				if t.Node.Drained {
					return fmt.Errorf("%s is already drained", t.Node.Name)
				}
				return nil
			},
			confirm: func(t target) string {
				return fmt.Sprintf("drain %s: move its apps %v away, one at a time, and keep it unschedulable?", t.Node.Name, t.Node.Apps)
			},
			run: func(ctx context.Context, t target) actionResult {
				res, err := t.Src.Drain(ctx, t.Node.Name)
				if err != nil {
					return actionResult{err: err}
				}
				return actionResult{text: fmt.Sprintf("%s drained: %d app(s) moved", res.Node, len(res.Moves))}
			},
		},
		{
			name: "undrain",
			key:  km.Undrain,
			check: func(t target) error {
				if !t.HasNode {
					return errNoNode
				}
				if !t.Node.Drained {
					return fmt.Errorf("%s is not drained", t.Node.Name)
				}
				return nil
			},
			confirm: func(t target) string { return fmt.Sprintf("make %s schedulable again?", t.Node.Name) },
			run: func(ctx context.Context, t target) actionResult {
				if err := t.Src.Undrain(ctx, t.Node.Name); err != nil {
					return actionResult{err: err}
				}
				return actionResult{text: t.Node.Name + " is schedulable"}
			},
		},
	}
}

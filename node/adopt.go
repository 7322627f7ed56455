package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"doppel/introspect"
	"doppel/node/api"
	"doppel/node/state"
	"doppel/replicate"
)

// Adopt implements api.Backend: the tree is adopted by this node's engine
// (see replicate.Engine.Adopt), then the app is submitted to the cluster
// with this node as its OP, where the runner finds it running. Only a
// worker that may host apps adopts.
func (n *Node) Adopt(ctx context.Context, req api.AdoptRequest) (api.AppInfo, error) {
	name := req.Name
	if name == "" {
		name = replicate.AdoptName(req.Pid)
		if err := replicate.ValidName(name); err != nil {
			return api.AppInfo{}, fmt.Errorf("%w: pid %d: no usable app name from its command %q: give one with --name", api.ErrBadRequest, req.Pid, name)
		}
	}
	if _, err := n.lookup(name); err == nil {
		return api.AppInfo{}, fmt.Errorf("%w: app %s already exists (doppel ls; choose another --name)", api.ErrConflict, name)
	}
	if op, err := ChooseOP(n.cfg.Name, n.candidates()); err != nil || op != n.cfg.Name {
		return api.AppInfo{}, fmt.Errorf("%w: %s cannot host apps (a witness, drained, or not yet a member): run doppel adopt on a worker", api.ErrConflict, n.cfg.Name)
	}
	interval := time.Duration(req.Interval)
	if interval == 0 {
		interval = n.cfg.Interval
	}
	var app *state.App
	// The app is submitted while the engine holds it: the runner that the
	// placement starts here finds it running, and the fencing of a local
	// copy without placement (before the placement applies) cannot stop it.
	register := func(ctx context.Context, st *replicate.AppState) error {
		spec := state.AppSpec{
			Name: name, Args: st.Spec.Args, Dir: st.Spec.Dir, DataPaths: st.Spec.DataPaths,
			Replicas: req.Replicas, Interval: interval, Policy: req.Policy, Health: req.Health,
		}
		if sv := req.Service; sv != nil {
			spec.Service = &state.ServiceSpec{Listen: sv.Listen, Target: sv.Target, Framing: sv.Framing, Journal: sv.Journal,
				VIP: sv.VIP, VIPDev: sv.VIPDev}
			if spec.Service.Framing == "" {
				spec.Service.Framing = "line"
			}
			if spec.Service.Journal == "" {
				spec.Service.Journal = "sync"
			}
		}
		var err error
		if app, err = n.submit(ctx, submitRequest{Spec: spec, Preferred: n.cfg.Name}); err != nil {
			return fmt.Errorf("register in the cluster: %w", err)
		}
		if app.OP != n.cfg.Name {
			// The tree goes back to the host; no other node may start it.
			if err := n.apply(ctx, state.Command{Type: state.CmdRemoveApp, Name: name}); err != nil {
				n.log.Error("adopt: remove the app placed elsewhere", "app", name, "op", app.OP, "err", err)
			}
			return fmt.Errorf("%w: the cluster placed %s on %s, not on %s", api.ErrConflict, name, app.OP, n.cfg.Name)
		}
		return nil
	}
	st, err := n.engine.Adopt(ctx, replicate.AdoptOptions{Pid: req.Pid, Name: name, DataPaths: req.DataPaths, Register: register})
	if err != nil {
		switch {
		case errors.Is(err, api.ErrConflict), errors.Is(err, api.ErrUnavailable):
			return api.AppInfo{}, err
		case errors.Is(err, replicate.ErrCannotAdopt), errors.Is(err, introspect.ErrBlocked):
			return api.AppInfo{}, fmt.Errorf("%w: %v", api.ErrBadRequest, err)
		case errors.Is(err, replicate.ErrAppExists), errors.Is(err, replicate.ErrBusy):
			return api.AppInfo{}, fmt.Errorf("%w: %v", api.ErrConflict, err)
		}
		return api.AppInfo{}, err
	}
	n.publish(api.Event{Kind: api.KindApp, App: name, Message: fmt.Sprintf("pid %d adopted as %s on %s (init pid %d)", req.Pid, name, n.cfg.Name, st.Pid)})
	info := stateInfo(app)
	info.State = api.AppRunning
	info.Pid = st.Pid
	return info, nil
}

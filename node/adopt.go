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
	st, err := n.engine.Adopt(ctx, replicate.AdoptOptions{Pid: req.Pid, Name: name, DataPaths: req.DataPaths})
	if err != nil {
		switch {
		case errors.Is(err, replicate.ErrCannotAdopt), errors.Is(err, introspect.ErrBlocked):
			return api.AppInfo{}, fmt.Errorf("%w: %v", api.ErrBadRequest, err)
		case errors.Is(err, replicate.ErrAppExists), errors.Is(err, replicate.ErrBusy):
			return api.AppInfo{}, fmt.Errorf("%w: %v", api.ErrConflict, err)
		}
		return api.AppInfo{}, err
	}
	interval := time.Duration(req.Interval)
	if interval == 0 {
		interval = n.cfg.Interval
	}
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
	app, err := n.submit(ctx, submitRequest{Spec: spec, Preferred: n.cfg.Name})
	if err != nil {
		// The tree runs under doppel's init here, but the cluster does not
		// know it: say so rather than kill what the user handed over.
		return api.AppInfo{}, fmt.Errorf("pid %d adopted as %s (init pid %d) but not registered in the cluster: %w", req.Pid, name, st.Pid, err)
	}
	n.publish(api.Event{Kind: api.KindApp, App: name, Message: fmt.Sprintf("pid %d adopted as %s on %s (init pid %d)", req.Pid, name, n.cfg.Name, st.Pid)})
	info := stateInfo(app)
	info.State = api.AppRunning
	info.Pid = st.Pid
	return info, nil
}

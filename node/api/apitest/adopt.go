package apitest

import (
	"context"
	"fmt"

	"doppel/node/api"
)

// Adopt implements api.Backend: the fake registers a running app named
// req.Name ("adopted-PID" when empty) whose command is "pid:PID".
func (f *Fake) Adopt(ctx context.Context, req api.AdoptRequest) (api.AppInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("Adopt"); err != nil {
		return api.AppInfo{}, err
	}
	name := req.Name
	if name == "" {
		name = fmt.Sprintf("adopted-%d", req.Pid)
	}
	if _, ok := f.apps[name]; ok {
		return api.AppInfo{}, fmt.Errorf("app %q exists: %w", name, api.ErrConflict)
	}
	info := api.AppInfo{
		Name: name, OP: f.node, Term: 1, State: api.AppRunning,
		Args: []string{fmt.Sprintf("pid:%d", req.Pid)}, Replicas: req.Replicas, Interval: req.Interval,
		DataPaths: req.DataPaths, Clones: []api.CloneInfo{}, Pid: 1000 + len(f.apps),
	}
	f.apps[name] = &fakeApp{info: info}
	f.publishLocked(api.Event{Kind: api.KindApp, Node: f.node, App: name, Message: "adopted"})
	return info, nil
}

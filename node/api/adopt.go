package api

import (
	"context"
	"net/http"
)

// AdoptRequest asks the daemon to take a process tree that runs on its
// machine without doppel (in the host PID namespace) and make it an app
// (POST /v1/adopt): the tree is checkpointed, restored into a fresh PID
// namespace under doppel's init with the same PIDs, and registered as
// `run` would register it. Should anything fail after the checkpoint, the
// tree is put back as it was.
type AdoptRequest struct {
	// Pid is the root of the tree, as the daemon's machine numbers it.
	Pid int `json:"pid"`
	// Name is the app's name; "" means the process's command name.
	Name string `json:"name,omitempty"`
	// DataPaths, Replicas, Interval, Service, Policy and Health are as in
	// RunRequest.
	DataPaths []string `json:"data_paths,omitempty"`
	Replicas  int      `json:"replicas,omitempty"`
	Interval  Duration `json:"interval,omitempty"`
	Service   *Service `json:"service,omitempty"`
	Policy    string   `json:"policy,omitempty"`
	Health    string   `json:"health,omitempty"`
}

func postAdopt(s *Server, r *http.Request) (int, any, error) {
	var req AdoptRequest
	if err := s.decodeBody(r, &req); err != nil {
		return 0, nil, err
	}
	if err := checkAdopt(req); err != nil {
		return 0, nil, err
	}
	a, err := s.backend.Adopt(r.Context(), req)
	return http.StatusCreated, a, err
}

// checkAdopt validates an AdoptRequest: a positive pid, and the rest as
// for a RunRequest.
func checkAdopt(req AdoptRequest) error {
	if req.Pid <= 0 {
		return badRequest("pid %d: give the PID of a running process (doppel adopt --pid N)", req.Pid)
	}
	name := req.Name
	if name == "" {
		name = "adopted" // chosen by the daemon; only the rest is checked
	}
	return checkRun(RunRequest{
		Name: name, Args: []string{"adopted"}, DataPaths: req.DataPaths,
		Replicas: req.Replicas, Interval: req.Interval, Service: req.Service,
		Policy: req.Policy, Health: req.Health,
	})
}

// Adopt makes the process tree rooted at req.Pid an app of this node.
func (c *Client) Adopt(ctx context.Context, req AdoptRequest) (AppInfo, error) {
	var a AppInfo
	err := c.do(ctx, http.MethodPost, "/v1/adopt", nil, req, &a)
	return a, err
}

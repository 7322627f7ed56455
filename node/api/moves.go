package api

import (
	"context"
	"net/http"
	"net/url"
)

// RelocateResult describes a finished relocation
// (POST /v1/apps/{name}/relocate?to=NODE). Progress is published as events
// of kind "relocation" with fields phase and bytes.
type RelocateResult struct {
	App  string `json:"app"`
	From string `json:"from"`
	To   string `json:"to"`
	Term uint64 `json:"term"`
	// Epoch is the last epoch, taken at the barrier.
	Epoch uint64 `json:"epoch"`
	// PauseMs is the measured pause: source frozen → target serving.
	PauseMs float64 `json:"pause_ms"`
	// BytesSent is what crossed the wire for the last epoch.
	BytesSent int64 `json:"bytes_sent"`
}

// DrainResult describes a drain (POST /v1/nodes/{name}/drain): the node is
// marked not schedulable and each app it ran moved.
type DrainResult struct {
	Node   string           `json:"node"`
	Moves  []RelocateResult `json:"moves"`
	Errors []string         `json:"errors"`
}

// Move is one relocation the balancer decided (or would decide).
type Move struct {
	App    string `json:"app"`
	From   string `json:"from"`
	To     string `json:"to"`
	Reason string `json:"reason"`
}

// BalancePlan is the balancer's view now (GET /v1/balance): the move it
// would make, or why none.
type BalancePlan struct {
	Enabled bool   `json:"enabled"`
	Move    *Move  `json:"move,omitempty"`
	Reason  string `json:"reason"`
	// Loads are the per-node loads it judged, 0..1 and more.
	Loads map[string]float64 `json:"loads"`
}

func postRelocate(s *Server, r *http.Request) (int, any, error) {
	name, err := pathName(r)
	if err != nil {
		return 0, nil, err
	}
	to := r.URL.Query().Get("to")
	if !nodeNameRE.MatchString(to) {
		return 0, nil, badRequest("to %q is not a node name (relocate needs ?to=NODE)", to)
	}
	res, err := s.backend.Relocate(r.Context(), name, to)
	return http.StatusOK, res, err
}

func nodeName(r *http.Request) (string, error) {
	n := r.PathValue("name")
	if !nodeNameRE.MatchString(n) {
		return "", badRequest("%q is not a node name", n)
	}
	return n, nil
}

func postDrain(s *Server, r *http.Request) (int, any, error) {
	n, err := nodeName(r)
	if err != nil {
		return 0, nil, err
	}
	res, err := s.backend.Drain(r.Context(), n)
	return http.StatusOK, res, err
}

func postUndrain(s *Server, r *http.Request) (int, any, error) {
	n, err := nodeName(r)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusNoContent, nil, s.backend.Undrain(r.Context(), n)
}

func getBalance(s *Server, r *http.Request) (int, any, error) {
	p, err := s.backend.Balance(r.Context())
	return http.StatusOK, p, err
}

// Relocate moves an app to a node with the shortest pause.
func (c *Client) Relocate(ctx context.Context, name, to string) (RelocateResult, error) {
	var res RelocateResult
	err := c.do(ctx, http.MethodPost, appPath(name, "/relocate"), url.Values{"to": {to}}, nil, &res)
	return res, err
}

// Drain moves every app off a node and marks it not schedulable.
func (c *Client) Drain(ctx context.Context, node string) (DrainResult, error) {
	var res DrainResult
	err := c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(node)+"/drain", nil, nil, &res)
	return res, err
}

// Undrain makes a node schedulable again.
func (c *Client) Undrain(ctx context.Context, node string) error {
	return c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(node)+"/undrain", nil, nil, nil)
}

// Balance returns the balancer's plan now (a dry run).
func (c *Client) Balance(ctx context.Context) (BalancePlan, error) {
	var p BalancePlan
	err := c.do(ctx, http.MethodGet, "/v1/balance", nil, nil, &p)
	return p, err
}

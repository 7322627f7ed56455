package api_test

import (
	"net/http"
	"testing"

	"doppel/node/api"
	"doppel/node/api/apitest"
)

// TestProbeRoute: the client reaches the backend's Probe with the node and
// size, and bad input comes back as the right error.
func TestProbeRoute(t *testing.T) {
	f := newFake()
	f.SetNodes([]api.NodeInfo{
		{Name: "n1", Role: "worker", State: api.NodeAlive, Self: true, Apps: []string{}, Clones: []string{}},
		{Name: "n2", Role: "worker", State: api.NodeAlive, Addr: "127.0.0.2:7948", Apps: []string{}, Clones: []string{}},
		{Name: "n3", Role: "worker", State: api.NodeDead, Apps: []string{}, Clones: []string{}},
	})
	d := startDaemon(t, f, testConfig(t))
	ctx := ctxT(t)
	res, err := d.client.Probe(ctx, "n2", 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	if res.Node != "n2" || res.From != "n1" || res.Bytes != 8<<20 || res.Rate != apitest.FakeProbeRate || res.Addr != "127.0.0.2:7948" {
		t.Errorf("result %+v", res)
	}
	if res, err = d.client.Probe(ctx, "n2", 0); err != nil || res.Bytes != api.DefaultProbeBytes {
		t.Errorf("default size: %+v %v", res, err)
	}
	_, err = d.client.Probe(ctx, "nx", 0)
	wantAPIError(t, err, api.CodeNotFound, api.ErrNotFound, "not a member")
	_, err = d.client.Probe(ctx, "n3", 0)
	wantAPIError(t, err, api.CodeConflict, api.ErrConflict, "dead")
	_, err = d.client.Probe(ctx, "n1", 0)
	wantAPIError(t, err, api.CodeConflict, api.ErrConflict, "this node")
	_, err = d.client.Probe(ctx, "n2", api.MaxProbeBytes+1)
	wantAPIError(t, err, api.CodeBadRequest, api.ErrBadRequest, "bytes")
	status, _, body := rawDo(t, d.socket, http.MethodPost, "/v1/nodes/n2/probe?bytes=-1", "")
	wantErrorBody(t, status, body, http.StatusBadRequest, api.CodeBadRequest, "want 1 to")
	status, _, body = rawDo(t, d.socket, http.MethodPost, "/v1/nodes/bad%20name/probe", "")
	wantErrorBody(t, status, body, http.StatusBadRequest, api.CodeBadRequest, "not a node name")
}

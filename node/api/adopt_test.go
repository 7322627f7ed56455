package api_test

import (
	"net/http"
	"testing"

	"doppel/node/api"
)

// TestAdoptRoute: the client reaches the backend's Adopt with the request,
// and bad input is refused before it.
func TestAdoptRoute(t *testing.T) {
	f := newFake()
	d := startDaemon(t, f, testConfig(t))
	ctx := ctxT(t)
	info, err := d.client.Adopt(ctx, api.AdoptRequest{Pid: 4242, Name: "web", Replicas: 2, DataPaths: []string{"/srv/web"}})
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "web" || info.State != api.AppRunning || info.Replicas != 2 || len(info.Args) != 1 || info.Args[0] != "pid:4242" {
		t.Errorf("info %+v", info)
	}
	_, err = d.client.Adopt(ctx, api.AdoptRequest{Pid: 4243, Name: "web"})
	wantAPIError(t, err, api.CodeConflict, api.ErrConflict, "exists")
	_, err = d.client.Adopt(ctx, api.AdoptRequest{Pid: 0})
	wantAPIError(t, err, api.CodeBadRequest, api.ErrBadRequest, "--pid N")
	_, err = d.client.Adopt(ctx, api.AdoptRequest{Pid: 5, Name: "Bad Name"})
	wantAPIError(t, err, api.CodeBadRequest, api.ErrBadRequest, "name")
	_, err = d.client.Adopt(ctx, api.AdoptRequest{Pid: 5, DataPaths: []string{"rel"}})
	wantAPIError(t, err, api.CodeBadRequest, api.ErrBadRequest, "not absolute")
	status, _, body := rawDo(t, d.socket, http.MethodPost, "/v1/adopt", `{"pid":7,"bogus":1}`)
	wantErrorBody(t, status, body, http.StatusBadRequest, api.CodeBadRequest, "bogus")
	if info, err = d.client.Adopt(ctx, api.AdoptRequest{Pid: 77}); err != nil || info.Name != "adopted-77" {
		t.Errorf("adopt without a name: %+v %v", info, err)
	}
}

package api_test

import (
	"testing"

	"doppel/node/api"
)

func TestExportImport(t *testing.T) {
	d := startDaemon(t, newFake(), testConfig(t))
	run(t, d.client, "a")
	if _, err := d.client.Checkpoint(ctxT(t), "a"); err != nil {
		t.Fatal(err)
	}
	res, err := d.client.Export(ctxT(t), "a", api.ExportRequest{Path: "/tmp/a.dpl"})
	if err != nil {
		t.Fatal(err)
	}
	if res.App != "a" || res.Epoch != 1 || res.Path != "/tmp/a.dpl" {
		t.Errorf("Export = %+v", res)
	}
	_, err = d.client.Export(ctxT(t), "a", api.ExportRequest{Path: "rel.dpl"})
	wantAPIError(t, err, api.CodeBadRequest, api.ErrBadRequest, `path "rel.dpl" is not absolute`)
	_, err = d.client.Export(ctxT(t), "nope", api.ExportRequest{Path: "/tmp/x"})
	wantAPIError(t, err, api.CodeNotFound, api.ErrNotFound, `app "nope"`)

	_, err = d.client.Import(ctxT(t), api.ImportRequest{Path: "/tmp/a.dpl"})
	wantAPIError(t, err, api.CodeConflict, api.ErrConflict, `app "a" exists`)
	if err := d.client.Stop(ctxT(t), "a"); err != nil {
		t.Fatal(err)
	}
	if err := d.client.Remove(ctxT(t), "a"); err != nil {
		t.Fatal(err)
	}
	imp, err := d.client.Import(ctxT(t), api.ImportRequest{Path: "/tmp/a.dpl", Start: true})
	if err != nil {
		t.Fatal(err)
	}
	if imp.App != "a" || imp.Epoch != 1 || !imp.Started {
		t.Errorf("Import = %+v", imp)
	}
	_, err = d.client.Import(ctxT(t), api.ImportRequest{Path: ""})
	wantAPIError(t, err, api.CodeBadRequest, api.ErrBadRequest, "not absolute")
	status, _, body := rawDo(t, d.socket, "POST", "/v1/import", `{"path":"/x","bogus":1}`)
	wantErrorBody(t, status, body, 400, api.CodeBadRequest, "bogus")
}

package api

import (
	"context"
	"net/http"
	"path/filepath"
)

// ExportRequest asks the daemon to write an app's epoch to one portable
// archive file (POST /v1/apps/{name}/export). Progress is published as
// events of kind "app" with fields op "export", done and total (bytes).
type ExportRequest struct {
	// Path of the archive to write, absolute; on the daemon's machine.
	Path string `json:"path"`
	// Epoch to export; 0 means the newest this node holds.
	Epoch uint64 `json:"epoch,omitempty"`
}

// ExportResult describes a written archive.
type ExportResult struct {
	App   string `json:"app"`
	Epoch uint64 `json:"epoch"`
	Path  string `json:"path"`
	// Bytes is the archive's size; RawBytes the size of its content before
	// compression.
	Bytes    int64 `json:"bytes"`
	RawBytes int64 `json:"raw_bytes"`
}

// ImportRequest asks the daemon to register an app from an archive
// (POST /v1/import). Progress is published like an export's, op "import".
type ImportRequest struct {
	// Path of the archive, absolute; on the daemon's machine.
	Path string `json:"path"`
	// Start places the app on this node and restores it at once.
	Start bool `json:"start,omitempty"`
}

// ImportResult describes an imported app.
type ImportResult struct {
	App     string `json:"app"`
	Epoch   uint64 `json:"epoch"`
	Started bool   `json:"started"`
}

func postExport(s *Server, r *http.Request) (int, any, error) {
	name, err := pathName(r)
	if err != nil {
		return 0, nil, err
	}
	var req ExportRequest
	if err := s.decodeBody(r, &req); err != nil {
		return 0, nil, err
	}
	if req.Path == "" || !filepath.IsAbs(req.Path) {
		return 0, nil, badRequest("path %q is not absolute", req.Path)
	}
	res, err := s.backend.Export(r.Context(), name, req)
	return http.StatusOK, res, err
}

func postImport(s *Server, r *http.Request) (int, any, error) {
	var req ImportRequest
	if err := s.decodeBody(r, &req); err != nil {
		return 0, nil, err
	}
	if req.Path == "" || !filepath.IsAbs(req.Path) {
		return 0, nil, badRequest("path %q is not absolute", req.Path)
	}
	res, err := s.backend.Import(r.Context(), req)
	return http.StatusOK, res, err
}

// Export writes an app's epoch to an archive on the daemon's machine.
func (c *Client) Export(ctx context.Context, name string, req ExportRequest) (ExportResult, error) {
	var res ExportResult
	err := c.do(ctx, http.MethodPost, appPath(name, "/export"), nil, req, &res)
	return res, err
}

// Import registers an app from an archive on the daemon's machine.
func (c *Client) Import(ctx context.Context, req ImportRequest) (ImportResult, error) {
	var res ImportResult
	err := c.do(ctx, http.MethodPost, "/v1/import", nil, req, &res)
	return res, err
}

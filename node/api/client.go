package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Client is the typed client of the local API. It mirrors Backend (and
// satisfies it), plus Events and WaitReady. Safe for concurrent use.
//
// Every method returns an error wrapping ErrNoDaemon (a *NoDaemonError,
// whose message says how to start a daemon) when nothing answers on the
// socket, and an *Error wrapping the sentinel of its code when the daemon
// answers with an error. Commands are not retried.
type Client struct {
	socket string
	hc     *http.Client
}

var _ Backend = (*Client)(nil)

// NewClient returns a client of the daemon at the unix socket path
// ("" means DefaultSocket). It connects lazily, on the first call.
func NewClient(path string) *Client {
	if path == "" {
		path = DefaultSocket
	}
	c := &Client{socket: path}
	c.hc = &http.Client{Transport: &http.Transport{
		DialContext:         c.dial,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}}
	return c
}

// Socket is the path the client connects to.
func (c *Client) Socket() string { return c.socket }

// Close closes the client's idle connections. Open watchers are not
// affected.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

func (c *Client) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err == nil {
		return conn, nil
	}
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOTDIR) {
		return nil, &NoDaemonError{Socket: c.socket, Err: err}
	}
	if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
		return nil, fmt.Errorf("connect to the doppel daemon at %s: %w (the local API is for root)", c.socket, err)
	}
	return nil, fmt.Errorf("connect to the doppel daemon at %s: %w", c.socket, err)
}

// send makes one request and returns the answer whatever its status.
func (c *Client) send(ctx context.Context, method, path string, query url.Values, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	u := "http://doppel" + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		var nd *NoDaemonError
		if errors.As(err, &nd) {
			return nil, nd
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s %s: %w", method, path, context.Cause(ctx))
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("%s %s at %s: %w", method, path, c.socket, err)
	}
	return resp, nil
}

// do makes one request and decodes a 2xx answer into out (when not nil), or
// returns the error answer as an *Error.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	resp, err := c.send(ctx, method, path, query, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return readError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// readError turns an error answer into an *Error: the daemon's
// {"error","code"} object, or the status and first line of any other body.
func readError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var e Error
	if json.Unmarshal(b, &e) == nil && e.Code != "" {
		if sentinelOf(e.Code) == nil {
			e.Code = CodeInternal
		}
		e.Status = resp.StatusCode
		return &e
	}
	msg := strings.TrimSpace(string(b))
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	if msg == "" {
		msg = http.StatusText(resp.StatusCode)
	}
	return &Error{
		Code:    codeOfStatus(resp.StatusCode),
		Message: fmt.Sprintf("daemon answered %d: %s", resp.StatusCode, msg),
		Status:  resp.StatusCode,
	}
}

func appPath(name string, suffix string) string {
	return "/v1/apps/" + url.PathEscape(name) + suffix
}

// Status returns the daemon's view of the cluster.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, nil, &st)
	return st, err
}

// Nodes lists the cluster's members.
func (c *Client) Nodes(ctx context.Context) ([]NodeInfo, error) {
	var ns []NodeInfo
	err := c.do(ctx, http.MethodGet, "/v1/nodes", nil, nil, &ns)
	return ns, err
}

// Apps lists the cluster's apps.
func (c *Client) Apps(ctx context.Context) ([]AppInfo, error) {
	var as []AppInfo
	err := c.do(ctx, http.MethodGet, "/v1/apps", nil, nil, &as)
	return as, err
}

// App describes one app.
func (c *Client) App(ctx context.Context, name string) (AppDetail, error) {
	var d AppDetail
	err := c.do(ctx, http.MethodGet, appPath(name, ""), nil, nil, &d)
	return d, err
}

// Epochs lists an app's epochs, oldest first.
func (c *Client) Epochs(ctx context.Context, name string) ([]EpochInfo, error) {
	var es []EpochInfo
	err := c.do(ctx, http.MethodGet, appPath(name, "/epochs"), nil, nil, &es)
	return es, err
}

// Run registers and starts an app.
func (c *Client) Run(ctx context.Context, req RunRequest) (AppInfo, error) {
	var a AppInfo
	err := c.do(ctx, http.MethodPost, "/v1/apps", nil, req, &a)
	return a, err
}

// Checkpoint takes an epoch of a running app now.
func (c *Client) Checkpoint(ctx context.Context, name string) (EpochInfo, error) {
	var e EpochInfo
	err := c.do(ctx, http.MethodPost, appPath(name, "/checkpoint"), nil, nil, &e)
	return e, err
}

// Restore starts an app from an epoch (0: the newest); force restores over
// a running copy.
func (c *Client) Restore(ctx context.Context, name string, epoch uint64, force bool) (AppInfo, error) {
	q := url.Values{}
	if epoch != 0 {
		q.Set("epoch", strconv.FormatUint(epoch, 10))
	}
	if force {
		q.Set("force", "1")
	}
	var a AppInfo
	err := c.do(ctx, http.MethodPost, appPath(name, "/restore"), q, nil, &a)
	return a, err
}

// Failover moves the app to a clone (to: a node name, or "" for the
// election's choice).
func (c *Client) Failover(ctx context.Context, name, to string, force bool) (AppInfo, error) {
	q := url.Values{}
	if to != "" {
		q.Set("to", to)
	}
	if force {
		q.Set("force", "1")
	}
	var a AppInfo
	err := c.do(ctx, http.MethodPost, appPath(name, "/failover"), q, nil, &a)
	return a, err
}

// Stop stops a running app.
func (c *Client) Stop(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, appPath(name, "/stop"), nil, nil, nil)
}

// Remove forgets a stopped app.
func (c *Client) Remove(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, appPath(name, ""), nil, nil, nil)
}

// WaitReady polls GET /v1/status until the daemon answers it successfully,
// for scripts and tests that start a daemon. It keeps polling while nothing
// answers (ErrNoDaemon) or the daemon is not ready (ErrUnavailable), every
// 20 ms at first and at most every 500 ms; any other error is returned at
// once. When ctx ends first, the error wraps ctx's error and the last
// error seen.
func (c *Client) WaitReady(ctx context.Context) error {
	delay := 20 * time.Millisecond
	for {
		_, err := c.Status(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("wait for the doppel daemon at %s: %w (last error: %w)", c.socket, context.Cause(ctx), err)
		}
		if !errors.Is(err, ErrNoDaemon) && !errors.Is(err, ErrUnavailable) {
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for the doppel daemon at %s: %w (last error: %w)", c.socket, context.Cause(ctx), err)
		case <-t.C:
		}
		delay = min(2*delay, 500*time.Millisecond)
	}
}

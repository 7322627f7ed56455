package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Config tunes a Server. DefaultConfig sets every field.
type Config struct {
	// Logger receives request and stream logs; nil discards them.
	Logger *slog.Logger
	// Heartbeat is the interval between keep-alive lines on an event
	// stream.
	Heartbeat time.Duration
	// WriteTimeout bounds the writing of one answer or one event line; an
	// event client that reads nothing for this long is dropped.
	WriteTimeout time.Duration
	// ReadHeaderTimeout bounds the reading of a request's headers.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle for this long.
	IdleTimeout time.Duration
	// MaxBodyBytes caps a request body.
	MaxBodyBytes int64
}

// DefaultConfig is the daemon's configuration of the API server.
func DefaultConfig() Config {
	return Config{
		Logger:            nil,
		Heartbeat:         15 * time.Second,
		WriteTimeout:      10 * time.Second,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxBodyBytes:      1 << 20,
	}
}

// Server serves the local API of one daemon over HTTP/1.1. Create it with
// NewServer, run it with Serve (or Listen and ServeListener), stop it with
// Shutdown. Its methods are safe for concurrent use.
type Server struct {
	backend Backend
	cfg     Config
	log     *slog.Logger
	mux     *http.ServeMux
	http    *http.Server

	closing   chan struct{} // closed by Shutdown: ends event streams
	closeOnce sync.Once
}

// route is one entry of the handler table.
type route struct {
	method  string
	path    string // a ServeMux path pattern
	handler func(s *Server, w http.ResponseWriter, r *http.Request)
}

// routes is the API's handler table. Keep the package doc in step.
var routes = []route{
	{http.MethodGet, "/v1/status", jsonHandler(getStatus)},
	{http.MethodGet, "/v1/nodes", jsonHandler(getNodes)},
	{http.MethodGet, "/v1/apps", jsonHandler(getApps)},
	{http.MethodPost, "/v1/apps", jsonHandler(postApps)},
	{http.MethodGet, "/v1/apps/{name}", jsonHandler(getApp)},
	{http.MethodDelete, "/v1/apps/{name}", jsonHandler(deleteApp)},
	{http.MethodGet, "/v1/apps/{name}/epochs", jsonHandler(getEpochs)},
	{http.MethodPost, "/v1/apps/{name}/checkpoint", jsonHandler(postCheckpoint)},
	{http.MethodPost, "/v1/apps/{name}/restore", jsonHandler(postRestore)},
	{http.MethodPost, "/v1/apps/{name}/stop", jsonHandler(postStop)},
	{http.MethodPost, "/v1/apps/{name}/export", jsonHandler(postExport)},
	{http.MethodPost, "/v1/import", jsonHandler(postImport)},
	{http.MethodPost, "/v1/adopt", jsonHandler(postAdopt)},
	{http.MethodPost, "/v1/apps/{name}/failover", jsonHandler(postFailover)},
	{http.MethodPost, "/v1/apps/{name}/relocate", jsonHandler(postRelocate)},
	{http.MethodPost, "/v1/nodes/{name}/drain", jsonHandler(postDrain)},
	{http.MethodPost, "/v1/nodes/{name}/undrain", jsonHandler(postUndrain)},
	{http.MethodPost, "/v1/nodes/{name}/probe", jsonHandler(postProbe)},
	{http.MethodGet, "/v1/balance", jsonHandler(getBalance)},
	{http.MethodGet, "/v1/events", (*Server).serveEvents},
}

// NewServer returns a server of b. Zero fields of cfg take their
// DefaultConfig value.
func NewServer(b Backend, cfg Config) *Server {
	def := DefaultConfig()
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = def.Heartbeat
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = def.WriteTimeout
	}
	if cfg.ReadHeaderTimeout <= 0 {
		cfg.ReadHeaderTimeout = def.ReadHeaderTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = def.IdleTimeout
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = def.MaxBodyBytes
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		backend: b,
		cfg:     cfg,
		log:     log,
		mux:     http.NewServeMux(),
		closing: make(chan struct{}),
	}
	for _, rt := range routes {
		h := rt.handler
		s.mux.HandleFunc(rt.method+" "+rt.path, func(w http.ResponseWriter, r *http.Request) { h(s, w, r) })
	}
	s.http = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return s
}

// Serve listens on the unix socket at path (see Listen for the socket's
// care) and serves until Shutdown; it then returns nil. It fails at once if
// the socket cannot be bound, e.g. with an error wrapping ErrDaemonRunning.
func (s *Server) Serve(path string) error {
	ln, err := Listen(path)
	if err != nil {
		return err
	}
	return s.ServeListener(ln)
}

// ServeListener serves on ln until Shutdown, then returns nil. It closes ln.
func (s *Server) ServeListener(ln net.Listener) error {
	defer ln.Close()
	s.log.Info("local API listening", "addr", ln.Addr().String())
	err := s.http.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops the server gracefully: it stops accepting, ends every event
// stream (clients see the end of the stream), waits for requests in flight,
// and removes the socket. When ctx ends first it closes the remaining
// connections and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeOnce.Do(func() { close(s.closing) })
	err := s.http.Shutdown(ctx)
	if err != nil {
		s.http.Close()
	}
	return err
}

// ServeHTTP routes a request through the handler table. A path that no
// route matches is not_found; a known path with another method is
// bad_request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	if _, pattern := s.mux.Handler(r); pattern == "" {
		s.noRoute(sw, r)
	} else {
		s.mux.ServeHTTP(sw, r) // sets the path values
	}
	s.log.Debug("api request", "method", r.Method, "path", r.URL.Path, "status", sw.status, "duration", time.Since(start))
}

func (s *Server) noRoute(w http.ResponseWriter, r *http.Request) {
	var allowed []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodDelete} {
		if m == r.Method {
			continue
		}
		r2 := r.Clone(r.Context())
		r2.Method = m
		if _, p := s.mux.Handler(r2); p != "" {
			allowed = append(allowed, m)
		}
	}
	if len(allowed) > 0 {
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		s.writeError(w, r, &Error{Code: CodeBadRequest, Message: fmt.Sprintf("method %s not allowed on %s (use %s)", r.Method, r.URL.Path, strings.Join(allowed, " or "))})
		return
	}
	s.writeError(w, r, &Error{Code: CodeNotFound, Message: fmt.Sprintf("no API endpoint %s %s", r.Method, r.URL.Path)})
}

// jsonHandler adapts a handler that returns a value (written as JSON with
// status, or no body when it is nil) or an error.
func jsonHandler(h func(s *Server, r *http.Request) (int, any, error)) func(*Server, http.ResponseWriter, *http.Request) {
	return func(s *Server, w http.ResponseWriter, r *http.Request) {
		status, v, err := h(s, r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		s.writeJSON(w, status, v)
	}
}

func (s *Server) writeJSON(w http.ResponseWriter, status int, v any) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	if v == nil {
		w.WriteHeader(status)
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		s.writeError(w, nil, fmt.Errorf("encode answer: %w", err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// writeError answers {"error": message, "code": code} with the code's
// status. Internal errors are logged.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code := codeOf(err)
	if code == CodeInternal {
		attrs := []any{"err", err}
		if r != nil {
			attrs = append(attrs, "method", r.Method, "path", r.URL.Path)
		}
		s.log.Error("api request failed", attrs...)
	}
	b, _ := json.Marshal(Error{Code: code, Message: err.Error()})
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(statusOf(code))
	w.Write(append(b, '\n'))
}

// statusWriter records the status of an answer for the request log. It
// unwraps for http.ResponseController (flush, deadlines).
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// appNameRE is the app name rule of replicate.ValidName, checked here so a
// bad name is refused before it reaches the backend.
var appNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

func checkName(name string) error {
	if name == "" {
		return badRequest("app name is empty")
	}
	if !appNameRE.MatchString(name) {
		return badRequest("bad app name %q: use lower-case letters, digits, '.', '_' or '-' (at most 63, starting with a letter or digit)", name)
	}
	return nil
}

// pathName is the {name} of the request path, checked.
func pathName(r *http.Request) (string, error) {
	name := r.PathValue("name")
	return name, checkName(name)
}

// decodeBody reads the request body as exactly one JSON value into v,
// refusing unknown members, trailing data and bodies over the size limit.
func (s *Server) decodeBody(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, s.cfg.MaxBodyBytes+1))
	if err != nil {
		return fmt.Errorf("read request body: %w", err)
	}
	if int64(len(body)) > s.cfg.MaxBodyBytes {
		return badRequest("request body is larger than %d bytes", s.cfg.MaxBodyBytes)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return badRequest("request body is empty: send a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("bad request body: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("bad request body: data after the JSON object")
	}
	return nil
}

func getStatus(s *Server, r *http.Request) (int, any, error) {
	st, err := s.backend.Status(r.Context())
	return http.StatusOK, st, err
}

func getNodes(s *Server, r *http.Request) (int, any, error) {
	ns, err := s.backend.Nodes(r.Context())
	if ns == nil {
		ns = []NodeInfo{}
	}
	return http.StatusOK, ns, err
}

func getApps(s *Server, r *http.Request) (int, any, error) {
	as, err := s.backend.Apps(r.Context())
	if as == nil {
		as = []AppInfo{}
	}
	return http.StatusOK, as, err
}

func getApp(s *Server, r *http.Request) (int, any, error) {
	name, err := pathName(r)
	if err != nil {
		return 0, nil, err
	}
	d, err := s.backend.App(r.Context(), name)
	if d.Epochs == nil {
		d.Epochs = []EpochInfo{}
	}
	return http.StatusOK, d, err
}

func getEpochs(s *Server, r *http.Request) (int, any, error) {
	name, err := pathName(r)
	if err != nil {
		return 0, nil, err
	}
	es, err := s.backend.Epochs(r.Context(), name)
	if es == nil {
		es = []EpochInfo{}
	}
	return http.StatusOK, es, err
}

func postApps(s *Server, r *http.Request) (int, any, error) {
	var req RunRequest
	if err := s.decodeBody(r, &req); err != nil {
		return 0, nil, err
	}
	if err := checkRun(req); err != nil {
		return 0, nil, err
	}
	a, err := s.backend.Run(r.Context(), req)
	return http.StatusCreated, a, err
}

// checkRun validates a RunRequest.
func checkRun(req RunRequest) error {
	if err := checkName(req.Name); err != nil {
		return err
	}
	if len(req.Args) == 0 || req.Args[0] == "" {
		return badRequest("no command: args is empty")
	}
	if req.Dir != "" && !filepath.IsAbs(req.Dir) {
		return badRequest("dir %q is not absolute", req.Dir)
	}
	for i, e := range req.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return badRequest("env[%d] %q is not KEY=VALUE", i, e)
		}
	}
	for i, p := range req.DataPaths {
		if !filepath.IsAbs(p) {
			return badRequest("data_paths[%d] %q is not absolute", i, p)
		}
	}
	if req.Replicas < 0 {
		return badRequest("replicas is %d, want 0 or more", req.Replicas)
	}
	if req.Interval < 0 {
		return badRequest("interval is %s, want 0 or more", req.Interval)
	}
	switch req.Policy {
	case "", "restart", "failover", "none":
	default:
		return badRequest("policy %q: use restart, failover or none", req.Policy)
	}
	if h := req.Health; h != "" && !strings.HasPrefix(h, "tcp:") && !strings.HasPrefix(h, "http://") &&
		!strings.HasPrefix(h, "https://") && !strings.HasPrefix(h, "cmd:") {
		return badRequest("health %q: use tcp:HOST:PORT, http://HOST:PORT/PATH or cmd:COMMAND", h)
	}
	if sv := req.Service; sv != nil {
		if _, _, err := net.SplitHostPort(sv.Listen); err != nil {
			return badRequest("service listen %q: use HOST:PORT or :PORT", sv.Listen)
		}
		if _, _, err := net.SplitHostPort(sv.Target); err != nil {
			return badRequest("service target %q: use HOST:PORT", sv.Target)
		}
		switch sv.Framing {
		case "", "line", "len32", "raw":
		default:
			return badRequest("service framing %q: use line, len32 or raw", sv.Framing)
		}
		switch sv.Journal {
		case "", "sync", "async", "off":
		default:
			return badRequest("service journal %q: use sync, async or off", sv.Journal)
		}
		if (sv.VIP == "") != (sv.VIPDev == "") {
			return badRequest("service vip %q and vip_dev %q: give both or neither", sv.VIP, sv.VIPDev)
		}
		if sv.VIP != "" {
			if ip, _, err := net.ParseCIDR(sv.VIP); err != nil || ip.To4() == nil {
				return badRequest("service vip %q: use an IPv4 ADDR/PREFIX, e.g. 10.0.0.50/24", sv.VIP)
			}
		}
	}
	return nil
}

func postCheckpoint(s *Server, r *http.Request) (int, any, error) {
	name, err := pathName(r)
	if err != nil {
		return 0, nil, err
	}
	e, err := s.backend.Checkpoint(r.Context(), name)
	return http.StatusOK, e, err
}

func postRestore(s *Server, r *http.Request) (int, any, error) {
	name, err := pathName(r)
	if err != nil {
		return 0, nil, err
	}
	q := r.URL.Query()
	var epoch uint64
	if v := q.Get("epoch"); v != "" {
		if epoch, err = strconv.ParseUint(v, 10, 64); err != nil {
			return 0, nil, badRequest("epoch %q is not a number", v)
		}
	}
	var force bool
	if v := q.Get("force"); v != "" {
		if force, err = strconv.ParseBool(v); err != nil {
			return 0, nil, badRequest("force %q is not a boolean (use 1 or 0)", v)
		}
	}
	a, err := s.backend.Restore(r.Context(), name, epoch, force)
	return http.StatusOK, a, err
}

func postFailover(s *Server, r *http.Request) (int, any, error) {
	name, err := pathName(r)
	if err != nil {
		return 0, nil, err
	}
	q := r.URL.Query()
	to := q.Get("to")
	if to != "" && !nodeNameRE.MatchString(to) {
		return 0, nil, badRequest("to %q is not a node name", to)
	}
	var force bool
	if v := q.Get("force"); v != "" {
		if force, err = strconv.ParseBool(v); err != nil {
			return 0, nil, badRequest("force %q is not a boolean (use 1 or 0)", v)
		}
	}
	a, err := s.backend.Failover(r.Context(), name, to, force)
	return http.StatusOK, a, err
}

var nodeNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func postStop(s *Server, r *http.Request) (int, any, error) {
	name, err := pathName(r)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusNoContent, nil, s.backend.Stop(r.Context(), name)
}

func deleteApp(s *Server, r *http.Request) (int, any, error) {
	name, err := pathName(r)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusNoContent, nil, s.backend.Remove(r.Context(), name)
}

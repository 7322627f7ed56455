package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"doppel/node/api"
)

// run starts app name through the client and fails the test on error.
func run(t *testing.T, c *api.Client, name string) api.AppInfo {
	t.Helper()
	a, err := c.Run(ctxT(t), api.RunRequest{Name: name, Args: []string{"/bin/sleep", "1000"}, Replicas: 2, Interval: api.Duration(5 * time.Second)})
	if err != nil {
		t.Fatalf("Run %s: %v", name, err)
	}
	return a
}

func TestStatus(t *testing.T) {
	f := newFake()
	d := startDaemon(t, f, testConfig(t))
	run(t, d.client, "a")
	st, err := d.client.Status(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	want := api.Status{Node: "n1", Leader: "n1", Quorum: true, Members: 1, Apps: 1, Version: "test"}
	if st != want {
		t.Errorf("Status = %+v, want %+v", st, want)
	}

	f.Fail("Status", fmt.Errorf("no quorum: 1 of 3 voters: %w", api.ErrUnavailable))
	_, err = d.client.Status(ctxT(t))
	wantAPIError(t, err, api.CodeUnavailable, api.ErrUnavailable, "no quorum: 1 of 3 voters")

	f.Fail("Status", errors.New("disk on fire"))
	_, err = d.client.Status(ctxT(t))
	wantAPIError(t, err, api.CodeInternal, nil, "disk on fire")
	var ae *api.Error
	if errors.As(err, &ae) && ae.Status != http.StatusInternalServerError {
		t.Errorf("status %d, want 500", ae.Status)
	}

	f.Fail("Status", context.DeadlineExceeded)
	_, err = d.client.Status(ctxT(t))
	wantAPIError(t, err, api.CodeUnavailable, api.ErrUnavailable, "deadline exceeded")
}

func TestNodes(t *testing.T) {
	f := newFake()
	d := startDaemon(t, f, testConfig(t))
	since := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	nodes := []api.NodeInfo{
		{Name: "n1", Role: "worker", State: api.NodeAlive, Leader: true, Voter: true, Self: true, Load: 0.5,
			MemFree: 1 << 30, MemTotal: 4 << 30, Apps: []string{"a"}, Clones: []string{}, Version: "1.0", CRIU: "4.2.1", Addr: "127.0.0.11:7948", Since: since},
		{Name: "w", Role: "witness", State: api.NodeSuspect, Drained: true, Apps: []string{}, Clones: []string{"a"}, Since: since},
	}
	f.SetNodes(nodes)
	got, err := d.client.Nodes(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, nodes) {
		t.Errorf("Nodes =\n%+v\nwant\n%+v", got, nodes)
	}

	f.SetNodes(nil)
	status, _, body := rawDo(t, d.socket, "GET", "/v1/nodes", "")
	if status != 200 || strings.TrimSpace(string(body)) != "[]" {
		t.Errorf("empty node list: %d %s, want 200 []", status, body)
	}

	f.Fail("Nodes", fmt.Errorf("membership not started: %w", api.ErrUnavailable))
	_, err = d.client.Nodes(ctxT(t))
	wantAPIError(t, err, api.CodeUnavailable, api.ErrUnavailable, "membership not started")
}

func TestApps(t *testing.T) {
	f := newFake()
	d := startDaemon(t, f, testConfig(t))
	status, _, body := rawDo(t, d.socket, "GET", "/v1/apps", "")
	if status != 200 || strings.TrimSpace(string(body)) != "[]" {
		t.Errorf("no apps: %d %s, want 200 []", status, body)
	}
	b := run(t, d.client, "b")
	a := run(t, d.client, "a")
	got, err := d.client.Apps(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, []api.AppInfo{a, b}) {
		t.Errorf("Apps = %+v, want [a b]", got)
	}
	f.Fail("Apps", errors.New("state unreadable"))
	_, err = d.client.Apps(ctxT(t))
	wantAPIError(t, err, api.CodeInternal, nil, "state unreadable")
}

func TestApp(t *testing.T) {
	d := startDaemon(t, newFake(), testConfig(t))
	a := run(t, d.client, "web.1")
	if _, err := d.client.Checkpoint(ctxT(t), "web.1"); err != nil {
		t.Fatal(err)
	}
	got, err := d.client.App(ctxT(t), "web.1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "web.1" || got.State != api.AppRunning || got.NewestEpoch != 1 || len(got.Epochs) != 1 ||
		got.Interval != a.Interval || !reflect.DeepEqual(got.Args, a.Args) {
		t.Errorf("App = %+v", got)
	}

	_, err = d.client.App(ctxT(t), "nope")
	wantAPIError(t, err, api.CodeNotFound, api.ErrNotFound, `app "nope": not found`)

	_, err = d.client.App(ctxT(t), "Bad")
	wantAPIError(t, err, api.CodeBadRequest, api.ErrBadRequest, `bad app name "Bad"`)
	_, err = d.client.App(ctxT(t), "a/b")
	wantAPIError(t, err, api.CodeBadRequest, api.ErrBadRequest, `bad app name "a/b"`)
}

func TestEpochs(t *testing.T) {
	d := startDaemon(t, newFake(), testConfig(t))
	run(t, d.client, "a")
	status, _, body := rawDo(t, d.socket, "GET", "/v1/apps/a/epochs", "")
	if status != 200 || strings.TrimSpace(string(body)) != "[]" {
		t.Errorf("no epochs: %d %s, want 200 []", status, body)
	}
	for range 3 {
		if _, err := d.client.Checkpoint(ctxT(t), "a"); err != nil {
			t.Fatal(err)
		}
	}
	es, err := d.client.Epochs(ctxT(t), "a")
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 3 {
		t.Fatalf("%d epochs, want 3", len(es))
	}
	for i, e := range es {
		if e.Epoch != uint64(i+1) || e.Parent != uint64(i) || e.App != "a" {
			t.Errorf("epoch %d = %+v", i, e)
		}
	}
	_, err = d.client.Epochs(ctxT(t), "nope")
	wantAPIError(t, err, api.CodeNotFound, api.ErrNotFound, `app "nope"`)
	_, err = d.client.Epochs(ctxT(t), "-x")
	wantAPIError(t, err, api.CodeBadRequest, api.ErrBadRequest, `bad app name "-x"`)
}

func TestRun(t *testing.T) {
	d := startDaemon(t, newFake(), testConfig(t))
	req := api.RunRequest{
		Name: "db", Args: []string{"/usr/bin/db", "-p", "5432"}, Dir: "/srv", Env: []string{"A=1"},
		DataPaths: []string{"/srv/data"}, Replicas: 2, Interval: api.Duration(1500 * time.Millisecond),
	}
	a, err := d.client.Run(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if a.Name != "db" || a.OP != "n1" || a.Term != 1 || a.State != api.AppRunning || a.Replicas != 2 ||
		a.Interval != req.Interval || !reflect.DeepEqual(a.DataPaths, req.DataPaths) || !reflect.DeepEqual(a.Args, req.Args) {
		t.Errorf("Run = %+v", a)
	}
	status, _, body := rawDo(t, d.socket, "POST", "/v1/apps", `{"name":"db2","args":["x"],"interval":"5s"}`)
	if status != http.StatusCreated {
		t.Errorf("POST /v1/apps: status %d, want 201 (%s)", status, body)
	}
	status, _, body = rawDo(t, d.socket, "POST", "/v1/apps", `{"name":"db3","args":["x"],"interval":2000000000}`)
	if status != http.StatusCreated || !strings.Contains(string(body), `"interval":"2s"`) {
		t.Errorf("interval in nanoseconds: %d %s, want 201 with \"2s\"", status, body)
	}

	_, err = d.client.Run(ctxT(t), req)
	wantAPIError(t, err, api.CodeConflict, api.ErrConflict, `app "db" exists`)

	_, err = d.client.Run(ctxT(t), api.RunRequest{Args: []string{"x"}})
	wantAPIError(t, err, api.CodeBadRequest, api.ErrBadRequest, "app name is empty")
}

func TestRunBadRequests(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxBodyBytes = 4096
	f := newFake()
	d := startDaemon(t, f, cfg)
	for _, tc := range []struct{ name, body, msg string }{
		{"empty body", ``, "request body is empty"},
		{"bad json", `{"name":`, "bad request body"},
		{"not an object", `[1,2]`, "bad request body"},
		{"unknown member", `{"name":"a","args":["x"],"replicaz":1}`, `unknown field "replicaz"`},
		{"trailing data", `{"name":"a","args":["x"]} {}`, "data after the JSON object"},
		{"wrong type", `{"name":"a","args":"x"}`, "bad request body"},
		{"empty name", `{"name":"","args":["x"]}`, "app name is empty"},
		{"no name", `{"args":["x"]}`, "app name is empty"},
		{"bad name", `{"name":"A B","args":["x"]}`, `bad app name "A B"`},
		{"no args", `{"name":"a"}`, "no command"},
		{"empty command", `{"name":"a","args":[""]}`, "no command"},
		{"relative dir", `{"name":"a","args":["x"],"dir":"srv"}`, `dir "srv" is not absolute`},
		{"bad env", `{"name":"a","args":["x"],"env":["A=1","B"]}`, `env[1] "B" is not KEY=VALUE`},
		{"relative data path", `{"name":"a","args":["x"],"data_paths":["/ok","data"]}`, `data_paths[1] "data" is not absolute`},
		{"negative replicas", `{"name":"a","args":["x"],"replicas":-1}`, "replicas is -1"},
		{"negative interval", `{"name":"a","args":["x"],"interval":"-5s"}`, "interval is -5s"},
		{"bad interval", `{"name":"a","args":["x"],"interval":"5 parsecs"}`, "want a Go duration"},
		{"fractional interval", `{"name":"a","args":["x"],"interval":1.5}`, "whole number of nanoseconds"},
		{"too large", `{"name":"a","args":["` + strings.Repeat("x", 5000) + `"]}`, "larger than 4096 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, _, body := rawDo(t, d.socket, "POST", "/v1/apps", tc.body)
			wantErrorBody(t, status, body, http.StatusBadRequest, api.CodeBadRequest, tc.msg)
		})
	}
	if as, _ := f.Apps(ctxT(t)); len(as) != 0 {
		t.Errorf("bad requests reached the backend: %+v", as)
	}
}

func TestCheckpoint(t *testing.T) {
	d := startDaemon(t, newFake(), testConfig(t))
	run(t, d.client, "a")
	e, err := d.client.Checkpoint(ctxT(t), "a")
	if err != nil {
		t.Fatal(err)
	}
	if e.App != "a" || e.Epoch != 1 || e.Parent != 0 || e.Phases.PRM != 4 || e.Created.IsZero() {
		t.Errorf("Checkpoint = %+v", e)
	}
	_, err = d.client.Checkpoint(ctxT(t), "nope")
	wantAPIError(t, err, api.CodeNotFound, api.ErrNotFound, `app "nope"`)
	if err := d.client.Stop(ctxT(t), "a"); err != nil {
		t.Fatal(err)
	}
	_, err = d.client.Checkpoint(ctxT(t), "a")
	wantAPIError(t, err, api.CodeConflict, api.ErrConflict, `app "a" is stopped`)
	_, err = d.client.Checkpoint(ctxT(t), "")
	wantAPIError(t, err, api.CodeBadRequest, api.ErrBadRequest, "")
}

func TestRestore(t *testing.T) {
	d := startDaemon(t, newFake(), testConfig(t))
	run(t, d.client, "a")
	for range 2 {
		if _, err := d.client.Checkpoint(ctxT(t), "a"); err != nil {
			t.Fatal(err)
		}
	}
	_, err := d.client.Restore(ctxT(t), "a", 0, false)
	wantAPIError(t, err, api.CodeConflict, api.ErrConflict, `app "a" is running`)

	a, err := d.client.Restore(ctxT(t), "a", 1, true)
	if err != nil {
		t.Fatal(err)
	}
	if a.State != api.AppRunning || a.Term != 2 {
		t.Errorf("forced Restore = %+v, want running at term 2", a)
	}
	if err := d.client.Stop(ctxT(t), "a"); err != nil {
		t.Fatal(err)
	}
	a, err = d.client.Restore(ctxT(t), "a", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	if a.State != api.AppRunning || a.Term != 3 {
		t.Errorf("Restore = %+v, want running at term 3", a)
	}

	_, err = d.client.Restore(ctxT(t), "a", 9, true)
	wantAPIError(t, err, api.CodeNotFound, api.ErrNotFound, "no epoch 9")
	_, err = d.client.Restore(ctxT(t), "nope", 0, false)
	wantAPIError(t, err, api.CodeNotFound, api.ErrNotFound, `app "nope"`)
	_, err = d.client.Restore(ctxT(t), "NOPE", 0, false)
	wantAPIError(t, err, api.CodeBadRequest, api.ErrBadRequest, `bad app name "NOPE"`)

	status, _, body := rawDo(t, d.socket, "POST", "/v1/apps/a/restore?epoch=x", "")
	wantErrorBody(t, status, body, http.StatusBadRequest, api.CodeBadRequest, `epoch "x" is not a number`)
	status, _, body = rawDo(t, d.socket, "POST", "/v1/apps/a/restore?force=maybe", "")
	wantErrorBody(t, status, body, http.StatusBadRequest, api.CodeBadRequest, `force "maybe" is not a boolean`)
	status, _, body = rawDo(t, d.socket, "POST", "/v1/apps/a/restore?epoch=2&force=true", "")
	if status != http.StatusOK {
		t.Errorf("restore with query: %d %s", status, body)
	}
}

func TestStop(t *testing.T) {
	d := startDaemon(t, newFake(), testConfig(t))
	run(t, d.client, "a")
	if err := d.client.Stop(ctxT(t), "a"); err != nil {
		t.Fatal(err)
	}
	a, err := d.client.App(ctxT(t), "a")
	if err != nil || a.State != api.AppStopped {
		t.Errorf("after Stop: %+v, %v", a, err)
	}
	status, _, body := rawDo(t, d.socket, "POST", "/v1/apps/a/stop", "")
	wantErrorBody(t, status, body, http.StatusConflict, api.CodeConflict, "already stopped")
	err = d.client.Stop(ctxT(t), "a")
	wantAPIError(t, err, api.CodeConflict, api.ErrConflict, `app "a" is already stopped`)
	err = d.client.Stop(ctxT(t), "nope")
	wantAPIError(t, err, api.CodeNotFound, api.ErrNotFound, `app "nope"`)
	err = d.client.Stop(ctxT(t), "x y")
	wantAPIError(t, err, api.CodeBadRequest, api.ErrBadRequest, `bad app name "x y"`)
}

func TestRemove(t *testing.T) {
	d := startDaemon(t, newFake(), testConfig(t))
	run(t, d.client, "a")
	err := d.client.Remove(ctxT(t), "a")
	wantAPIError(t, err, api.CodeConflict, api.ErrConflict, "stop it first")
	if err := d.client.Stop(ctxT(t), "a"); err != nil {
		t.Fatal(err)
	}
	status, _, body := rawDo(t, d.socket, "DELETE", "/v1/apps/a", "")
	if status != http.StatusNoContent || len(body) != 0 {
		t.Errorf("DELETE: %d %q, want 204 and no body", status, body)
	}
	_, err = d.client.App(ctxT(t), "a")
	wantAPIError(t, err, api.CodeNotFound, api.ErrNotFound, `app "a"`)
	err = d.client.Remove(ctxT(t), "a")
	wantAPIError(t, err, api.CodeNotFound, api.ErrNotFound, `app "a"`)
	err = d.client.Remove(ctxT(t), "_a")
	wantAPIError(t, err, api.CodeBadRequest, api.ErrBadRequest, `bad app name "_a"`)
}

func TestUnknownRoutes(t *testing.T) {
	d := startDaemon(t, newFake(), testConfig(t))
	status, _, body := rawDo(t, d.socket, "GET", "/v1/nope", "")
	wantErrorBody(t, status, body, http.StatusNotFound, api.CodeNotFound, "no API endpoint GET /v1/nope")
	status, _, body = rawDo(t, d.socket, "GET", "/v2/status", "")
	wantErrorBody(t, status, body, http.StatusNotFound, api.CodeNotFound, "no API endpoint")
	status, hdr, body := rawDo(t, d.socket, "POST", "/v1/status", "{}")
	wantErrorBody(t, status, body, http.StatusBadRequest, api.CodeBadRequest, "method POST not allowed on /v1/status (use GET)")
	if hdr.Get("Allow") != "GET" {
		t.Errorf("Allow %q, want GET", hdr.Get("Allow"))
	}
	status, hdr, body = rawDo(t, d.socket, "PUT", "/v1/apps/a", "{}")
	wantErrorBody(t, status, body, http.StatusBadRequest, api.CodeBadRequest, "not allowed")
	if hdr.Get("Allow") != "GET, DELETE" {
		t.Errorf("Allow %q, want GET, DELETE", hdr.Get("Allow"))
	}
}

// TestConcurrentRequests runs many requests at once (run it with -race).
func TestConcurrentRequests(t *testing.T) {
	d := startDaemon(t, newFake(), testConfig(t))
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 8 {
		wg.Go(func() {
			name := fmt.Sprintf("app%d", i)
			if _, err := d.client.Run(ctxT(t), api.RunRequest{Name: name, Args: []string{"x"}}); err != nil {
				errs <- err
				return
			}
			for range 10 {
				if _, err := d.client.Checkpoint(ctxT(t), name); err != nil {
					errs <- err
					return
				}
				if _, err := d.client.Apps(ctxT(t)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range 8 {
		es, err := d.client.Epochs(ctxT(t), fmt.Sprintf("app%d", i))
		if err != nil || len(es) != 10 {
			t.Errorf("app%d: %d epochs, %v", i, len(es), err)
		}
	}
}

// TestJSONNames pins the wire names of every type.
func TestJSONNames(t *testing.T) {
	keys := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		var ks []string
		for k := range m {
			ks = append(ks, k)
		}
		return strings.Join(sortStrings(ks), " ")
	}
	raw := json.RawMessage(`{}`)
	for _, tc := range []struct {
		v    any
		want string
	}{
		{api.Status{QuorumReason: "x"}, "apps leader members node quorum quorum_reason version"},
		{api.NodeInfo{}, "addr apps clones criu drained leader load mem_free mem_total name role self since state version voter"},
		{api.CloneInfo{LastError: "x"}, "acked_epoch bytes_sent lag_epochs lag_seconds last_ack last_error node state"},
		{api.AppInfo{Service: "x"}, "args clones data_paths interval journal_backlog name newest_epoch newest_epoch_age_seconds op pid replicas service state term"},
		{api.AppDetail{Graph: raw}, "args clones data_paths epochs graph interval journal_backlog name newest_epoch newest_epoch_age_seconds op pid replicas state term"},
		{api.EpochInfo{Nodes: []string{"a"}, Manifest: raw}, "app barrier bytes_raw bytes_stored created data_blocks_changed epoch manifest nodes pages_changed pages_new pages_scanned parent phases_ms term"},
		{api.PhaseTimes{}, "ack frozen ingest prm psb rm srm xfer"},
		{api.RunRequest{Dir: "/", Env: []string{"A=1"}, DataPaths: []string{"/"}, Replicas: 1, Interval: 1}, "args data_paths dir env interval name replicas"},
		{api.Event{Seq: 1, Node: "n", App: "a", Epoch: 1, Phase: "PSB", End: true, DurationMs: 1, Message: "m", Fields: map[string]any{"k": 1}},
			"app duration_ms end epoch fields kind message node phase seq time"},
		{api.Event{Kind: api.KindHeartbeat}, "kind time"},
		{api.Error{Code: "x", Message: "y", Status: 500}, "code error"},
	} {
		if got := keys(tc.v); got != tc.want {
			t.Errorf("%T members:\n got %s\nwant %s", tc.v, got, tc.want)
		}
	}
}

func sortStrings(s []string) []string {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s
}

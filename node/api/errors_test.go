package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestCodeOf(t *testing.T) {
	for _, tc := range []struct {
		err    error
		code   string
		status int
	}{
		{fmt.Errorf("app %q: %w", "a", ErrNotFound), CodeNotFound, 404},
		{fmt.Errorf("x: %w", ErrBadRequest), CodeBadRequest, 400},
		{fmt.Errorf("x: %w", ErrConflict), CodeConflict, 409},
		{fmt.Errorf("x: %w", ErrUnavailable), CodeUnavailable, 503},
		{fmt.Errorf("apply: %w", context.DeadlineExceeded), CodeUnavailable, 503},
		{errors.New("boom"), CodeInternal, 500},
		{context.Canceled, CodeInternal, 500},
		{&Error{Code: CodeConflict, Message: "remote said so"}, CodeConflict, 409},
		{fmt.Errorf("forwarded: %w", &Error{Code: CodeNotFound, Message: "gone"}), CodeNotFound, 404},
		{&Error{Code: "teapot", Message: "unknown code"}, CodeInternal, 500},
	} {
		code := codeOf(tc.err)
		if code != tc.code || statusOf(code) != tc.status {
			t.Errorf("%v: %s %d, want %s %d", tc.err, code, statusOf(code), tc.code, tc.status)
		}
	}
}

func TestErrorUnwrap(t *testing.T) {
	for code, sentinel := range map[string]error{
		CodeNotFound: ErrNotFound, CodeBadRequest: ErrBadRequest, CodeConflict: ErrConflict, CodeUnavailable: ErrUnavailable,
	} {
		e := &Error{Code: code, Message: "msg"}
		if !errors.Is(e, sentinel) || e.Error() != "msg" {
			t.Errorf("%s: Is(%v) = false or message %q", code, sentinel, e.Error())
		}
		// Round trip through the classification of the server.
		if codeOf(fmt.Errorf("ctx: %w", e)) != code {
			t.Errorf("%s does not survive wrapping", code)
		}
	}
	if u := (&Error{Code: CodeInternal}).Unwrap(); u != nil {
		t.Errorf("internal unwraps to %v", u)
	}
}

func response(status int, body string) *http.Response {
	rec := httptest.NewRecorder()
	rec.WriteHeader(status)
	io.WriteString(rec, body)
	return rec.Result()
}

func TestReadError(t *testing.T) {
	for _, tc := range []struct {
		status int
		body   string
		code   string
		msg    string
	}{
		{404, `{"error":"app \"a\": not found","code":"not_found"}`, CodeNotFound, `app "a": not found`},
		{409, `{"error":"busy","code":"conflict"}` + "\n", CodeConflict, "busy"},
		{500, `{"error":"new","code":"from_the_future"}`, CodeInternal, "new"},
		{502, "Bad Gateway\nmore", CodeUnavailable, "daemon answered 502: Bad Gateway"},
		{404, "404 page not found\n", CodeNotFound, "daemon answered 404: 404 page not found"},
		{405, "", CodeBadRequest, "daemon answered 405: Method Not Allowed"},
		{418, "{}", CodeInternal, "daemon answered 418: {}"},
	} {
		err := readError(response(tc.status, tc.body))
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("%T", err)
		}
		if e.Code != tc.code || e.Message != tc.msg || e.Status != tc.status {
			t.Errorf("%d %q: got %+v, want code %s message %q", tc.status, tc.body, e, tc.code, tc.msg)
		}
	}
}

func TestBadRequestIsOneLine(t *testing.T) {
	err := badRequest("bad\nthing:\t%s", "x\r\ny")
	if strings.ContainsAny(err.Error(), "\r\n\t") || err.Error() != "bad thing: x y" {
		t.Errorf("%q", err)
	}
	if !errors.Is(err, ErrBadRequest) {
		t.Error("not ErrBadRequest")
	}
}

func TestNoDaemonError(t *testing.T) {
	err := error(&NoDaemonError{Socket: "/s", Err: io.ErrClosedPipe})
	if !errors.Is(err, ErrNoDaemon) || !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("%v does not wrap both", err)
	}
}

// TestDocListsRoutes keeps the package doc's route list in step with the
// handler table.
func TestDocListsRoutes(t *testing.T) {
	doc, err := readFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, rt := range routes {
		line := rt.method + strings.Repeat(" ", 7-len(rt.method)) + rt.path
		if !strings.Contains(doc, "//\t"+line+" ") && !strings.Contains(doc, "//\t"+line+"?") {
			t.Errorf("doc.go does not list %q", line)
		}
		switch rt.method {
		case http.MethodGet, http.MethodPost, http.MethodDelete:
		default:
			t.Errorf("route %s %s: method not handled by noRoute", rt.method, rt.path)
		}
	}
}

package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Sentinel errors callers branch on. The server maps an error that wraps one
// of them to its code and HTTP status; the client turns the answer back into
// an *Error that wraps the same sentinel, so errors.Is works on both sides.
var (
	// ErrNotFound: the app, epoch or other named thing does not exist.
	ErrNotFound = errors.New("not found")
	// ErrBadRequest: the request is malformed or a value is out of range.
	ErrBadRequest = errors.New("bad request")
	// ErrConflict: the request is valid but contradicts the current state
	// (the app exists, is running, is stopped, ...).
	ErrConflict = errors.New("conflict")
	// ErrUnavailable: the daemon cannot serve the request now (no quorum,
	// not ready, shutting down, timed out). Retrying later may succeed.
	ErrUnavailable = errors.New("unavailable")
	// ErrNoDaemon: nothing answers on the socket. The client wraps it in a
	// *NoDaemonError whose message says how to start a daemon.
	ErrNoDaemon = errors.New("no doppel daemon")
	// ErrDaemonRunning: Listen found another daemon serving the socket.
	ErrDaemonRunning = errors.New("another doppel node is running")
	// ErrClosed: Next was called on a Watcher after Close.
	ErrClosed = errors.New("event watcher closed")
)

// Error codes, the "code" member of an error answer. The list is
// append-only; a client that meets an unknown code treats it as internal.
const (
	CodeNotFound    = "not_found"   // HTTP 404, ErrNotFound
	CodeBadRequest  = "bad_request" // HTTP 400, ErrBadRequest
	CodeConflict    = "conflict"    // HTTP 409, ErrConflict
	CodeUnavailable = "unavailable" // HTTP 503, ErrUnavailable
	CodeInternal    = "internal"    // HTTP 500, no sentinel
)

// Error is an error answer of the API: {"error": Message, "code": Code}.
// The client returns it for every non-2xx answer. Its text is the server's
// message unchanged, and it unwraps to the sentinel of its code (nil for
// internal), so errors.Is(err, api.ErrNotFound) works on the client.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"error"`
	// Status is the HTTP status of the answer (client side only).
	Status int `json:"-"`
}

func (e *Error) Error() string {
	if e.Message == "" {
		return e.Code
	}
	return e.Message
}

// Unwrap returns the sentinel error of the code, or nil for internal and
// unknown codes.
func (e *Error) Unwrap() error { return sentinelOf(e.Code) }

func sentinelOf(code string) error {
	switch code {
	case CodeNotFound:
		return ErrNotFound
	case CodeBadRequest:
		return ErrBadRequest
	case CodeConflict:
		return ErrConflict
	case CodeUnavailable:
		return ErrUnavailable
	}
	return nil
}

// codeOf classifies a handler error: an *Error keeps its code; otherwise the
// first sentinel it wraps decides; a deadline is unavailable; anything else
// is internal.
func codeOf(err error) string {
	var ae *Error
	if errors.As(err, &ae) && sentinelOf(ae.Code) != nil {
		return ae.Code
	}
	switch {
	case errors.Is(err, ErrNotFound):
		return CodeNotFound
	case errors.Is(err, ErrBadRequest):
		return CodeBadRequest
	case errors.Is(err, ErrConflict):
		return CodeConflict
	case errors.Is(err, ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return CodeUnavailable
	}
	return CodeInternal
}

// statusOf is the HTTP status of a code.
func statusOf(code string) int {
	switch code {
	case CodeNotFound:
		return http.StatusNotFound
	case CodeBadRequest:
		return http.StatusBadRequest
	case CodeConflict:
		return http.StatusConflict
	case CodeUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// codeOfStatus classifies an answer whose body is not an error object (a
// proxy, an older daemon): by its HTTP status alone.
func codeOfStatus(status int) string {
	switch status {
	case http.StatusNotFound:
		return CodeNotFound
	case http.StatusBadRequest, http.StatusMethodNotAllowed, http.StatusRequestEntityTooLarge,
		http.StatusUnprocessableEntity, http.StatusUnsupportedMediaType:
		return CodeBadRequest
	case http.StatusConflict:
		return CodeConflict
	case http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout:
		return CodeUnavailable
	}
	return CodeInternal
}

// badRequest is a bad_request error with a one-line message.
func badRequest(format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	msg = strings.Join(strings.Fields(msg), " ")
	return &Error{Code: CodeBadRequest, Message: msg}
}

// NoDaemonError is returned by every Client method when nothing answers on
// the socket: the file is missing or no process listens on it. It wraps
// ErrNoDaemon and the dial error.
type NoDaemonError struct {
	Socket string
	Err    error // the dial error (ENOENT, ECONNREFUSED, ...)
}

func (e *NoDaemonError) Error() string {
	return fmt.Sprintf("no doppel daemon at %s (start one with: doppel node ..., or pass --socket)", e.Socket)
}

// Unwrap returns ErrNoDaemon and the dial error.
func (e *NoDaemonError) Unwrap() []error { return []error{ErrNoDaemon, e.Err} }

// Package api is the local API of a doppel node: HTTP/1.1 over a unix
// socket (DefaultSocket, /run/doppel/doppel.sock, mode 0600 in a 0700
// directory), used by the CLI and the TUI. The daemon implements Backend
// and serves it with a Server; clients use Client.
//
// # Routes
//
// Every route is under /v1/; a breaking change gets a new prefix, while
// members and event kinds are only ever added (clients ignore what they do
// not know).
//
//	GET    /v1/status                      → Status
//	GET    /v1/nodes                       → [NodeInfo]
//	GET    /v1/apps                        → [AppInfo]
//	POST   /v1/apps                        RunRequest → 201 AppInfo
//	GET    /v1/apps/{name}                 → AppDetail
//	DELETE /v1/apps/{name}                 → 204
//	GET    /v1/apps/{name}/epochs          → [EpochInfo], oldest first
//	POST   /v1/apps/{name}/checkpoint      → EpochInfo
//	POST   /v1/apps/{name}/restore?epoch=N&force=1 → AppInfo (epoch 0 or absent: the newest)
//	POST   /v1/apps/{name}/stop            → 204
//	POST   /v1/apps/{name}/export          ExportRequest → ExportResult (progress as events: op export)
//	POST   /v1/apps/{name}/failover?to=NODE&force=1 → AppInfo (to absent: the election's choice)
//	POST   /v1/apps/{name}/relocate?to=NODE → RelocateResult (progress as events: kind relocation)
//	POST   /v1/nodes/{name}/drain          → DrainResult
//	POST   /v1/nodes/{name}/undrain        → 204
//	POST   /v1/nodes/{name}/probe?bytes=N  → ProbeResult (link rate and round trip to that node)
//	GET    /v1/balance                     → BalancePlan (what the balancer would do now)
//	POST   /v1/import                      ImportRequest → ImportResult (progress as events: op import)
//	POST   /v1/adopt                       AdoptRequest → 201 AppInfo
//	GET    /v1/events                      → NDJSON stream of Event
//
// Lists are [] when empty, never null. Times are RFC 3339; Duration values
// are Go duration strings ("5s", "1m30s"), and a number of nanoseconds is
// accepted on input.
//
// # JSON members
//
// Stable snake_case names; "?" marks members omitted when empty.
//
//	Status:     node leader quorum quorum_reason? members apps version
//	NodeInfo:   name role state drained leader voter self load mem_free mem_total
//	            apps clones version criu addr since
//	CloneInfo:  node state acked_epoch lag_epochs lag_seconds bytes_sent last_error? last_ack
//	AppInfo:    name op term state args replicas interval data_paths newest_epoch
//	            newest_epoch_age_seconds clones service? journal_backlog pid
//	AppDetail:  the members of AppInfo, graph? epochs
//	EpochInfo:  app epoch parent term created barrier phases_ms pages_scanned pages_changed
//	            pages_new data_blocks_changed bytes_raw bytes_stored nodes? manifest?
//	PhaseTimes: psb rm srm prm ingest frozen xfer ack (milliseconds)
//	RunRequest: name args dir? env? data_paths? replicas? interval?
//	Event:      seq? time kind node? app? epoch? phase? end? duration_ms? message? fields?
//	error:      error code
//
// # Requests
//
// A request body is exactly one JSON object of at most Config.MaxBodyBytes;
// malformed JSON, unknown members, trailing data, an empty or invalid name
// and out-of-range values are refused as bad_request with a one-line
// message naming the member.
//
// # Errors
//
// An error answer is {"error": "message", "code": "CODE"} with the code's
// HTTP status: not_found 404, bad_request 400, conflict 409, unavailable
// 503, internal 500. A Backend error wrapping ErrNotFound, ErrBadRequest,
// ErrConflict or ErrUnavailable gets that code (a context deadline counts as
// unavailable), any other error internal. The Client returns every error
// answer as an *Error wrapping the same sentinel with the message unchanged.
// Unknown paths are not_found; a known path with the wrong method is
// bad_request with an Allow header.
//
// # Event stream
//
// GET /v1/events answers 200 with Content-Type application/x-ndjson, then
// one Event per line, each flushed as it is written. Every Config.Heartbeat
// (15 s by default) the server writes a heartbeat line, itself valid JSON:
//
//	{"time":"2025-01-02T15:04:05.123Z","kind":"heartbeat"}
//
// Watcher.Next skips heartbeat lines (Watcher.Heartbeats counts them); other
// readers should skip kind "heartbeat" too. The stream ends cleanly (the
// last chunk of the chunked answer, io.EOF for Next) when the server shuts
// down or the backend stops; it ends when the client closes it.
//
// # Socket
//
// Listen (used by Server.Serve) creates the socket's directory 0700 when
// missing, holds an exclusive flock on SOCKET.lock while serving, refuses to
// start when a daemon answers on the socket (ErrDaemonRunning: "another
// doppel node is running on SOCKET"), removes a stale socket that nothing
// answers on, and makes the new socket 0600. Shutdown removes the socket.
//
// A Client that finds no daemon returns a *NoDaemonError wrapping
// ErrNoDaemon: "no doppel daemon at SOCKET (start one with: doppel node ...,
// or pass --socket)". Commands are not retried; Client.WaitReady polls
// until a starting daemon answers.
package api

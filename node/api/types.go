package api

import (
	"encoding/json"
	"time"
)

// Status is this node's view of the cluster (GET /v1/status).
type Status struct {
	Node   string `json:"node"`   // this node's name
	Leader string `json:"leader"` // the raft leader's name, "" when unknown
	// Quorum says whether the voters this node knows form a majority in
	// contact; QuorumReason explains a false (or a degraded true).
	Quorum       bool   `json:"quorum"`
	QuorumReason string `json:"quorum_reason,omitempty"`
	Members      int    `json:"members"` // nodes alive in the membership, self included
	Apps         int    `json:"apps"`    // apps in the cluster state
	Version      string `json:"version"` // doppel version of this node
}

// Node states, NodeInfo.State.
const (
	NodeAlive   = "alive"
	NodeSuspect = "suspect"
	NodeDead    = "dead"
	NodeLeft    = "left"
)

// NodeInfo is one member of the cluster (GET /v1/nodes).
type NodeInfo struct {
	Name  string `json:"name"`
	Role  string `json:"role"`  // "worker" or "witness"
	State string `json:"state"` // NodeAlive, NodeSuspect, NodeDead, NodeLeft
	// Drained nodes host no new apps or clones.
	Drained bool `json:"drained"`
	Leader  bool `json:"leader"` // the raft leader
	Voter   bool `json:"voter"`  // a raft voter
	Self    bool `json:"self"`   // the node answering
	// Load is the 1-minute load average; MemFree and MemTotal are bytes.
	Load     float64  `json:"load"`
	MemFree  uint64   `json:"mem_free"`
	MemTotal uint64   `json:"mem_total"`
	Apps     []string `json:"apps"`   // apps this node is the OP of
	Clones   []string `json:"clones"` // apps this node holds a clone of
	Version  string   `json:"version"`
	CRIU     string   `json:"criu"` // CRIU version, "" when none
	Addr     string   `json:"addr"` // peer address ip:port
	// Since is when the node entered State.
	Since time.Time `json:"since"`
}

// Clone states, CloneInfo.State.
const (
	CloneSyncing = "syncing" // first epoch not yet acknowledged
	CloneInSync  = "in-sync" // holds the newest epoch, or is within bounds
	CloneLagging = "lagging" // behind by more than the bounds
	CloneFailed  = "failed"  // last transfer failed; LastError says why
)

// CloneInfo is one stand-by copy of an app.
type CloneInfo struct {
	Node       string `json:"node"`
	State      string `json:"state"` // CloneSyncing, CloneInSync, CloneLagging, CloneFailed
	AckedEpoch uint64 `json:"acked_epoch"`
	// LagEpochs is newest epoch minus AckedEpoch; LagSeconds the age of
	// AckedEpoch relative to the newest epoch.
	LagEpochs  uint64    `json:"lag_epochs"`
	LagSeconds float64   `json:"lag_seconds"`
	BytesSent  int64     `json:"bytes_sent"` // to this clone, since the OP started
	LastError  string    `json:"last_error,omitempty"`
	LastAck    time.Time `json:"last_ack"`
}

// App states, AppInfo.State.
const (
	AppRunning   = "running"
	AppStopped   = "stopped"
	AppStarting  = "starting"
	AppRestoring = "restoring"
	AppFailed    = "failed"
	AppUnplaced  = "unplaced" // registered, no OP node chosen
)

// AppInfo is one app as the cluster sees it (GET /v1/apps).
type AppInfo struct {
	Name  string   `json:"name"`
	OP    string   `json:"op"`   // the node it runs on, "" when unplaced
	Term  uint64   `json:"term"` // placement term; grows on every move or restore
	State string   `json:"state"`
	Args  []string `json:"args"`
	// Replicas is the number of clones wanted; Interval the time between
	// two epochs.
	Replicas  int      `json:"replicas"`
	Interval  Duration `json:"interval"`
	DataPaths []string `json:"data_paths"`
	// NewestEpoch is the newest complete epoch, 0 when none;
	// NewestEpochAge its age in seconds.
	NewestEpoch    uint64      `json:"newest_epoch"`
	NewestEpochAge float64     `json:"newest_epoch_age_seconds"`
	Clones         []CloneInfo `json:"clones"`
	// Service is the address the app's clients use, "" when none.
	Service string `json:"service,omitempty"`
	// JournalBacklog is the number of journal frames since NewestEpoch.
	JournalBacklog int64 `json:"journal_backlog"`
	// Pid is the host PID of the app's init on the answering node, 0 when
	// it does not run there.
	Pid int `json:"pid"`
}

// AppDetail is one app with its resource graph and epochs
// (GET /v1/apps/{name}). Its JSON is AppInfo's members plus graph and epochs.
type AppDetail struct {
	AppInfo
	// Graph is the introspected resource graph (package introspect's JSON)
	// when the answering node runs the app; absent otherwise.
	Graph  json.RawMessage `json:"graph,omitempty"`
	Epochs []EpochInfo     `json:"epochs"`
}

// PhaseTimes are the measured durations of a checkpoint's phases, in
// milliseconds. Zero means not run or not measured.
type PhaseTimes struct {
	PSB    float64 `json:"psb"`
	RM     float64 `json:"rm"`
	SRM    float64 `json:"srm"`
	PRM    float64 `json:"prm"`
	Ingest float64 `json:"ingest"` // image directory into the epoch store
	// Frozen is CRIU's frozen_time: how long the app was stopped.
	Frozen float64 `json:"frozen"`
	// XFER and ACK are the transfer to, and acknowledgement from, the last
	// clone to acknowledge.
	XFER float64 `json:"xfer"`
	ACK  float64 `json:"ack"`
}

// EpochInfo summarises one epoch (GET /v1/apps/{name}/epochs) with what
// the CLI prints; Manifest carries the full manifest when the answering
// node has it.
type EpochInfo struct {
	App     string    `json:"app"`
	Epoch   uint64    `json:"epoch"`
	Parent  uint64    `json:"parent"` // 0: a full epoch
	Term    uint64    `json:"term"`
	Created time.Time `json:"created"`
	// Barrier is the journal position at the synchronisation barrier.
	Barrier           uint64     `json:"barrier"`
	Phases            PhaseTimes `json:"phases_ms"`
	PagesScanned      int64      `json:"pages_scanned"`
	PagesChanged      int64      `json:"pages_changed"`
	PagesNew          int64      `json:"pages_new"`
	DataBlocksChanged int64      `json:"data_blocks_changed"`
	BytesRaw          int64      `json:"bytes_raw"`
	BytesStored       int64      `json:"bytes_stored"`
	// Nodes are the nodes known to hold this epoch (the OP and the clones
	// that acknowledged it).
	Nodes []string `json:"nodes,omitempty"`
	// Manifest is the epoch's manifest.json (package replicate/store).
	Manifest json.RawMessage `json:"manifest,omitempty"`
}

// RunRequest registers and starts an app (POST /v1/apps). The server
// rejects unknown members.
type RunRequest struct {
	Name string   `json:"name"` // lower-case letters, digits, '.', '_', '-'; at most 63
	Args []string `json:"args"` // the command line, not empty
	// Dir is the absolute working directory; "" lets the daemon choose.
	Dir string   `json:"dir,omitempty"`
	Env []string `json:"env,omitempty"` // KEY=VALUE entries
	// DataPaths are absolute files or directories the app writes; the
	// client resolves relative paths before sending.
	DataPaths []string `json:"data_paths,omitempty"`
	// Replicas is the number of clones wanted (0: the daemon's default);
	// Interval the time between epochs (0: the daemon's default).
	Replicas int      `json:"replicas,omitempty"`
	Interval Duration `json:"interval,omitempty"`
	// Service, when set, puts doppel's ingress proxy in front of the app.
	Service *Service `json:"service,omitempty"`
	// Policy says what happens when the app dies by itself on a healthy
	// node: "restart" (restore it there from its newest epoch, the
	// default), "failover" (promote a clone), or "none".
	Policy string `json:"policy,omitempty"`
	// Health is an optional check: "tcp:HOST:PORT", "http://HOST:PORT/PATH"
	// or "cmd:COMMAND" (run with sh -c; exit 0 is healthy). Three failures
	// in a row count as the app dying (Policy decides what follows).
	Health string `json:"health,omitempty"`
}

// Service is an app's service as clients reach it.
type Service struct {
	// Listen is the address clients connect to on the OP node (":PORT"
	// listens on the node's bind address).
	Listen string `json:"listen"`
	// Target is the app's own address, e.g. 127.0.0.1:8080.
	Target string `json:"target"`
	// Framing cuts client bytes into messages: line, len32 or raw.
	Framing string `json:"framing,omitempty"`
	// Journal is sync, async or off.
	Journal string `json:"journal,omitempty"`
	// VIP is an optional floating address (ADDR/PREFIX) that moves with
	// the OP: added to the OP node's device VIPDev with a gratuitous ARP.
	VIP    string `json:"vip,omitempty"`
	VIPDev string `json:"vip_dev,omitempty"`
}

// Event kinds, Event.Kind. The list is append-only; clients ignore kinds
// they do not know.
const (
	KindPhase      = "phase"      // a checkpoint phase started (End false) or ended
	KindEpoch      = "epoch"      // an epoch was committed
	KindAck        = "ack"        // a clone acknowledged an epoch
	KindMember     = "member"     // a node joined, left, became suspect or dead
	KindPromotion  = "promotion"  // a clone was promoted to OP
	KindRelocation = "relocation" // an app moved by request
	KindError      = "error"      // something failed; Message says what
	KindApp        = "app"        // an app was started, stopped, removed or restored
	// KindHeartbeat marks the keep-alive line of the event stream. It is
	// never a real event: Watcher.Next skips it.
	KindHeartbeat = "heartbeat"
)

// Event is one line of the event stream (GET /v1/events).
type Event struct {
	// Seq numbers events from 1 in the order the daemon emitted them;
	// absent (0) on heartbeats.
	Seq  uint64    `json:"seq,omitempty"`
	Time time.Time `json:"time"`
	Kind string    `json:"kind"`
	Node string    `json:"node,omitempty"`
	App  string    `json:"app,omitempty"`
	// Epoch and Phase name the checkpoint a phase event belongs to; End is
	// true on the event that closes a phase, with its DurationMs.
	Epoch      uint64  `json:"epoch,omitempty"`
	Phase      string  `json:"phase,omitempty"`
	End        bool    `json:"end,omitempty"`
	DurationMs float64 `json:"duration_ms,omitempty"`
	Message    string  `json:"message,omitempty"`
	// Fields carries kind-specific extras; numbers decode as float64.
	Fields map[string]any `json:"fields,omitempty"`
}

// Package state is the authoritative cluster state of doppel: a raft group
// (hashicorp/raft with raft-boltdb) among the voting nodes whose finite
// state machine holds the apps, their placement (OP node, term, clone set),
// the newest epoch each member of an app acknowledged, and the drained
// nodes.
//
// The state changes only through Commands committed by raft, so every node
// applies the same commands in the same order and reaches the same State.
// The FSM enforces the rules that make promotions safe (a term only grows,
// the OP changes only with a new term, acks count only from members and for
// the current term); a command that breaks a rule is committed but changes
// nothing, and its error comes back to the caller of Cluster.Apply.
package state

import (
	"errors"
	"maps"
	"regexp"
	"slices"
	"time"
)

// Sentinel errors. Errors returned by this package wrap one of these where a
// caller may want to branch on the cause; the message carries the details.
var (
	// ErrNotFound: no app of that name.
	ErrNotFound = errors.New("no such app")
	// ErrExists: an app of that name is already registered.
	ErrExists = errors.New("app already exists")
	// ErrStaleTerm: the command's term is older than the app's current term,
	// or does not match it where it must (acks), or changes the OP without a
	// new term.
	ErrStaleTerm = errors.New("stale term")
	// ErrTermConflict: the command's ExpectTerm is not the app's current
	// term; another placement won the race. Re-read the state and retry.
	ErrTermConflict = errors.New("term conflict")
	// ErrNotMember: an ack from a node that is neither the OP nor a clone of
	// the app.
	ErrNotMember = errors.New("node is not a member of the app")
	// ErrDrained: a placement names a drained node as the new OP.
	ErrDrained = errors.New("node is drained")
	// ErrBadCommand: a malformed command (missing or invalid fields).
	ErrBadCommand = errors.New("bad command")
	// ErrIncompatible: a command or snapshot was written by a newer protocol
	// version than this node understands. Upgrade this node.
	ErrIncompatible = errors.New("incompatible protocol version")
	// ErrNotLeader: the operation needs the raft leader. Errors of type
	// *NotLeaderError match it with errors.Is.
	ErrNotLeader = errors.New("not the raft leader")
	// ErrShutdown: the cluster was shut down.
	ErrShutdown = errors.New("cluster is shut down")
)

// Policy values for AppSpec.Policy.
const (
	PolicyRestart  = "restart"
	PolicyFailover = "failover"
	PolicyNone     = "none"
)

// AppSpec is what the operator declared about an app. It is stored as given
// (after validation) and never changed by placement.
type AppSpec struct {
	// Name: lower-case letters, digits, '.', '_', '-', at most 63, starting
	// with a letter or digit (the same rule as replicate.ValidName).
	Name string `json:"name"`
	// Args is the command line; Args[0] is looked up in PATH.
	Args []string `json:"args"`
	// Dir is the working directory.
	Dir string `json:"dir,omitempty"`
	// Env is the environment the app is started with.
	Env []string `json:"env,omitempty"`
	// DataPaths are files or directories the app writes whose contents
	// travel with every epoch.
	DataPaths []string `json:"data_paths,omitempty"`
	// Replicas is the wanted number of clones (SB nodes), 0 or more.
	Replicas int `json:"replicas"`
	// Interval between two epochs; 0 means the node's default.
	Interval time.Duration `json:"interval"`
	// InitSum is the SHA-256 (hex) of the app's init binary and InitExe its
	// absolute path, the same on every node.
	InitSum string `json:"init_sum,omitempty"`
	InitExe string `json:"init_exe,omitempty"`
	// Service describes the app's network service, if any.
	Service *ServiceSpec `json:"service,omitempty"`
	// Policy says what happens when the OP fails: PolicyRestart,
	// PolicyFailover, PolicyNone, or "" (the daemon's default).
	Policy string `json:"policy,omitempty"`
	// Health is an optional check of the app: "tcp:HOST:PORT",
	// "http://..." or "cmd:COMMAND"; failing it Threshold times in a row
	// counts as the app dying (see Policy).
	Health string `json:"health,omitempty"`
}

// ServiceSpec describes the network service an app offers.
type ServiceSpec struct {
	Listen  string `json:"listen,omitempty"`
	Target  string `json:"target,omitempty"`
	Framing string `json:"framing,omitempty"`
	Journal string `json:"journal,omitempty"`
	// VIP is an optional floating address (ADDR/PREFIX) moved with the OP
	// onto its device VIPDev.
	VIP    string `json:"vip,omitempty"`
	VIPDev string `json:"vip_dev,omitempty"`
}

// Ack is the newest epoch one node acknowledged for an app.
type Ack struct {
	Epoch uint64 `json:"epoch"`
	// Term is the app's term the ack was made in.
	Term uint64 `json:"term"`
	// At is when the leader appended the ack to the raft log.
	At time.Time `json:"at"`
}

// App is one app's authoritative record.
type App struct {
	Spec AppSpec `json:"spec"`
	// OP is the node the app runs on; "" while unplaced.
	OP string `json:"op,omitempty"`
	// Term grows with every placement that moves or restarts the app; two
	// nodes are never OP of one app in the same term.
	Term uint64 `json:"term"`
	// Clones are the SB nodes holding a clone, without the OP, no duplicates.
	Clones []string `json:"clones,omitempty"`
	// Acked maps a node (the OP or a clone) to the newest epoch it
	// acknowledged. Entries of nodes that leave the app are dropped; entries
	// from an older term are kept (their Term says so) until the node acks
	// in the current term.
	Acked map[string]Ack `json:"acked,omitempty"`
	// Created is when the app was registered, Moved when its term last
	// changed (both from the leader's clock at append time).
	Created time.Time `json:"created"`
	Moved   time.Time `json:"moved,omitzero"`
	// PrevOP is the OP before the last move, and Handover whether it
	// handed the app over cleanly (a relocation: its service was closed
	// and its copy ended before the move). A new OP that did not get a
	// handover waits out the old OP's lease before serving.
	PrevOP   string `json:"prev_op,omitempty"`
	Handover bool   `json:"handover,omitempty"`
	// LeaseWait is how long the old OP's lease may still have run when the
	// leader proposed the move (measured from the leader's last answer to
	// it); the new OP waits that long after it sees the move before
	// serving. Nil when unknown: the new OP waits a whole lease after
	// Moved.
	LeaseWait *time.Duration `json:"lease_wait,omitempty"`
}

// State is the whole cluster state. Values returned by Cluster.State and
// Cluster.Watch are private copies: the caller may keep and change them.
type State struct {
	Apps map[string]*App `json:"apps"`
	// Drained nodes take no new placement as OP. Only true entries are kept.
	Drained map[string]bool `json:"drained,omitempty"`
	// Index is the raft index of the last command applied (0: none yet).
	Index uint64 `json:"index"`
	// Retired is the last term of each removed app's name. An app created
	// again under that name starts its terms above it, so that epochs the
	// removed one left on a node that was down at its removal never pass
	// for the new app's (receivers drop epochs of an older term).
	Retired map[string]uint64 `json:"retired,omitempty"`
}

// Clone returns a deep copy of the app.
func (a *App) Clone() *App {
	if a == nil {
		return nil
	}
	c := *a
	c.Spec = a.Spec.Clone()
	c.Clones = slices.Clone(a.Clones)
	c.Acked = maps.Clone(a.Acked)
	return &c
}

// Clone returns a deep copy of the spec.
func (s AppSpec) Clone() AppSpec {
	c := s
	c.Args = slices.Clone(s.Args)
	c.Env = slices.Clone(s.Env)
	c.DataPaths = slices.Clone(s.DataPaths)
	if s.Service != nil {
		svc := *s.Service
		c.Service = &svc
	}
	return c
}

// Clone returns a deep copy of the state. The maps of the copy are never nil.
func (s State) Clone() State {
	c := State{
		Apps:    make(map[string]*App, len(s.Apps)),
		Drained: make(map[string]bool, len(s.Drained)),
		Index:   s.Index,
		Retired: maps.Clone(s.Retired),
	}
	for name, app := range s.Apps {
		c.Apps[name] = app.Clone()
	}
	maps.Copy(c.Drained, s.Drained)
	return c
}

// IsMember reports whether node is the OP or a clone of the app.
func (a *App) IsMember(node string) bool {
	return node != "" && (node == a.OP || slices.Contains(a.Clones, node))
}

var (
	nodeNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	appNameRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)
)

// ValidNodeName reports whether name is a valid node name: letters, digits,
// '.', '_', '-', at most 63, starting with a letter or digit.
func ValidNodeName(name string) bool { return nodeNameRE.MatchString(name) }

// ValidAppName reports whether name is a valid app name (see AppSpec.Name).
func ValidAppName(name string) bool { return appNameRE.MatchString(name) }

package state

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// ProtocolVersion is the version of the command encoding and of the FSM
// rules this node implements. It is written into every raft log entry and
// snapshot; a node refuses entries and snapshots of a newer version with
// ErrIncompatible. Raise it when a command type is added or a rule changes
// meaning; never reuse a CmdType value.
const ProtocolVersion = 1

// MinProtocolVersion is the oldest version this node still reads.
const MinProtocolVersion = 1

// CmdType says what a Command does. The enum is append-only: values are
// stored in raft logs and must keep their meaning forever.
type CmdType uint8

const (
	// CmdPutApp registers a new app (Command.App). Fails with ErrExists if
	// the name is taken.
	CmdPutApp CmdType = 1
	// CmdPlace sets the OP, clones and term of app Command.Name. See
	// Command for the term rules.
	CmdPlace CmdType = 2
	// CmdAck records that Command.Node holds epoch Command.Epoch of app
	// Command.Name in term Command.Term.
	CmdAck CmdType = 3
	// CmdRemoveApp forgets app Command.Name.
	CmdRemoveApp CmdType = 4
	// CmdSetDrained marks Command.Node drained (Command.Drained true) or
	// not.
	CmdSetDrained CmdType = 5
)

func (t CmdType) String() string {
	switch t {
	case CmdPutApp:
		return "put-app"
	case CmdPlace:
		return "place"
	case CmdAck:
		return "ack"
	case CmdRemoveApp:
		return "remove-app"
	case CmdSetDrained:
		return "set-drained"
	}
	return fmt.Sprintf("cmd-%d", uint8(t))
}

// Command is one change of the cluster state. Which fields count depends on
// Type:
//
//   - CmdPutApp: App (Name, Args required; Replicas ≥ 0; Interval ≥ 0;
//     Policy one of the Policy constants or "").
//   - CmdPlace: Name, OP, Clones, Term, ExpectTerm. ExpectTerm must equal
//     the app's current term (a compare-and-swap on the term the caller
//     read; else ErrTermConflict). Term > current starts a new term: any OP
//     that is not drained (ErrDrained), or "" to unplace. Term == current
//     changes only the clones: the OP must stay the same (else
//     ErrStaleTerm). Term < current: ErrStaleTerm. Clones must be valid
//     node names, without duplicates and without the OP. Acks of nodes
//     that are no longer members are dropped.
//   - CmdAck: Name, Node, Term, Epoch. Node must be the OP or a clone
//     (ErrNotMember) and Term the app's current term (ErrStaleTerm). Within
//     a term the highest epoch is kept (a lower or equal one changes
//     nothing and is not an error); an ack of a newer term replaces one of
//     an older term whatever its epoch, since epochs of a new OP may not
//     continue the old OP's chain.
//   - CmdRemoveApp: Name (ErrNotFound if absent).
//   - CmdSetDrained: Node, Drained.
type Command struct {
	Type       CmdType  `json:"-"`
	App        *AppSpec `json:"app,omitempty"`
	Name       string   `json:"name,omitempty"`
	OP         string   `json:"op,omitempty"`
	Term       uint64   `json:"term,omitempty"`
	Clones     []string `json:"clones,omitempty"`
	Node       string   `json:"node,omitempty"`
	Epoch      uint64   `json:"epoch,omitempty"`
	Drained    bool     `json:"drained,omitempty"`
	ExpectTerm uint64   `json:"expect_term,omitempty"`
	// Handover marks a Place that moves the OP after the old one closed its
	// service and ended its copy (a relocation).
	Handover bool `json:"handover,omitempty"`
	// LeaseWait, on a Place that moves the OP without a handover, is how
	// long the old OP's lease may still run after the leader proposed the
	// move (see App.LeaseWait); nil when the leader does not know.
	LeaseWait *time.Duration `json:"lease_wait,omitempty"`
}

// encodeCommand is the raft log form of a command: one byte of protocol
// version, one byte of CmdType, then the command as JSON.
func encodeCommand(c Command) ([]byte, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	body, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode %s command: %w", c.Type, err)
	}
	return append([]byte{ProtocolVersion, byte(c.Type)}, body...), nil
}

// decodeCommand is the inverse of encodeCommand. It refuses versions it does
// not know with ErrIncompatible and malformed entries with ErrBadCommand.
func decodeCommand(b []byte) (Command, error) {
	if len(b) < 2 {
		return Command{}, fmt.Errorf("%w: log entry of %d bytes is too short", ErrBadCommand, len(b))
	}
	if v := int(b[0]); v > ProtocolVersion || v < MinProtocolVersion {
		return Command{}, fmt.Errorf("%w: command of protocol version %d, this node speaks %d to %d: upgrade this node",
			ErrIncompatible, v, MinProtocolVersion, ProtocolVersion)
	}
	var c Command
	if err := json.Unmarshal(b[2:], &c); err != nil {
		return Command{}, fmt.Errorf("%w: %s command: %w", ErrBadCommand, CmdType(b[1]), err)
	}
	c.Type = CmdType(b[1])
	if err := c.validate(); err != nil {
		return Command{}, err
	}
	return c, nil
}

// validate checks what can be checked without the state.
func (c Command) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrBadCommand, c.Type, fmt.Sprintf(format, args...))
	}
	appName := func(name string) error {
		if !ValidAppName(name) {
			return bad("app name %q: use lower-case letters, digits, '.', '_' or '-' (at most 63, starting with a letter or digit)", name)
		}
		return nil
	}
	nodeName := func(what, name string) error {
		if !ValidNodeName(name) {
			return bad("%s %q is not a valid node name", what, name)
		}
		return nil
	}
	switch c.Type {
	case CmdPutApp:
		if c.App == nil {
			return bad("no app spec")
		}
		if err := appName(c.App.Name); err != nil {
			return err
		}
		if len(c.App.Args) == 0 || c.App.Args[0] == "" {
			return bad("app %s has no command line", c.App.Name)
		}
		if c.App.Replicas < 0 {
			return bad("app %s: replicas %d < 0", c.App.Name, c.App.Replicas)
		}
		if c.App.Interval < 0 {
			return bad("app %s: interval %s < 0", c.App.Name, c.App.Interval)
		}
		switch c.App.Policy {
		case "", PolicyRestart, PolicyFailover, PolicyNone:
		default:
			return bad("app %s: policy %q: use %s, %s or %s", c.App.Name, c.App.Policy, PolicyRestart, PolicyFailover, PolicyNone)
		}
	case CmdPlace:
		if err := appName(c.Name); err != nil {
			return err
		}
		if c.OP != "" {
			if err := nodeName("OP", c.OP); err != nil {
				return err
			}
		}
		for i, n := range c.Clones {
			if err := nodeName("clone", n); err != nil {
				return err
			}
			if n == c.OP {
				return bad("app %s: OP %s is also listed as a clone", c.Name, n)
			}
			if slices.Contains(c.Clones[:i], n) {
				return bad("app %s: clone %s listed twice", c.Name, n)
			}
		}
	case CmdAck:
		if err := appName(c.Name); err != nil {
			return err
		}
		if err := nodeName("node", c.Node); err != nil {
			return err
		}
	case CmdRemoveApp:
		if err := appName(c.Name); err != nil {
			return err
		}
	case CmdSetDrained:
		if err := nodeName("node", c.Node); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: unknown command type %d (protocol version %d)", ErrBadCommand, uint8(c.Type), ProtocolVersion)
	}
	return nil
}

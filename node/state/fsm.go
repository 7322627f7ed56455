package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// applyResult is what fsm.Apply returns to raft, and raft hands back to the
// leader's ApplyFuture.
type applyResult struct {
	value any
	err   error
}

// fsm is the raft.FSM over a State. raft calls Apply, Snapshot and Restore
// from its FSM goroutine; State and Watch may be called from anywhere.
type fsm struct {
	log *slog.Logger

	mu sync.Mutex
	st State

	watchMu  sync.Mutex
	watchers map[*watcher]struct{}
	closed   bool
}

var (
	_ raft.FSM         = (*fsm)(nil)
	_ raft.FSMSnapshot = (*fsmSnapshot)(nil)
)

func newFSM(log *slog.Logger) *fsm {
	return &fsm{
		log:      log,
		st:       State{Apps: map[string]*App{}, Drained: map[string]bool{}},
		watchers: map[*watcher]struct{}{},
	}
}

// Apply decodes and applies one committed log entry. A command that breaks
// a rule changes nothing; its error is the result. Index advances for every
// command entry, applied or refused.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	cmd, err := decodeCommand(l.Data)
	var res applyResult
	f.mu.Lock()
	f.st.Index = l.Index
	if err != nil {
		res.err = err
	} else {
		res.value, res.err = f.st.apply(cmd, l.AppendedAt)
	}
	snap := f.st.Clone()
	f.mu.Unlock()

	switch {
	case err != nil:
		// This node cannot read an entry every other node applies: its
		// state now differs from the cluster's until it is upgraded.
		f.log.Error("raft: cannot apply log entry", "index", l.Index, "err", err)
	case res.err != nil:
		app := cmd.Name
		if cmd.App != nil {
			app = cmd.App.Name
		}
		f.log.Debug("raft: command refused", "cmd", cmd.Type.String(), "app", app, "index", l.Index, "err", res.err)
	}
	f.publish(snap)
	return res
}

// state returns a deep copy of the current state.
func (f *fsm) state() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st.Clone()
}

// apply applies cmd to s if it follows the rules, else returns an error
// and leaves s unchanged. at is the leader's append time of the entry.
func (s *State) apply(cmd Command, at time.Time) (any, error) {
	if err := cmd.validate(); err != nil {
		return nil, err
	}
	if s.Apps == nil {
		s.Apps = map[string]*App{}
	}
	if s.Drained == nil {
		s.Drained = map[string]bool{}
	}
	at = at.UTC().Round(0)
	switch cmd.Type {
	case CmdPutApp:
		name := cmd.App.Name
		if _, ok := s.Apps[name]; ok {
			return nil, fmt.Errorf("app %s: %w", name, ErrExists)
		}
		app := &App{Spec: cmd.App.Clone(), Acked: map[string]Ack{}, Created: at, Term: s.Retired[name]}
		delete(s.Retired, name)
		s.Apps[name] = app
		return app.Clone(), nil

	case CmdPlace:
		app, ok := s.Apps[cmd.Name]
		if !ok {
			return nil, fmt.Errorf("place app %s: %w", cmd.Name, ErrNotFound)
		}
		if cmd.ExpectTerm != app.Term {
			return nil, fmt.Errorf("place app %s: expected term %d but it is %d (another placement came first): %w",
				cmd.Name, cmd.ExpectTerm, app.Term, ErrTermConflict)
		}
		switch {
		case cmd.Term < app.Term:
			return nil, fmt.Errorf("place app %s: term %d is older than the current term %d: %w", cmd.Name, cmd.Term, app.Term, ErrStaleTerm)
		case cmd.Term == app.Term && cmd.OP != app.OP:
			return nil, fmt.Errorf("place app %s: moving the OP from %q to %q needs a new term (> %d): %w",
				cmd.Name, app.OP, cmd.OP, app.Term, ErrStaleTerm)
		case cmd.Term > app.Term && cmd.OP != "" && s.Drained[cmd.OP]:
			return nil, fmt.Errorf("place app %s on %s: %w", cmd.Name, cmd.OP, ErrDrained)
		}
		if cmd.Term > app.Term {
			app.PrevOP, app.Handover, app.LeaseWait = app.OP, cmd.Handover, cmd.LeaseWait
			app.Term = cmd.Term
			app.OP = cmd.OP
			app.Moved = at
		}
		app.Clones = slices.Clone(cmd.Clones)
		for node := range app.Acked {
			if !app.IsMember(node) {
				delete(app.Acked, node)
			}
		}
		return app.Clone(), nil

	case CmdAck:
		app, ok := s.Apps[cmd.Name]
		if !ok {
			return nil, fmt.Errorf("ack app %s: %w", cmd.Name, ErrNotFound)
		}
		if !app.IsMember(cmd.Node) {
			return nil, fmt.Errorf("ack app %s from %s (OP %q, clones %v): %w", cmd.Name, cmd.Node, app.OP, app.Clones, ErrNotMember)
		}
		if cmd.Term != app.Term {
			return nil, fmt.Errorf("ack app %s from %s for term %d, current term is %d: %w", cmd.Name, cmd.Node, cmd.Term, app.Term, ErrStaleTerm)
		}
		if app.Acked == nil {
			app.Acked = map[string]Ack{}
		}
		old, had := app.Acked[cmd.Node]
		if had && old.Term == cmd.Term && old.Epoch >= cmd.Epoch {
			return old, nil
		}
		ack := Ack{Epoch: cmd.Epoch, Term: cmd.Term, At: at}
		app.Acked[cmd.Node] = ack
		return ack, nil

	case CmdRemoveApp:
		app, ok := s.Apps[cmd.Name]
		if !ok {
			return nil, fmt.Errorf("remove app %s: %w", cmd.Name, ErrNotFound)
		}
		if s.Retired == nil {
			s.Retired = map[string]uint64{}
		}
		s.Retired[cmd.Name] = app.Term
		delete(s.Apps, cmd.Name)
		return nil, nil

	case CmdSetDrained:
		if cmd.Drained {
			s.Drained[cmd.Node] = true
		} else {
			delete(s.Drained, cmd.Node)
		}
		return nil, nil
	}
	// validate refuses unknown types; keep the compiler and readers sure.
	return nil, fmt.Errorf("%w: unknown command type %d", ErrBadCommand, uint8(cmd.Type))
}

// snapshotFile is the JSON form of a snapshot.
type snapshotFile struct {
	Version int   `json:"version"`
	State   State `json:"state"`
}

type fsmSnapshot struct{ st State }

// Snapshot captures a copy of the state; Persist writes it later without
// holding the FSM.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{st: f.state()}, nil
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(snapshotFile{Version: ProtocolVersion, State: s.st}); err != nil {
		return errors.Join(fmt.Errorf("write state snapshot: %w", err), sink.Cancel())
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("close state snapshot: %w", err)
	}
	return nil
}

func (s *fsmSnapshot) Release() {}

// Restore replaces the state with a snapshot's.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var sf snapshotFile
	if err := json.NewDecoder(rc).Decode(&sf); err != nil {
		return fmt.Errorf("read state snapshot: %w", err)
	}
	if sf.Version > ProtocolVersion || sf.Version < MinProtocolVersion {
		return fmt.Errorf("state snapshot of protocol version %d, this node speaks %d to %d: upgrade this node: %w",
			sf.Version, MinProtocolVersion, ProtocolVersion, ErrIncompatible)
	}
	st := sf.State.Clone() // non-nil maps
	for name, app := range st.Apps {
		if app == nil {
			delete(st.Apps, name)
			continue
		}
		if app.Acked == nil {
			app.Acked = map[string]Ack{}
		}
	}
	f.mu.Lock()
	f.st = st
	snap := f.st.Clone()
	f.mu.Unlock()
	f.publish(snap)
	return nil
}

// watcher receives the newest state; its channel holds at most one value.
type watcher struct{ ch chan State }

// watch registers a watcher whose channel starts with the current state.
func (f *fsm) watch() (<-chan State, func()) {
	w := &watcher{ch: make(chan State, 1)}
	w.ch <- f.state()
	f.watchMu.Lock()
	defer f.watchMu.Unlock()
	if f.closed {
		close(w.ch)
		return w.ch, func() {}
	}
	f.watchers[w] = struct{}{}
	var once sync.Once
	return w.ch, func() {
		once.Do(func() {
			f.watchMu.Lock()
			defer f.watchMu.Unlock()
			if _, ok := f.watchers[w]; ok {
				delete(f.watchers, w)
				close(w.ch)
			}
		})
	}
}

// publish offers st to every watcher without blocking: a value the reader
// has not taken yet is replaced by the newer one. Each watcher gets its own
// copy.
func (f *fsm) publish(st State) {
	f.watchMu.Lock()
	defer f.watchMu.Unlock()
	n := 0
	for w := range f.watchers {
		n++
		v := st
		if n < len(f.watchers) {
			v = st.Clone()
		}
		// Only publish sends on w.ch, and it holds watchMu: after the
		// drain the buffer has room.
		select {
		case w.ch <- v:
		default:
			select {
			case <-w.ch:
			default:
			}
			w.ch <- v
		}
	}
}

// closeWatchers closes every watcher channel; later watches get a closed
// channel after the last state.
func (f *fsm) closeWatchers() {
	f.watchMu.Lock()
	defer f.watchMu.Unlock()
	f.closed = true
	for w := range f.watchers {
		close(w.ch)
	}
	clear(f.watchers)
}

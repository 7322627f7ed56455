// Package tui is the operator's terminal dashboard (Bubble Tea): nodes,
// apps, live resource trees, checkpoint phases, clone health and events,
// with actions. It is a client of the node daemon's local API only; it never
// reads /proc or runs CRIU itself.
//
// # Panes
//
// Five panes, each a model behind the pane interface (Update, View,
// SetSize, key help), routed by the root Model:
//
//   - Nodes: name (★ raft leader, ● the node attached to), role, state
//     (alive, suspect, dead, left; drained), load, free memory, apps
//     hosted, clones held.
//   - Apps: OP node, term, state, newest epoch and its age, interval,
//     clones with their health (✓ in sync, !N lagging by N epochs, ✗
//     failed, … syncing), service, journal backlog; the selected app's
//     details below.
//   - Resources: the selected app's resource graph (package introspect's
//     JSON from the API) as a tree of processes, each with its descriptors,
//     sockets, memory summary, IPC, files written and dependencies, with
//     verdict markers (✓ ok, ! warn, ✗ blocker); the preflight findings
//     first. Rows open and close; the state is kept by graph node ID across
//     refreshes.
//   - Checkpoints: the selected app's newest epochs, one bar per epoch with
//     its PSB ▓, RM ▒, SRM ░, PRM █, XFER = and ACK - segments to one scale,
//     the checkpoint in progress animated; the epoch under the cursor in
//     detail (milliseconds of every phase, pages changed, bytes stored and
//     sent, compression ratio).
//   - Events: the cluster's events (joins, suspicions, deaths, promotions,
//     relocations, app changes, errors; epochs and acks with v).
//
// At 120×32 and more every pane shows at once; below, one pane at a time
// with tabs. Keys follow k9s and htop: arrows and hjkl, tab between panes,
// 1-5, / to filter the pane, ? for every key, q to quit.
//
// # Data
//
// The event stream drives the updates: a blocking command returns one
// event and is re-armed. What the stream does not carry is polled (nodes'
// load every Config.PollNodes, the apps every Config.PollApps, the
// resource graph every Config.PollGraph while on screen), and requests of
// one kind are coalesced. Every answer carries the connection generation
// it was asked in: when the daemon goes away, the dashboard says so in the
// status line and reconnects with exponential backoff; late answers of the
// old connection are dropped. A new stream replays the daemon's recent
// events; those already seen are skipped.
//
// # Actions
//
// Actions (checkpoint now, stop, restore here; in the demo, kill a node)
// are a table (see newActions): each has a key, a check that says why it
// does not apply, a confirmation question and a blocking run. The status
// line shows the question, then the progress, then the result. Restore
// here restores on the node attached to from the newest epoch it holds,
// forcing over the app's OP when there is one (a manual failover when the
// OP is dead).
//
// The dashboard logs to Config.Logger only, never to the screen, and
// draws without colour when NO_COLOR is set.
package tui

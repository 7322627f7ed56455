// Package tui is the operator's terminal dashboard (Bubble Tea): nodes,
// apps, live resource trees, checkpoint phases, clone health and events,
// with actions. It is a client of the node daemon's local API only; it never
// reads /proc or runs CRIU itself.
package tui

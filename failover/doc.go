// Package failover keeps an application's service alive when its OP node
// fails: supervision of the app and its clones, election of the clone with
// the newest acknowledged epoch, promotion as a raft commit with a new term,
// fencing of an OP that lost the majority, the ingress proxy and message
// journal, and replay of the journal after a restore. It drives checkpoints
// and restores through replicate and the cluster through node; it never
// talks to CRIU directly.
package failover

//go:build !race

package introspect

const raceEnabled = false

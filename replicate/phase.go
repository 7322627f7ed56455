package replicate

import (
	"time"
)

// Phase names a step of a checkpoint, in the order they run (DESIGN.md).
type Phase string

const (
	// PSB is the process synchronisation barrier: from "checkpoint now"
	// until every process of the app is stopped.
	PSB Phase = "PSB"
	// RM is resource management: the resource graph of the frozen tree
	// decides what is captured; blockers abort here.
	RM Phase = "RM"
	// SRM captures system resources and the data-file delta while frozen.
	SRM Phase = "SRM"
	// PRM captures process resources (memory, registers) with CRIU, resumes
	// the app, and stores the page delta.
	PRM Phase = "PRM"
	// XFER sends the epoch to a clone.
	XFER Phase = "XFER"
	// ACK waits for the clone's acknowledgement.
	ACK Phase = "ACK"
)

// Phases lists the phases in order.
var Phases = []Phase{PSB, RM, SRM, PRM, XFER, ACK}

// Event reports a phase starting or ending.
type Event struct {
	App   string    `json:"app"`
	Epoch uint64    `json:"epoch"`
	Phase Phase     `json:"phase"`
	Time  time.Time `json:"time"`
	// End is false when the phase starts, true when it ends.
	End bool `json:"end"`
	// Duration of the phase, set when End is true.
	Duration time.Duration `json:"duration,omitempty"`
	// Err is the error that ended the phase, if any.
	Err string `json:"err,omitempty"`
}

// Observer receives events. It is called synchronously from the checkpoint
// and must return quickly (never block on I/O): the app may be frozen.
type Observer func(Event)

// phaseClock times phases and publishes their events.
type phaseClock struct {
	app   string
	epoch uint64
	obs   Observer
	cur   Phase
	start time.Time
}

func (c *phaseClock) begin(p Phase) {
	c.cur, c.start = p, time.Now()
	if c.obs != nil {
		c.obs(Event{App: c.app, Epoch: c.epoch, Phase: p, Time: c.start})
	}
}

// end closes the current phase and returns its duration.
func (c *phaseClock) end(err error) time.Duration {
	now := time.Now()
	d := now.Sub(c.start)
	if c.obs != nil {
		ev := Event{App: c.app, Epoch: c.epoch, Phase: c.cur, Time: now, End: true, Duration: d}
		if err != nil {
			ev.Err = err.Error()
		}
		c.obs(ev)
	}
	return d
}

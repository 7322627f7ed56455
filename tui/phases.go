package tui

import (
	"fmt"
	"math"
	"regexp"
	"sort"
	"strings"
	"time"

	"charm.land/bubbles/v2/key"
	tea "charm.land/bubbletea/v2"

	"doppel/node/api"
)

// phasesPane shows the newest checkpoints of the selected app: one bar per
// epoch with its PSB, RM, SRM, PRM, XFER and ACK segments to one scale and
// the total milliseconds, the checkpoint in progress animated, and the
// details of the epoch under the cursor (every phase's milliseconds, pages
// changed, bytes stored and sent, compression ratio).
//
// Phases come from the event stream as they happen; epochs listed by the
// API fill what the stream did not carry (the dashboard started later).
// XFER and ACK are those of the last clone to acknowledge.
type phasesPane struct {
	env    *env
	w, h   int
	app    string
	hist   map[string]*epochHistory
	clones map[string]int    // clones placed, by app
	ops    map[string]string // OP node, by app
	self   string            // the node attached to
	frame  int
	cursor uint64 // epoch under the cursor; 0: follow the newest
	filter string
}

// epochHistory is what is known of one app's recent epochs.
type epochHistory struct {
	byEpoch map[uint64]*epochRec
}

// epochRec is one checkpoint as far as it went.
type epochRec struct {
	epoch       uint64
	ms          map[string]float64 // ended phases
	current     string             // phase in progress
	curStart    time.Time
	info        *api.EpochInfo
	committed   bool
	committedAt time.Time
	streamed    bool // the commit came from the event stream (transfers follow)
	clones      map[string]*cloneRec
	fields      map[string]any // of the epoch event
	failed      string
}

// cloneRec is the transfer of one epoch to one clone.
type cloneRec struct {
	xfer, ack float64
	bytes     int64
	acked     bool
	failed    string
}

// transferErr matches the daemon's message for a transfer that failed.
var transferErr = regexp.MustCompile(`^epoch \d+ to ([A-Za-z0-9][A-Za-z0-9._-]*): (.*)$`)

// stallAfter: a phase or transfer without news for this long is no longer
// shown as in progress (the daemon went away mid-checkpoint).
const stallAfter = 2 * time.Minute

func newPhasesPane(e *env) *phasesPane {
	return &phasesPane{env: e, hist: map[string]*epochHistory{}, clones: map[string]int{}, ops: map[string]string{}}
}

func (p *phasesPane) Title() string {
	if p.app == "" {
		return "Checkpoints"
	}
	return "Checkpoints · " + p.app
}

func (p *phasesPane) SetSize(w, h int) { p.w, p.h = w, h }

func (p *phasesPane) SetFilter(f string) { p.filter = f }

func (p *phasesPane) Keys() []key.Binding {
	return []key.Binding{p.env.keys.Up, p.env.keys.Down, p.env.keys.Top}
}

func (p *phasesPane) rec(app string, epoch uint64) *epochRec {
	h := p.hist[app]
	if h == nil {
		h = &epochHistory{byEpoch: map[uint64]*epochRec{}}
		p.hist[app] = h
	}
	r := h.byEpoch[epoch]
	if r == nil {
		r = &epochRec{epoch: epoch, ms: map[string]float64{}, clones: map[string]*cloneRec{}}
		h.byEpoch[epoch] = r
		p.trim(h)
	}
	return r
}

// trim keeps the newest Config.Epochs epochs of a history.
func (p *phasesPane) trim(h *epochHistory) {
	if len(h.byEpoch) <= p.env.cfg.Epochs {
		return
	}
	es := make([]uint64, 0, len(h.byEpoch))
	for e := range h.byEpoch {
		es = append(es, e)
	}
	sort.Slice(es, func(i, j int) bool { return es[i] > es[j] })
	for _, e := range es[p.env.cfg.Epochs:] {
		delete(h.byEpoch, e)
	}
}

func (r *epochRec) clone(name string) *cloneRec {
	c := r.clones[name]
	if c == nil {
		c = &cloneRec{}
		r.clones[name] = c
	}
	return c
}

// phaseMs is the duration of a phase: from the stream, else from the API.
// XFER and ACK are the last clone's.
func (r *epochRec) phaseMs(ph string) (float64, bool) {
	switch ph {
	case "XFER", "ACK":
		best, ok := 0.0, false
		var last *cloneRec
		for _, c := range r.clones {
			if c.acked && (last == nil || c.xfer+c.ack > last.xfer+last.ack) {
				last = c
			}
		}
		if last != nil {
			if ph == "XFER" {
				best = last.xfer
			} else {
				best = last.ack
			}
			ok = true
		}
		if !ok && r.info != nil {
			if ph == "XFER" && r.info.Phases.XFER > 0 {
				return r.info.Phases.XFER, true
			}
			if ph == "ACK" && r.info.Phases.ACK > 0 {
				return r.info.Phases.ACK, true
			}
		}
		return best, ok
	}
	if v, ok := r.ms[ph]; ok {
		return v, true
	}
	if r.info != nil {
		pt := r.info.Phases
		v := map[string]float64{"PSB": pt.PSB, "RM": pt.RM, "SRM": pt.SRM, "PRM": pt.PRM}[ph]
		return v, true
	}
	return 0, false
}

func (p *phasesPane) Update(msg tea.Msg) tea.Cmd {
	switch msg := msg.(type) {
	case selectAppMsg:
		if msg.app != p.app {
			p.app, p.cursor = msg.app, 0
		}
	case attachedMsg:
		p.hist = map[string]*epochHistory{}
		p.clones = map[string]int{}
		p.ops = map[string]string{}
	case connectedToMsg:
		p.self = msg.node
	case appsMsg:
		if msg.err == nil {
			for _, a := range msg.apps {
				p.clones[a.Name] = len(a.Clones)
				p.ops[a.Name] = a.OP
			}
		}
	case epochsMsg:
		if msg.err != nil {
			return nil
		}
		for i := range msg.epochs {
			e := msg.epochs[i]
			r := p.rec(msg.app, e.Epoch)
			r.info = &e
			if !r.committed {
				r.committed, r.committedAt = true, e.Created
			}
			r.current = ""
		}
	case eventMsg:
		p.event(msg.ev)
	case frameMsg:
		p.frame++
	case tea.KeyPressMsg:
		p.key(msg)
	}
	return nil
}

func num(f map[string]any, k string) (float64, bool) {
	v, ok := f[k].(float64)
	return v, ok
}

// event records one event of the stream.
func (p *phasesPane) event(ev api.Event) {
	if ev.App == "" || ev.Epoch == 0 {
		return
	}
	switch ev.Kind {
	case api.KindPhase:
		r := p.rec(ev.App, ev.Epoch)
		if ev.Phase == "XFER" || ev.Phase == "ACK" {
			clone, _ := ev.Fields["clone"].(string)
			c := r.clone(clone)
			if ev.Phase == "XFER" {
				c.xfer = ev.DurationMs
			} else {
				c.ack = ev.DurationMs
				c.acked = true
			}
			return
		}
		if !ev.End {
			if _, done := r.ms[ev.Phase]; !done && !r.committed {
				r.current, r.curStart = ev.Phase, ev.Time
			}
			return
		}
		r.ms[ev.Phase] = ev.DurationMs
		if r.current == ev.Phase {
			r.current = ""
		}
		if ev.Message != "" {
			r.failed = ev.Phase + ": " + ev.Message
		}
	case api.KindEpoch:
		r := p.rec(ev.App, ev.Epoch)
		r.committed, r.committedAt, r.current, r.streamed = true, ev.Time, "", true
		r.fields = ev.Fields
	case api.KindAck:
		r := p.rec(ev.App, ev.Epoch)
		clone, _ := ev.Fields["clone"].(string)
		if clone == "" {
			clone = ev.Node
		}
		c := r.clone(clone)
		c.acked = true
		if b, ok := num(ev.Fields, "bytes"); ok {
			c.bytes = int64(b)
		}
	case api.KindError:
		// A transfer failed ("epoch N to CLONE: why"): it belongs to the
		// epoch's record, if the epoch is known.
		if m := transferErr.FindStringSubmatch(ev.Message); m != nil {
			if h := p.hist[ev.App]; h != nil && h.byEpoch[ev.Epoch] != nil {
				h.byEpoch[ev.Epoch].clone(m[1]).failed = m[2]
			}
			return
		}
		r := p.rec(ev.App, ev.Epoch)
		r.current, r.failed = "", ev.Message
	}
}

// ordered lists the selected app's epochs, newest first.
func (p *phasesPane) ordered() []*epochRec {
	h := p.hist[p.app]
	if h == nil {
		return nil
	}
	out := make([]*epochRec, 0, len(h.byEpoch))
	for _, r := range h.byEpoch {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].epoch > out[j].epoch })
	return out
}

func (p *phasesPane) key(msg tea.KeyPressMsg) {
	rs := p.ordered()
	if len(rs) == 0 {
		return
	}
	i := 0
	for j, r := range rs {
		if r.epoch == p.cursor {
			i = j
		}
	}
	if !listNav(msg, p.env.keys, &i, len(rs), p.h) {
		return
	}
	if i == 0 {
		p.cursor = 0 // follow the newest
	} else {
		p.cursor = rs[i].epoch
	}
}

// live says whether a record is in progress now: a phase running, or the
// epoch committed and not yet acknowledged by every placed clone.
func (p *phasesPane) live(r *epochRec, now time.Time) (phase string, since time.Time, ok bool) {
	if r.failed != "" {
		return "", time.Time{}, false
	}
	if r.current != "" && now.Sub(r.curStart) < stallAfter {
		return r.current, r.curStart, true
	}
	if r.streamed && now.Sub(r.committedAt) < stallAfter {
		want := p.clones[p.app]
		done := 0
		for _, c := range r.clones {
			if c.acked || c.failed != "" {
				done++
			}
		}
		if want > 0 && done < want {
			return "XFER", r.committedAt, true
		}
	}
	return "", time.Time{}, false
}

// Animating says whether a checkpoint of the selected app is in progress
// (the root model then sends frames).
func (p *phasesPane) Animating() bool {
	now := p.env.cfg.Now()
	for _, r := range p.ordered() {
		if _, _, ok := p.live(r, now); ok {
			return true
		}
	}
	return false
}

// segments is the duration of each phase of a record, a live phase
// counting its elapsed time.
func (p *phasesPane) segments(r *epochRec, now time.Time) (ms map[string]float64, total float64, livePhase string) {
	ms = map[string]float64{}
	for _, ph := range phaseOrder {
		if v, ok := r.phaseMs(ph); ok {
			ms[ph] = v
		}
	}
	if ph, since, ok := p.live(r, now); ok {
		livePhase = ph
		el := float64(now.Sub(since).Microseconds()) / 1000
		if ph == "XFER" {
			ms["XFER"] = max(ms["XFER"], el)
		} else {
			ms[ph] = el
		}
	}
	for _, v := range ms {
		total += v
	}
	return ms, total, livePhase
}

// cells divides w cells among the phases to scale: each phase that took
// measurable time gets at least one cell.
func cells(ms map[string]float64, scale float64, w int) map[string]int {
	out := map[string]int{}
	if scale <= 0 || w <= 0 {
		return out
	}
	used := 0
	type frac struct {
		ph string
		f  float64
	}
	var fr []frac
	total := 0.0
	for _, ph := range phaseOrder {
		v := ms[ph]
		total += v
		x := v / scale * float64(w)
		out[ph] = int(x)
		used += out[ph]
		fr = append(fr, frac{ph, x - math.Floor(x)})
	}
	want := min(int(math.Round(total/scale*float64(w))), w)
	sort.SliceStable(fr, func(i, j int) bool { return fr[i].f > fr[j].f })
	for i := 0; used < want && i < len(fr); i++ {
		out[fr[i].ph]++
		used++
	}
	for _, ph := range phaseOrder {
		if ms[ph] >= 0.05 && out[ph] == 0 {
			// Take the cell from the widest segment, or grow the bar.
			big := ""
			for _, q := range phaseOrder {
				if big == "" || out[q] > out[big] {
					big = q
				}
			}
			if out[big] > 1 && used >= w {
				out[big]--
				used--
			}
			if used < w {
				out[ph] = 1
				used++
			}
		}
	}
	return out
}

// spinnerFrames mark the growing end of the phase in progress.
var spinnerFrames = []string{"▏", "▎", "▍", "▌", "▋", "▊", "▉", "▊", "▋", "▌", "▍", "▎"}

func (p *phasesPane) bar(r *epochRec, scale float64, w int, now time.Time) (string, float64, string) {
	st := p.env.styles
	ms, total, livePh := p.segments(r, now)
	cs := cells(ms, scale, w)
	var b strings.Builder
	n := 0
	for _, ph := range phaseOrder {
		c := cs[ph]
		if c == 0 {
			continue
		}
		seg := strings.Repeat(phaseGlyph[ph], c)
		if ph == livePh {
			seg = strings.Repeat(phaseGlyph[ph], c-1) + spinnerFrames[p.frame%len(spinnerFrames)]
		}
		b.WriteString(st.Phase[ph].Render(seg))
		n += c
	}
	if n == 0 && livePh != "" {
		b.WriteString(st.Phase[livePh].Render(spinnerFrames[p.frame%len(spinnerFrames)]))
		n++
	}
	b.WriteString(strings.Repeat(" ", max(w-n, 0)))
	return b.String(), total, livePh
}

func (p *phasesPane) View() string {
	st := p.env.styles
	var lines []string
	var legend []string
	for _, ph := range phaseOrder {
		legend = append(legend, st.Phase[ph].Render(phaseGlyph[ph])+ph)
	}
	if p.app == "" {
		lines = append(lines, st.Dim.Render("no app selected"))
		return strings.Join(block(lines, p.w, p.h), "\n")
	}
	rs := p.ordered()
	now := p.env.cfg.Now()
	if len(rs) == 0 {
		lines = append(lines, strings.Join(legend, " "))
		lines = append(lines, st.Dim.Render("no epoch yet: the first checkpoint of "+p.app+" shows here as it runs"))
		return strings.Join(block(lines, p.w, p.h), "\n")
	}
	ci := 0
	for j, r := range rs {
		if r.epoch == p.cursor {
			ci = j
		}
	}
	detail := p.details(rs[ci], now)
	rows := max(p.h-2-len(detail), 1)
	if len(rs) > rows {
		rs = rs[:rows]
		ci = min(ci, rows-1)
	}
	scale := 1.0
	for _, r := range rs {
		_, t, _ := p.segments(r, now)
		scale = max(scale, t)
	}
	lines = append(lines, fit(strings.Join(legend, " "), p.w-14)+st.Dim.Render(fitRight("0–"+fmtMs(scale), 14)))
	if note := p.remoteNote(); note != "" {
		lines = append(lines, st.Dim.Render(note))
		rs = rs[:max(min(len(rs), rows-1), 1)]
	}
	label := len(fmt.Sprint(rs[0].epoch)) + 1
	right := 28
	if p.w < 60 {
		right = 16
	}
	barW := max(p.w-label-1-right-2, 4)
	for j, r := range rs {
		bar, total, live := p.bar(r, scale, barW, now)
		tail := p.tail(r, total, live, right)
		head := fitRight(fmt.Sprintf("#%d", r.epoch), label)
		if j == ci {
			head = st.Selected.Render(head)
		}
		lines = append(lines, head+" ▕"+bar+"▏"+tail)
	}
	lines = append(lines, "")
	lines = append(lines, detail...)
	return strings.Join(block(lines, p.w, p.h), "\n")
}

// remoteNote says where live phases come from when the app runs on
// another node: a daemon publishes the phases of its own checkpoints only.
func (p *phasesPane) remoteNote() string {
	op := p.ops[p.app]
	if op == "" || p.self == "" || op == p.self {
		return ""
	}
	return fmt.Sprintf("%s runs on %s, which publishes its phases: here, the epochs %s holds", p.app, op, p.self)
}

// tail is the text after a bar: total, pages changed, bytes stored and
// compression ratio, or the phase in progress.
func (p *phasesPane) tail(r *epochRec, total float64, live string, w int) string {
	st := p.env.styles
	if r.failed != "" {
		return st.Bad.Render(fit(" "+glyphBlocker+" "+r.failed, w))
	}
	if live != "" {
		return st.Info.Render(fit(fmt.Sprintf(" %s… %s", live, fmtMs(total)), w))
	}
	pages, stored, ratio := "", "", ""
	if pc, ok := p.pagesChanged(r); ok {
		pages = fmt.Sprintf("%dpg", pc)
	}
	if r.info != nil {
		stored = compactBytes(r.info.BytesStored)
		if r.info.BytesStored > 0 && r.info.BytesRaw > 0 {
			ratio = fmt.Sprintf("%.1f×", float64(r.info.BytesRaw)/float64(r.info.BytesStored))
		}
	} else if b, ok := num(r.fields, "bytes_stored"); ok {
		stored = compactBytes(int64(b))
	}
	s := fitRight(fmtMs(total), 8)
	if w >= 28 {
		s += fitRight(pages, 7) + fitRight(stored, 6) + fitRight(ratio, 7)
	} else {
		s += fitRight(pages, 8)
	}
	return fit(s, w)
}

func (p *phasesPane) pagesChanged(r *epochRec) (int64, bool) {
	if r.info != nil {
		return r.info.PagesChanged, true
	}
	if v, ok := num(r.fields, "pages_changed"); ok {
		return int64(v), true
	}
	return 0, false
}

// details describes one epoch in a few lines.
func (p *phasesPane) details(r *epochRec, now time.Time) []string {
	st := p.env.styles
	head := fmt.Sprintf("#%d", r.epoch)
	if r.info != nil {
		if r.info.Parent == 0 {
			head += " · full"
		} else {
			head += fmt.Sprintf(" · parent #%d", r.info.Parent)
		}
		head += fmt.Sprintf(" · term %d · barrier %d", r.info.Term, r.info.Barrier)
	}
	if r.committed && !r.committedAt.IsZero() {
		head += fmt.Sprintf(" · %s ago", fmtAge(now.Sub(r.committedAt).Seconds()))
	} else if r.failed == "" {
		head += " · in progress"
	}
	var ph []string
	for _, name := range phaseOrder {
		if v, ok := r.phaseMs(name); ok {
			ph = append(ph, fmt.Sprintf("%s %.1f", name, v))
		} else {
			ph = append(ph, name+" -")
		}
	}
	phases := strings.Join(ph, "  ") + " ms"
	if r.info != nil && r.info.Phases.Frozen > 0 {
		phases += fmt.Sprintf(" · frozen %.1f", r.info.Phases.Frozen)
	} else if v, ok := num(r.fields, "frozen_ms"); ok {
		phases += fmt.Sprintf(" · frozen %.1f", v)
	}
	lines := []string{st.Bold.Render(head), phases}
	var data string
	if r.info != nil {
		i := r.info
		data = fmt.Sprintf("pages %d/%d changed, %d new · stored %s", i.PagesChanged, i.PagesScanned, i.PagesNew, humanBytes(i.BytesStored))
		if i.BytesStored > 0 && i.BytesRaw > 0 {
			data += fmt.Sprintf(" of %s raw (%.1f×)", humanBytes(i.BytesRaw), float64(i.BytesRaw)/float64(i.BytesStored))
		}
		data += fmt.Sprintf(" · data blocks %d", i.DataBlocksChanged)
	} else if pc, ok := num(r.fields, "pages_changed"); ok {
		scanned, _ := num(r.fields, "pages_scanned")
		stored, _ := num(r.fields, "bytes_stored")
		data = fmt.Sprintf("pages %.0f/%.0f changed · stored %s", pc, scanned, humanBytes(int64(stored)))
	}
	if data != "" {
		lines = append(lines, data)
	}
	names := make([]string, 0, len(r.clones))
	for n := range r.clones {
		names = append(names, n)
	}
	sort.Strings(names)
	var sent []string
	for _, n := range names {
		c := r.clones[n]
		switch {
		case c.failed != "":
			sent = append(sent, st.Bad.Render(n+" "+glyphBlocker+" "+c.failed))
		case c.acked:
			sent = append(sent, fmt.Sprintf("%s %s %s", n, humanBytes(c.bytes), st.OK.Render(glyphOK)))
		default:
			sent = append(sent, n+" …")
		}
	}
	switch {
	case len(sent) > 0:
		lines = append(lines, "sent "+strings.Join(sent, " · "))
	case r.failed != "":
		lines = append(lines, st.Bad.Render(glyphBlocker+" "+r.failed))
	}
	return lines
}

package tui

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"charm.land/bubbles/v2/key"
	tea "charm.land/bubbletea/v2"

	"doppel/node/api"
)

// appsPane lists the apps: OP node, term, state, newest epoch and its age,
// interval, clones with their health, service and journal backlog; below
// the table, the details of the selected app.
type appsPane struct {
	env    *env
	w, h   int
	apps   []api.AppInfo
	at     time.Time // when apps was fetched
	err    error
	filter string
	cursor int
	off    int
	chosen string // the selected app's name, kept across refreshes
}

func newAppsPane(e *env) *appsPane { return &appsPane{env: e} }

var appColumns = []column{
	{title: "APP", width: 10, flex: true},
	{title: "OP", width: 6},
	{title: "TERM", width: 4, right: true, prio: 3},
	{title: "STATE", width: 9},
	{title: "EPOCH", width: 6, right: true},
	{title: "AGE", width: 6, right: true, prio: 2},
	{title: "EVERY", width: 5, right: true, prio: 4},
	{title: "CLONES", width: 12, prio: 1},
	{title: "SERVICE", width: 15, prio: 5},
	{title: "BACKLOG", width: 7, right: true, prio: 6},
}

func (p *appsPane) Title() string { return fmt.Sprintf("Apps %d", len(p.apps)) }

func (p *appsPane) SetSize(w, h int) { p.w, p.h = w, h }

func (p *appsPane) SetFilter(f string) {
	p.filter = f
	p.cursor = 0
	p.follow()
}

func (p *appsPane) Keys() []key.Binding {
	return []key.Binding{p.env.keys.Up, p.env.keys.Down}
}

func (p *appsPane) visible() []api.AppInfo {
	var out []api.AppInfo
	for _, a := range p.apps {
		if matches(strings.Join(p.cells(a), " "), p.filter) {
			out = append(out, a)
		}
	}
	return out
}

// Selected is the app under the cursor.
func (p *appsPane) Selected() (api.AppInfo, bool) {
	v := p.visible()
	if p.cursor < 0 || p.cursor >= len(v) {
		return api.AppInfo{}, false
	}
	return v[p.cursor], true
}

// App returns the app named name from the last list.
func (p *appsPane) App(name string) (api.AppInfo, bool) {
	for _, a := range p.apps {
		if a.Name == name {
			return a, true
		}
	}
	return api.AppInfo{}, false
}

func (p *appsPane) follow() {
	v := p.visible()
	for i, a := range v {
		if a.Name == p.chosen {
			p.cursor = i
			return
		}
	}
	p.cursor = clamp(p.cursor, 0, len(v)-1)
	if p.cursor < len(v) {
		p.chosen = v[p.cursor].Name
	}
}

func (p *appsPane) Update(msg tea.Msg) tea.Cmd {
	switch msg := msg.(type) {
	case appsMsg:
		if msg.err != nil {
			p.err = msg.err
			return nil
		}
		p.err = nil
		p.apps = append([]api.AppInfo(nil), msg.apps...)
		for i := range p.apps {
			// Clones in a stable order, whatever the daemon's.
			cs := append([]api.CloneInfo(nil), p.apps[i].Clones...)
			sort.Slice(cs, func(a, b int) bool { return cs[a].Node < cs[b].Node })
			p.apps[i].Clones = cs
		}
		p.at = msg.at
		p.follow()
	case attachedMsg:
		p.apps, p.err = nil, nil
	case tea.KeyPressMsg:
		v := p.visible()
		if listNav(msg, p.env.keys, &p.cursor, len(v), p.listRows()) && p.cursor < len(v) {
			p.chosen = v[p.cursor].Name
		}
	}
	return nil
}

// age is the age of the app's newest epoch now.
func (p *appsPane) age(a api.AppInfo) float64 {
	return a.NewestEpochAge + p.env.cfg.Now().Sub(p.at).Seconds()
}

// cloneGlyph is a clone's health in a few cells.
func cloneGlyph(c api.CloneInfo) string {
	switch c.State {
	case api.CloneInSync:
		return glyphOK
	case api.CloneLagging:
		return fmt.Sprintf("%s%d", glyphWarn, c.LagEpochs)
	case api.CloneFailed:
		return glyphBlocker
	case api.CloneSyncing:
		return "…"
	}
	return "?"
}

func (p *appsPane) cells(a api.AppInfo) []string {
	epoch, age := "-", "-"
	if a.NewestEpoch > 0 {
		epoch = fmt.Sprintf("#%d", a.NewestEpoch)
		age = fmtAge(p.age(a))
	}
	var clones []string
	for _, c := range a.Clones {
		clones = append(clones, c.Node+cloneGlyph(c))
	}
	if len(clones) == 0 {
		clones = append(clones, "-")
	}
	return []string{
		a.Name, dash(a.OP), fmt.Sprint(a.Term), a.State, epoch, age,
		fmtDur(time.Duration(a.Interval)), strings.Join(clones, " "), dash(a.Service),
		fmt.Sprint(a.JournalBacklog),
	}
}

func (p *appsPane) stateStyle(state, s string) string {
	st := p.env.styles
	switch state {
	case api.AppRunning:
		return st.OK.Render(s)
	case api.AppStarting, api.AppRestoring:
		return st.Info.Render(s)
	case api.AppFailed:
		return st.Bad.Render(s)
	}
	return st.Dim.Render(s)
}

func (p *appsPane) cloneStyle(state, s string) string {
	st := p.env.styles
	switch state {
	case api.CloneInSync:
		return st.OK.Render(s)
	case api.CloneLagging:
		return st.Warn.Render(s)
	case api.CloneFailed:
		return st.Bad.Render(s)
	}
	return st.Info.Render(s)
}

// listRows is the height of the table body: the rest shows the details.
func (p *appsPane) listRows() int {
	return max(min(len(p.visible()), p.h-1-p.detailRows()), 1)
}

func (p *appsPane) detailRows() int {
	a, ok := p.Selected()
	if !ok {
		return 0
	}
	n := 3 + len(a.Clones)
	if n > p.h-3 {
		n = max(p.h-3, 0)
	}
	return n
}

func (p *appsPane) View() string {
	st := p.env.styles
	keep, widths := layoutColumns(appColumns, p.w)
	lines := []string{tableHeader(appColumns, keep, widths, st.ColHead)}
	v := p.visible()
	switch {
	case p.err != nil && len(p.apps) == 0:
		lines = append(lines, st.Bad.Render(p.err.Error()))
	case len(p.apps) == 0 && p.at.IsZero():
		lines = append(lines, st.Dim.Render("waiting for the daemon…"))
	case len(p.apps) == 0:
		lines = append(lines, st.Dim.Render("no app (start one with: doppel run NAME -- CMD)"))
	case len(v) == 0:
		lines = append(lines, st.Dim.Render("no app matches /"+p.filter))
	}
	rows := p.listRows()
	p.off = scrollWindow(p.cursor, p.off, rows, len(v))
	for i := p.off; i < len(v) && i < p.off+rows; i++ {
		a := v[i]
		if i == p.cursor {
			lines = append(lines, st.Selected.Render(fit(tableRow(p.cells(a), appColumns, keep, widths), p.w)))
			continue
		}
		lines = append(lines, styledRow(p.cells(a), appColumns, keep, widths, func(col int, cell string) string {
			if col == 3 {
				return p.stateStyle(a.State, cell)
			}
			return cell
		}))
	}
	if a, ok := p.Selected(); ok && p.detailRows() > 0 {
		lines = append(lines, "")
		lines = append(lines, p.details(a)...)
	}
	return strings.Join(block(lines, p.w, p.h), "\n")
}

// details describes the selected app, one clone per line.
func (p *appsPane) details(a api.AppInfo) []string {
	st := p.env.styles
	where := "stopped"
	if a.OP != "" {
		where = a.State + " on " + a.OP
	}
	head := fmt.Sprintf("%s %s · term %d", st.Bold.Render(a.Name), p.stateStyle(a.State, where), a.Term)
	if a.Pid > 0 {
		head += fmt.Sprintf(" · pid %d", a.Pid)
	}
	head += " · every " + fmtDur(time.Duration(a.Interval))
	if a.NewestEpoch > 0 {
		head += fmt.Sprintf(" · newest #%d %s ago", a.NewestEpoch, fmtAge(p.age(a)))
	}
	svc := "service " + dash(a.Service) + fmt.Sprintf(" · journal backlog %d", a.JournalBacklog) +
		fmt.Sprintf(" · %d clone(s) wanted", a.Replicas)
	lines := []string{head, st.Dim.Render(svc)}
	if len(a.Clones) == 0 {
		lines = append(lines, st.Dim.Render("no clone"))
	}
	for _, c := range a.Clones {
		l := fmt.Sprintf("clone %-8s %s acked #%d · lag %d epoch(s) %s · sent %s",
			c.Node, p.cloneStyle(c.State, fmt.Sprintf("%-8s", c.State)), c.AckedEpoch, c.LagEpochs,
			fmtAge(c.LagSeconds), humanBytes(c.BytesSent))
		if c.LastError != "" {
			l += " · " + st.Bad.Render(c.LastError)
		}
		lines = append(lines, l)
	}
	return lines
}

package tui

import (
	"fmt"
	"math"
	"strings"
	"time"

	"charm.land/lipgloss/v2"
	"github.com/charmbracelet/x/ansi"
)

// width is the number of cells s takes, escape sequences ignored.
func width(s string) int { return ansi.StringWidth(s) }

// fit truncates s (with "…") or pads it with spaces to exactly w cells.
func fit(s string, w int) string {
	if w <= 0 {
		return ""
	}
	sw := width(s)
	if sw > w {
		s = ansi.Truncate(s, w, "…")
		sw = width(s)
	}
	if sw < w {
		s += strings.Repeat(" ", w-sw)
	}
	return s
}

// fitRight is fit aligned to the right.
func fitRight(s string, w int) string {
	if w <= 0 {
		return ""
	}
	sw := width(s)
	if sw > w {
		return ansi.Truncate(s, w, "…")
	}
	return strings.Repeat(" ", w-sw) + s
}

// spread puts left and right on one line of w cells, right-aligned right;
// left is truncated when both do not fit.
func spread(left, right string, w int) string {
	rw := width(right)
	if rw >= w {
		return fit(right, w)
	}
	return fit(left, w-rw-1) + " " + right
}

// block makes lines exactly w cells wide and h lines high.
func block(lines []string, w, h int) []string {
	out := make([]string, h)
	for i := range out {
		if i < len(lines) {
			out[i] = fit(lines[i], w)
		} else {
			out[i] = strings.Repeat(" ", max(w, 0))
		}
	}
	return out
}

// humanBytes prints a byte count in binary units: "512 B", "160.0 KiB".
func humanBytes(b int64) string {
	if b < 0 {
		return "-" + humanBytes(-b)
	}
	if b < 1024 {
		return fmt.Sprintf("%d B", b)
	}
	v := float64(b)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB"} {
		v /= 1024
		if v < 1024 || u == "TiB" {
			if v >= 100 {
				return fmt.Sprintf("%.0f %s", v, u)
			}
			return fmt.Sprintf("%.1f %s", v, u)
		}
	}
	return fmt.Sprintf("%d B", b)
}

// compactBytes is humanBytes without the space and the "i": "160K".
func compactBytes(b int64) string {
	if b < 1024 {
		return fmt.Sprintf("%dB", b)
	}
	v := float64(b)
	for _, u := range []string{"K", "M", "G", "T"} {
		v /= 1024
		if v < 1024 || u == "T" {
			if v >= 10 {
				return fmt.Sprintf("%.0f%s", v, u)
			}
			return fmt.Sprintf("%.1f%s", v, u)
		}
	}
	return fmt.Sprintf("%dB", b)
}

// fmtMs prints a duration in milliseconds with a precision that suits it.
func fmtMs(ms float64) string {
	switch {
	case ms >= 10000:
		return fmt.Sprintf("%.1fs", ms/1000)
	case ms >= 100:
		return fmt.Sprintf("%.0fms", ms)
	default:
		return fmt.Sprintf("%.1fms", ms)
	}
}

// fmtAge prints an age in seconds: "0.8s", "42s", "3m12s", "5h3m", "2d".
func fmtAge(sec float64) string {
	if sec < 0 || math.IsNaN(sec) {
		sec = 0
	}
	switch {
	case sec < 10:
		return fmt.Sprintf("%.1fs", sec)
	case sec < 60:
		return fmt.Sprintf("%.0fs", sec)
	case sec < 3600:
		return fmt.Sprintf("%dm%02ds", int(sec)/60, int(sec)%60)
	case sec < 86400:
		return fmt.Sprintf("%dh%02dm", int(sec)/3600, (int(sec)%3600)/60)
	}
	return fmt.Sprintf("%dd", int(sec)/86400)
}

// fmtDur prints a Go duration compactly ("5s", "1m30s").
func fmtDur(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return d.String()
}

// dash is s, or "-" when empty.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// column of a table.
type column struct {
	title string
	width int  // preferred width
	right bool // right-aligned
	flex  bool // takes the width left over
	// prio: columns with the highest prio are dropped first when the
	// table does not fit; 0 is never dropped.
	prio int
}

// layoutColumns drops the least important columns until the table fits w
// cells (one space between columns) and gives what is left to the flex
// column. It returns the indexes of the kept columns and their widths.
func layoutColumns(cols []column, w int) (keep []int, widths []int) {
	active := make([]bool, len(cols))
	for i := range active {
		active[i] = true
	}
	total := func() int {
		t, n := 0, 0
		for i, c := range cols {
			if active[i] {
				t += c.width
				n++
			}
		}
		return t + max(n-1, 0)
	}
	for total() > w {
		worst := -1
		for i, c := range cols {
			if active[i] && c.prio > 0 && (worst < 0 || c.prio >= cols[worst].prio) {
				worst = i
			}
		}
		if worst < 0 {
			break
		}
		active[worst] = false
	}
	spare := w - total()
	for i, c := range cols {
		if !active[i] {
			continue
		}
		cw := c.width
		if c.flex && spare > 0 {
			cw += spare
			spare = 0
		}
		keep = append(keep, i)
		widths = append(widths, cw)
	}
	// A table wider than w even with only the essential columns: the
	// last column gives way.
	if spare < 0 && len(widths) > 0 {
		widths[len(widths)-1] = max(widths[len(widths)-1]+spare, 1)
	}
	return keep, widths
}

// tableRow renders the kept cells of one row.
func tableRow(cells []string, cols []column, keep, widths []int) string {
	return styledRow(cells, cols, keep, widths, nil)
}

// styledRow is tableRow with style(i, cell) applied to each fitted cell of
// column i (nil: none).
func styledRow(cells []string, cols []column, keep, widths []int, style func(i int, cell string) string) string {
	var b strings.Builder
	for k, i := range keep {
		if k > 0 {
			b.WriteByte(' ')
		}
		cell := ""
		if i < len(cells) {
			cell = cells[i]
		}
		if cols[i].right {
			cell = fitRight(cell, widths[k])
		} else {
			cell = fit(cell, widths[k])
		}
		if style != nil {
			cell = style(i, cell)
		}
		b.WriteString(cell)
	}
	return b.String()
}

// tableHeader renders the column titles.
func tableHeader(cols []column, keep, widths []int, st lipgloss.Style) string {
	titles := make([]string, len(cols))
	for i, c := range cols {
		titles[i] = c.title
	}
	return st.Render(tableRow(titles, cols, keep, widths))
}

// scrollWindow returns the first visible row so that cursor stays within a
// window of h rows, keeping off as the previous first row when possible.
func scrollWindow(cursor, off, h, n int) int {
	if h <= 0 || n <= h {
		return 0
	}
	if cursor < off {
		off = cursor
	}
	if cursor >= off+h {
		off = cursor - h + 1
	}
	return min(max(off, 0), n-h)
}

// clamp keeps v within [lo, hi]; an empty range gives lo.
func clamp(v, lo, hi int) int {
	if hi < lo {
		return lo
	}
	return min(max(v, lo), hi)
}

// matches says whether a row's text contains the filter, ignoring case.
func matches(text, filter string) bool {
	if filter == "" {
		return true
	}
	return strings.Contains(strings.ToLower(text), strings.ToLower(filter))
}

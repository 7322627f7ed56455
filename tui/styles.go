package tui

import (
	"image/color"

	"charm.land/bubbles/v2/help"
	"charm.land/lipgloss/v2"
)

// Styles is every style of the dashboard, built in one place by NewStyles.
// Without colour, emphasis is carried by bold, reverse video and glyphs
// only, so that nothing depends on colour.
type Styles struct {
	NoColor bool

	Header    lipgloss.Style // top line
	Dim       lipgloss.Style // secondary text
	Bold      lipgloss.Style
	Title     lipgloss.Style // pane title in its frame
	FocTitle  lipgloss.Style // title of the focused pane
	Border    lipgloss.Style // frame lines
	FocBorder lipgloss.Style // frame of the focused pane
	TabOn     lipgloss.Style // focused tab (narrow layout)
	TabOff    lipgloss.Style
	ColHead   lipgloss.Style // table column titles
	Selected  lipgloss.Style // the cursor row
	Status    lipgloss.Style // status line
	Prompt    lipgloss.Style // confirmation line
	Filter    lipgloss.Style

	OK, Warn, Bad, Info lipgloss.Style // health and verdict colours

	// Phase colours the segments of a checkpoint bar, by phase name.
	Phase map[string]lipgloss.Style

	Help help.Styles
}

// Verdict and health glyphs. They carry the meaning without colour.
const (
	glyphOK      = "✓"
	glyphWarn    = "!"
	glyphBlocker = "✗"
	glyphLeader  = "★"
	glyphSelf    = "●"
	glyphOpen    = "▾"
	glyphClosed  = "▸"
)

// phaseGlyph fills the segment of each phase in a checkpoint bar; the
// glyphs differ so that the bar reads without colour.
var phaseGlyph = map[string]string{
	"PSB":  "▓",
	"RM":   "▒",
	"SRM":  "░",
	"PRM":  "█",
	"XFER": "=",
	"ACK":  "-",
}

// phaseOrder is the order of the phases in a bar.
var phaseOrder = []string{"PSB", "RM", "SRM", "PRM", "XFER", "ACK"}

// NewStyles builds the styles, with or without colour.
func NewStyles(noColor bool) Styles {
	var s Styles
	s.NoColor = noColor
	c := func(hex string) color.Color {
		if noColor {
			return nil
		}
		return lipgloss.Color(hex)
	}
	fg := func(hex string) lipgloss.Style {
		st := lipgloss.NewStyle()
		if col := c(hex); col != nil {
			st = st.Foreground(col)
		}
		return st
	}
	s.Header = lipgloss.NewStyle().Bold(true)
	s.Dim = fg("#808080")
	s.Bold = lipgloss.NewStyle().Bold(true)
	s.Title = lipgloss.NewStyle().Bold(true)
	s.FocTitle = fg("#5fd7ff").Bold(true).Reverse(noColor)
	s.Border = fg("#585858")
	s.FocBorder = fg("#5fd7ff")
	s.TabOn = fg("#5fd7ff").Bold(true).Reverse(true)
	s.TabOff = fg("#8a8a8a")
	s.ColHead = fg("#a8a8a8").Bold(true)
	s.Selected = lipgloss.NewStyle().Reverse(true)
	s.Status = lipgloss.NewStyle()
	s.Prompt = fg("#ffd75f").Bold(true)
	s.Filter = fg("#5fd7ff")
	s.OK = fg("#5fd75f")
	s.Warn = fg("#ffd75f")
	s.Bad = fg("#ff5f5f").Bold(true)
	s.Info = fg("#5fafff")
	s.Phase = map[string]lipgloss.Style{
		"PSB":  fg("#d787ff"),
		"RM":   fg("#5fafff"),
		"SRM":  fg("#5fd7d7"),
		"PRM":  fg("#ffaf5f"),
		"XFER": fg("#87d75f"),
		"ACK":  fg("#d7d75f"),
	}
	s.Help = help.Styles{
		ShortKey:       s.Bold,
		ShortDesc:      s.Dim,
		ShortSeparator: s.Dim,
		Ellipsis:       s.Dim,
		FullKey:        s.Bold,
		FullDesc:       s.Dim,
		FullSeparator:  s.Dim,
	}
	return s
}

// level styles a verdict or health level: "ok", "warn" or "blocker"/"bad".
func (s Styles) level(l string) lipgloss.Style {
	switch l {
	case "ok":
		return s.OK
	case "warn":
		return s.Warn
	case "blocker", "bad":
		return s.Bad
	}
	return lipgloss.NewStyle()
}

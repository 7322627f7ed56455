package tui

import (
	"reflect"
	"testing"
)

func TestFit(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in   string
		w    int
		want string
	}{
		{"abc", 5, "abc  "},
		{"abcdef", 4, "abc…"},
		{"n1 ★", 5, "n1 ★ "},
		{"", 0, ""},
	}
	for _, c := range cases {
		if got := fit(c.in, c.w); got != c.want {
			t.Errorf("fit(%q, %d) = %q, want %q", c.in, c.w, got, c.want)
		}
	}
	if got := fitRight("7", 3); got != "  7" {
		t.Errorf("fitRight = %q", got)
	}
	if got := spread("left", "right", 12); got != "left   right" {
		t.Errorf("spread = %q", got)
	}
}

func TestHumanUnits(t *testing.T) {
	t.Parallel()
	for in, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 160 << 10: "160 KiB", 5<<20 + 1<<19: "5.5 MiB"} {
		if got := humanBytes(in); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[float64]string{0.84: "0.8s", 42: "42s", 192: "3m12s", 3600: "1h00m", 200000: "2d", -1: "0.0s"} {
		if got := fmtAge(in); got != want {
			t.Errorf("fmtAge(%v) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[float64]string{0.3: "0.3ms", 95.04: "95.0ms", 541: "541ms", 12345: "12.3s"} {
		if got := fmtMs(in); got != want {
			t.Errorf("fmtMs(%v) = %q, want %q", in, got, want)
		}
	}
}

func TestLayoutColumnsDropsByPriority(t *testing.T) {
	t.Parallel()
	cols := []column{
		{title: "A", width: 10, flex: true},
		{title: "B", width: 5, prio: 2},
		{title: "C", width: 5},
		{title: "D", width: 5, prio: 1},
	}
	keep, widths := layoutColumns(cols, 40)
	if !reflect.DeepEqual(keep, []int{0, 1, 2, 3}) || widths[0] != 40-15-3 {
		t.Errorf("wide: keep %v widths %v", keep, widths)
	}
	keep, _ = layoutColumns(cols, 22)
	if !reflect.DeepEqual(keep, []int{0, 2, 3}) {
		t.Errorf("narrow: keep %v, want B dropped first", keep)
	}
	keep, widths = layoutColumns(cols, 12)
	if !reflect.DeepEqual(keep, []int{0, 2}) || widths[0]+widths[1]+1 > 12 {
		t.Errorf("narrowest: keep %v widths %v", keep, widths)
	}
}

func TestPhaseCellsToScale(t *testing.T) {
	t.Parallel()
	ms := map[string]float64{"PSB": 1, "RM": 8, "SRM": 2, "PRM": 89, "XFER": 0, "ACK": 0}
	c := cells(ms, 100, 50)
	total := 0
	for _, n := range c {
		total += n
	}
	if total != 50 {
		t.Errorf("cells %v sum to %d, want 50", c, total)
	}
	if c["PRM"] < 40 || c["RM"] < 3 || c["PSB"] < 1 || c["SRM"] < 1 || c["XFER"] != 0 {
		t.Errorf("cells %v not to scale", c)
	}
	// Half the scale fills half the width.
	half := cells(map[string]float64{"PRM": 50}, 100, 40)
	if half["PRM"] != 20 {
		t.Errorf("half: %v", half)
	}
	// A phase too short for a cell still gets one.
	tiny := cells(map[string]float64{"PSB": 0.2, "PRM": 100}, 100, 20)
	if tiny["PSB"] != 1 || tiny["PRM"]+tiny["PSB"] != 20 {
		t.Errorf("tiny: %v", tiny)
	}
}

func TestScrollWindow(t *testing.T) {
	t.Parallel()
	if got := scrollWindow(0, 0, 5, 3); got != 0 {
		t.Errorf("short list: %d", got)
	}
	if got := scrollWindow(9, 0, 5, 20); got != 5 {
		t.Errorf("cursor below: %d", got)
	}
	if got := scrollWindow(2, 5, 5, 20); got != 2 {
		t.Errorf("cursor above: %d", got)
	}
	if got := scrollWindow(19, 18, 5, 20); got != 15 {
		t.Errorf("end of list: %d", got)
	}
}

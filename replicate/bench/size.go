package bench

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSize parses a byte count: a number with an optional binary unit
// (B, K or KiB, M or MiB, G or GiB, T or TiB; case-insensitive), e.g.
// "256MiB", "1G", "4096". Fractions are allowed ("1.5GiB").
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	}
	mult := map[string]float64{
		"": 1, "b": 1,
		"k": 1 << 10, "kib": 1 << 10,
		"m": 1 << 20, "mib": 1 << 20,
		"g": 1 << 30, "gib": 1 << 30,
		"t": 1 << 40, "tib": 1 << 40,
	}[unit]
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || mult == 0 || v < 0 {
		return 0, fmt.Errorf("size %q: want a number of bytes with an optional unit (KiB, MiB, GiB), e.g. 256MiB", s)
	}
	return int64(v * mult), nil
}

// ParseRate parses a transfer rate in bytes per second: a plain number is
// bytes/s; "kB/s", "MB/s", "GB/s" (decimal) and "KiB/s", "MiB/s", "GiB/s"
// are bytes; "kbit", "Mbit", "Gbit" (also with "/s", or "kbps", "Mbps",
// "Gbps") are bits. "1Gbit" is 125000000.
func ParseRate(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	}
	unit = strings.TrimSuffix(unit, "/s")
	prefixes := map[string]float64{"": 1, "k": 1e3, "m": 1e6, "g": 1e9}
	var mult float64
	switch {
	case strings.HasSuffix(unit, "bit"):
		mult = prefixes[strings.TrimSuffix(unit, "bit")] / 8
	case strings.HasSuffix(unit, "bps"):
		mult = prefixes[strings.TrimSuffix(unit, "bps")] / 8
	case strings.HasSuffix(unit, "ib"):
		mult = map[string]float64{"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}[unit]
	default:
		mult = prefixes[strings.TrimSuffix(unit, "b")]
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || mult == 0 || v < 0 {
		return 0, fmt.Errorf("rate %q: want bytes per second, or a number with MB/s, MiB/s, Mbit or Gbit, e.g. 1Gbit", s)
	}
	return int64(v * mult), nil
}

// FormatBytes prints a byte count with a binary unit, e.g. "256.0 MiB".
func FormatBytes(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

// FormatRate prints bytes per second, e.g. "1.2 GiB/s".
func FormatRate(bps float64) string {
	if bps <= 0 {
		return "-"
	}
	return FormatBytes(int64(bps)) + "/s"
}

// ParseFraction parses a fraction: "1%" or "0.01".
func ParseFraction(s string) (float64, error) {
	t := strings.TrimSpace(s)
	div := 1.0
	if p, ok := strings.CutSuffix(t, "%"); ok {
		t, div = strings.TrimSpace(p), 100
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || v/div > 1 {
		return 0, fmt.Errorf("fraction %q: want 0..1 or a percentage, e.g. 1%% or 0.01", s)
	}
	return v / div, nil
}

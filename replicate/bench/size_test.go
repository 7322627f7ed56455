package bench

import "testing"

func TestParseSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		bad  bool
	}{
		{"4096", 4096, false},
		{"256MiB", 256 << 20, false},
		{"256M", 256 << 20, false},
		{"1GiB", 1 << 30, false},
		{"1g", 1 << 30, false},
		{"1.5GiB", 3 << 29, false},
		{" 64 KiB ", 64 << 10, false},
		{"12B", 12, false},
		{"", 0, true},
		{"MiB", 0, true},
		{"1 furlong", 0, true},
		{"-1M", 0, true},
	} {
		got, err := ParseSize(c.in)
		if c.bad {
			if err == nil {
				t.Errorf("ParseSize(%q) = %d, want an error", c.in, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
}

func TestParseRate(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		bad  bool
	}{
		{"125000000", 125000000, false},
		{"1Gbit", 125000000, false},
		{"1Gbit/s", 125000000, false},
		{"1Gbps", 125000000, false},
		{"100Mbit", 12500000, false},
		{"100Mbps", 12500000, false},
		{"100MB/s", 100000000, false},
		{"100MiB/s", 100 << 20, false},
		{"2kB", 2000, false},
		{"10 GB/s", 10e9, false},
		{"fast", 0, true},
		{"1Xbit", 0, true},
	} {
		got, err := ParseRate(c.in)
		if c.bad {
			if err == nil {
				t.Errorf("ParseRate(%q) = %d, want an error", c.in, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
}

func TestParseFraction(t *testing.T) {
	for _, c := range []struct {
		in   string
		want float64
		bad  bool
	}{
		{"1%", 0.01, false},
		{"0.01", 0.01, false},
		{"100%", 1, false},
		{"0", 0, false},
		{"150%", 0, true},
		{"2", 0, true},
		{"-1%", 0, true},
		{"x", 0, true},
	} {
		got, err := ParseFraction(c.in)
		if c.bad {
			if err == nil {
				t.Errorf("ParseFraction(%q) = %g, want an error", c.in, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseFraction(%q) = %g, %v; want %g", c.in, got, err, c.want)
		}
	}
}

func TestFormatBytes(t *testing.T) {
	for in, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 256 << 20: "256.0 MiB", 3 << 29: "1.5 GiB"} {
		if got := FormatBytes(in); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", in, got, want)
		}
	}
}

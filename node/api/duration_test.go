package api

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

func readFile(name string) (string, error) {
	b, err := os.ReadFile(name)
	return string(b), err
}

func TestDurationMarshal(t *testing.T) {
	for d, want := range map[time.Duration]string{
		5 * time.Second:          `"5s"`,
		90 * time.Second:         `"1m30s"`,
		250 * time.Millisecond:   `"250ms"`,
		0:                        `"0s"`,
		-2 * time.Hour:           `"-2h0m0s"`,
		time.Duration(1<<63 - 1): `"2562047h47m16.854775807s"`,
	} {
		b, err := json.Marshal(Duration(d))
		if err != nil || string(b) != want {
			t.Errorf("Marshal(%v) = %s, %v; want %s", d, b, err, want)
		}
	}
	b, _ := json.Marshal(AppInfo{Interval: Duration(5 * time.Second)})
	if !strings.Contains(string(b), `"interval":"5s"`) {
		t.Errorf("AppInfo interval: %s", b)
	}
}

func TestDurationUnmarshal(t *testing.T) {
	for in, want := range map[string]time.Duration{
		`"5s"`:                       5 * time.Second,
		`"1m30s"`:                    90 * time.Second,
		`"1.5s"`:                     1500 * time.Millisecond,
		`"0"`:                        0,
		`5000000000`:                 5 * time.Second,
		`5e9`:                        5 * time.Second,
		`0`:                          0,
		`-1000`:                      -time.Microsecond,
		`"-3ms"`:                     -3 * time.Millisecond,
		`1.0e3`:                      time.Microsecond,
		`"2562047h47m16.854775807s"`: time.Duration(1<<63 - 1),
	} {
		var d Duration
		if err := json.Unmarshal([]byte(in), &d); err != nil || time.Duration(d) != want {
			t.Errorf("Unmarshal(%s) = %v, %v; want %v", in, time.Duration(d), err, want)
		}
	}
	d := Duration(7)
	if err := json.Unmarshal([]byte(`null`), &d); err != nil || d != 7 {
		t.Errorf("null changed the value: %v, %v", d, err)
	}
	for _, in := range []string{`"5"`, `"abc"`, `""`, `1.5`, `true`, `{}`, `[]`, `1e30`, `-1e30`, `"5s`} {
		var d Duration
		if err := json.Unmarshal([]byte(in), &d); err == nil {
			t.Errorf("Unmarshal(%s) = %v, want an error", in, d)
		}
	}
	var req RunRequest
	if err := json.Unmarshal([]byte(`{"interval":"2m"}`), &req); err != nil || req.Interval != Duration(2*time.Minute) {
		t.Errorf("RunRequest interval: %v, %v", req.Interval, err)
	}
}

// FuzzDuration: whatever a Duration accepts, it writes back in a form it
// reads as the same value.
func FuzzDuration(f *testing.F) {
	for _, s := range []string{`"5s"`, `5000000000`, `5e9`, `"1h2m3.5s"`, `-7`, `null`, `"-0s"`, `9.2e18`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		var d Duration
		if err := json.Unmarshal([]byte(in), &d); err != nil {
			return
		}
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("Marshal(%v): %v", time.Duration(d), err)
		}
		var back Duration
		if err := json.Unmarshal(b, &back); err != nil || back != d {
			t.Fatalf("%s → %v → %s → %v, %v", in, time.Duration(d), b, time.Duration(back), err)
		}
	})
}

package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
)

// Duration is a time.Duration that travels in JSON as Go's duration string
// ("5s", "1m30s", "250ms", "0s"). It accepts that string form and also a
// JSON number of nanoseconds (5000000000, 5e9), which is what a plain
// time.Duration marshals to. null leaves the value unchanged. Convert with
// api.Duration(d) and time.Duration(v).
type Duration time.Duration

// String is time.Duration's String.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes the duration string, e.g. "5s".
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a duration string ("5s") or a whole number of
// nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) == 0 {
		return errors.New("duration: empty value")
	}
	if string(b) == "null" {
		return nil
	}
	if b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("duration: %w", err)
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: want a Go duration such as \"5s\" or \"1m30s\"", s)
		}
		*d = Duration(v)
		return nil
	}
	if n, err := strconv.ParseInt(string(b), 10, 64); err == nil {
		*d = Duration(n)
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return fmt.Errorf("duration %s: want a string such as \"5s\" or a number of nanoseconds", b)
	}
	if f != math.Trunc(f) || f >= math.MaxInt64 || f < math.MinInt64 {
		return fmt.Errorf("duration %s: not a whole number of nanoseconds in range", b)
	}
	*d = Duration(int64(f))
	return nil
}

package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestExampleIsDefault(t *testing.T) {
	got, err := Load("../../config.example.yaml", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := DefaultConfig(); !reflect.DeepEqual(got, want) {
		t.Fatalf("config.example.yaml decodes to\n%+v\nwant DefaultConfig()\n%+v", got, want)
	}
}

func TestExampleListsEveryKey(t *testing.T) {
	body, err := os.ReadFile("../../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for key := range flatten(DefaultConfig()) {
		leaf := key[strings.LastIndexByte(key, '.')+1:]
		if !strings.Contains(string(body), "  "+leaf+":") {
			t.Errorf("config.example.yaml does not show key %s", key)
		}
	}
}

func TestDefaultValidates(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestPrecedence(t *testing.T) {
	p := writeFile(t, "checkpoint:\n  interval: 2s\n  retention: 3\nnode:\n  state_dir: /srv/doppel\n")
	t.Setenv("DOPPEL_CHECKPOINT_INTERVAL", "3s")
	t.Setenv("DOPPEL_LOG_LEVEL", "debug")
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.String("state-dir", "", "")
	fs.String("log-level", "", "")
	if err := fs.Parse([]string{"--state-dir", "/tmp/flag"}); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p, fs, map[string]string{"state-dir": "node.state_dir", "log-level": "log.level"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Checkpoint.Interval != 3*time.Second {
		t.Errorf("interval = %v, want env's 3s over file's 2s", c.Checkpoint.Interval)
	}
	if c.Checkpoint.Retention != 3 {
		t.Errorf("retention = %d, want file's 3", c.Checkpoint.Retention)
	}
	if c.Node.StateDir != "/tmp/flag" {
		t.Errorf("state_dir = %q, want flag's /tmp/flag", c.Node.StateDir)
	}
	if c.Log.Level != "debug" {
		t.Errorf("log.level = %q, want env's debug (flag not set)", c.Log.Level)
	}
}

func TestMissingDefaultFileIsFine(t *testing.T) {
	c, err := load("", filepath.Join(t.TempDir(), "absent.yaml"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, DefaultConfig()) {
		t.Fatalf("got %+v", c)
	}
}

func TestBadInput(t *testing.T) {
	cases := []struct {
		name, body string
		env        map[string]string
		want       []string
	}{
		{name: "unknown key", body: "checkpoint:\n  intervall: 5s\n", want: []string{"unknown key checkpoint.intervall", "config.example.yaml"}},
		{name: "unknown section", body: "nodes:\n  name: a\n", want: []string{"unknown key nodes.name"}},
		{name: "bad duration", body: "checkpoint:\n  interval: 5x\n", want: []string{"checkpoint.interval", `"5x" is not a duration`, "5s"}},
		{name: "duration without unit", body: "checkpoint:\n  interval: 5\n", want: []string{"checkpoint.interval", "no unit"}},
		{name: "bad env duration", env: map[string]string{"DOPPEL_CHECKPOINT_INTERVAL": "soon"}, want: []string{"checkpoint.interval", `"soon"`}},
		{name: "too short", body: "checkpoint:\n  interval: 1ms\n", want: []string{"checkpoint.interval: 1ms is not valid", "100ms"}},
		{name: "retention", body: "checkpoint:\n  retention: 0\n", want: []string{"checkpoint.retention: 0"}},
		{name: "relative dir", body: "node:\n  state_dir: var/lib\n", want: []string{`node.state_dir: "var/lib"`, "absolute"}},
		{name: "log level", body: "log:\n  level: loud\n", want: []string{`log.level: "loud"`, "debug, info, warn or error"}},
		{name: "bad name", body: "node:\n  name: \"a b\"\n", want: []string{"node.name"}},
		{name: "not yaml", body: "node: [\n", want: []string{"cannot read"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			p := writeFile(t, tc.body)
			_, err := Load(p, nil, nil)
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans lines: %q", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}

func TestDefaultFileIsRead(t *testing.T) {
	p := writeFile(t, "log:\n  format: json\n")
	c, err := load("", p, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Log.Format != "json" {
		t.Fatalf("log.format = %q, want json from the default file", c.Log.Format)
	}
}

func TestUnreadableFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"), nil, nil)
	if err == nil || !strings.Contains(err.Error(), "cannot read") {
		t.Fatalf("err = %v, want cannot read", err)
	}
}

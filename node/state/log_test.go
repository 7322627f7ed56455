package state

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestHclogAdapter(t *testing.T) {
	var buf bytes.Buffer
	root := newHclogAdapter(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: levelTrace})), slog.LevelInfo)
	l := root.Named("raft").Named("net").With("peer", "n2")

	l.Debug("dropped below the minimum")
	l.Info("state changed", "to", "leader")
	l.Warn("slow", "error", errors.New("boom"))
	l.Error("broken")
	out := buf.String()
	if strings.Contains(out, "dropped") {
		t.Fatalf("debug record passed an Info minimum:\n%s", out)
	}
	for _, want := range []string{
		`level=INFO msg="state changed" component=raft.net peer=n2 to=leader`,
		`level=WARN msg=slow component=raft.net peer=n2 err=boom`,
		`level=ERROR msg=broken`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if l.IsDebug() || !l.IsInfo() || l.GetLevel() != hclog.Info {
		t.Fatalf("level checks: debug %v info %v level %v", l.IsDebug(), l.IsInfo(), l.GetLevel())
	}

	// SetLevel on a derived logger moves the shared minimum.
	buf.Reset()
	l.SetLevel(hclog.Trace)
	root.Trace("now visible")
	if !strings.Contains(buf.String(), "level=DEBUG-4 msg=\"now visible\"") || !root.IsTrace() {
		t.Fatalf("trace after SetLevel: %q", buf.String())
	}
	l.SetLevel(hclog.Warn)

	// Routine raft warnings are demoted to Info, and dropped at Warn.
	buf.Reset()
	l.Warn("no known peers, aborting election")
	l.Error("failed to decode incoming command", "error", io.EOF)
	l.Error("failed to decode incoming command", "error", errors.New("bad msgpack"))
	out = buf.String()
	if strings.Contains(out, "aborting election") || strings.Count(out, "failed to decode") != 1 || !strings.Contains(out, "bad msgpack") {
		t.Fatalf("demotion:\n%s", out)
	}

	buf.Reset()
	w := l.StandardWriter(&hclog.StandardLoggerOptions{InferLevels: true})
	io.WriteString(w, "[ERROR] one\n[INFO] two\n[WARN]  three\n")
	out = buf.String()
	if !strings.Contains(out, "level=ERROR msg=one") || strings.Contains(out, "two") || !strings.Contains(out, "level=WARN msg=three") {
		t.Fatalf("standard writer:\n%s", out)
	}
	if l.ResetNamed("x").Name() != "x" || len(l.ImpliedArgs()) != 2 {
		t.Fatal("names or implied args")
	}
}

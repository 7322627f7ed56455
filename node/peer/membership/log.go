package membership

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
)

// logWriter turns memberlist's log lines ("[LEVEL] memberlist: message")
// into slog records at the matching level, and watches for the one line that
// reveals this node's own suspicion of another node, which memberlist does
// not expose otherwise (its Node.State is never updated: hashicorp/
// memberlist#266).
type logWriter struct {
	log       *slog.Logger
	onSuspect func(name string)
}

// Suspicion announcement of memberlist v0.6 (state.go, probeNode). A test
// fails if a memberlist upgrade changes it.
const (
	suspectPrefix = "memberlist: Suspect "
	suspectSuffix = " has failed, no acks received"
)

func (w *logWriter) Write(p []byte) (int, error) {
	for line := range bytes.Lines(p) {
		w.line(strings.TrimRight(string(line), "\r\n"))
	}
	return len(p), nil
}

func (w *logWriter) line(s string) {
	if s == "" {
		return
	}
	level := slog.LevelInfo
	if rest, ok := strings.CutPrefix(s, "["); ok {
		if tag, msg, ok := strings.Cut(rest, "] "); ok {
			switch tag {
			case "DEBUG", "TRACE":
				level = slog.LevelDebug
			case "WARN":
				level = slog.LevelWarn
			case "ERR", "ERROR":
				level = slog.LevelError
			}
			s = msg
		}
	}
	if name, ok := strings.CutPrefix(s, suspectPrefix); ok {
		if name, ok := strings.CutSuffix(name, suspectSuffix); ok && w.onSuspect != nil {
			w.onSuspect(name)
		}
	}
	w.log.Log(context.Background(), level, s)
}

package state

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// hclogAdapter sends the hclog output of raft and its transport to a
// slog.Logger. hclog levels map to slog levels (Trace to Debug-4, Debug,
// Info, Warn, Error); records below min are dropped before they reach the
// handler, so raft's routine Info chatter stays out of the daemon's log
// unless asked for. A few routine messages that raft logs at Warn or Error
// are demoted (see routine), and so is a peer closing its connection. raft's "error" key becomes the house key "err".
type hclogAdapter struct {
	log     *slog.Logger
	name    string
	min     *slog.LevelVar // shared by every logger derived from one root
	implied []any
}

var _ hclog.Logger = (*hclogAdapter)(nil)

// levelTrace is where hclog's Trace lands in slog.
const levelTrace = slog.LevelDebug - 4

func newHclogAdapter(l *slog.Logger, min slog.Level) *hclogAdapter {
	v := new(slog.LevelVar)
	v.Set(min)
	return &hclogAdapter{log: l, min: v}
}

func toSlogLevel(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace:
		return levelTrace
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	case hclog.Off:
		return slog.LevelError + 100
	}
	return slog.LevelInfo
}

func toHclogLevel(l slog.Level) hclog.Level {
	switch {
	case l <= levelTrace:
		return hclog.Trace
	case l <= slog.LevelDebug:
		return hclog.Debug
	case l <= slog.LevelInfo:
		return hclog.Info
	case l <= slog.LevelWarn:
		return hclog.Warn
	case l <= slog.LevelError:
		return hclog.Error
	}
	return hclog.Off
}

func (h *hclogAdapter) enabled(l slog.Level) bool {
	return l >= h.min.Level() && h.log.Enabled(context.Background(), l)
}

// routine reports raft messages logged at Warn or Error that describe
// normal operation (a node waiting to be added, a follower catching up, a
// vote refused because a leader is alive); they are logged at Info.
func routine(msg string) bool {
	switch msg {
	case "no known peers, aborting election",
		"failed to get previous log",
		"appendEntries rejected, sending older logs",
		"rejecting pre-vote request since we have a leader",
		"rejecting vote request since we have a leader":
		return true
	}
	return false
}

// demote returns the level to log a raft record at.
func demote(level hclog.Level, msg string, args []any) hclog.Level {
	if level < hclog.Warn {
		return level
	}
	if routine(msg) {
		return hclog.Info
	}
	if msg == "failed to decode incoming command" {
		for _, a := range args {
			if err, ok := a.(error); ok && (errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed)) {
				return hclog.Debug
			}
		}
	}
	return level
}

func (h *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	l := toSlogLevel(demote(level, msg, args))
	if !h.enabled(l) {
		return
	}
	attrs := make([]any, 0, len(h.implied)+len(args)+2)
	if h.name != "" {
		attrs = append(attrs, "component", h.name)
	}
	attrs = append(attrs, h.implied...)
	attrs = append(attrs, args...)
	for i := 0; i+1 < len(attrs); i += 2 {
		if k, ok := attrs[i].(string); ok && k == "error" {
			attrs[i] = "err"
		}
	}
	h.log.Log(context.Background(), l, msg, attrs...)
}

func (h *hclogAdapter) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *hclogAdapter) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *hclogAdapter) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *hclogAdapter) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *hclogAdapter) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }

func (h *hclogAdapter) IsTrace() bool { return h.enabled(levelTrace) }
func (h *hclogAdapter) IsDebug() bool { return h.enabled(slog.LevelDebug) }
func (h *hclogAdapter) IsInfo() bool  { return h.enabled(slog.LevelInfo) }
func (h *hclogAdapter) IsWarn() bool  { return h.enabled(slog.LevelWarn) }
func (h *hclogAdapter) IsError() bool { return h.enabled(slog.LevelError) }

func (h *hclogAdapter) ImpliedArgs() []any { return h.implied }

func (h *hclogAdapter) With(args ...any) hclog.Logger {
	c := *h
	c.implied = append(append([]any(nil), h.implied...), args...)
	return &c
}

func (h *hclogAdapter) Name() string { return h.name }

func (h *hclogAdapter) Named(name string) hclog.Logger {
	c := *h
	if c.name != "" {
		c.name += "." + name
	} else {
		c.name = name
	}
	return &c
}

func (h *hclogAdapter) ResetNamed(name string) hclog.Logger {
	c := *h
	c.name = name
	return &c
}

// SetLevel changes the minimum level of this logger and all derived from
// the same root.
func (h *hclogAdapter) SetLevel(level hclog.Level) { h.min.Set(toSlogLevel(level)) }

func (h *hclogAdapter) GetLevel() hclog.Level { return toHclogLevel(h.min.Level()) }

func (h *hclogAdapter) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(h.StandardWriter(opts), "", 0)
}

// StandardWriter returns a writer that logs each line. With
// opts.InferLevels a "[WARN]"-style prefix picks the level; otherwise
// opts.ForceLevel, else Info.
func (h *hclogAdapter) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	if opts == nil {
		opts = &hclog.StandardLoggerOptions{}
	}
	return &stdWriter{h: h, infer: opts.InferLevels, force: opts.ForceLevel}
}

type stdWriter struct {
	h     *hclogAdapter
	infer bool
	force hclog.Level
}

func (w *stdWriter) Write(p []byte) (int, error) {
	for line := range bytes.Lines(p) {
		msg := strings.TrimSpace(string(line))
		if msg == "" {
			continue
		}
		level := hclog.Info
		if w.force != hclog.NoLevel {
			level = w.force
		}
		if w.infer {
			for prefix, l := range map[string]hclog.Level{
				"[TRACE]": hclog.Trace, "[DEBUG]": hclog.Debug, "[INFO]": hclog.Info,
				"[WARN]": hclog.Warn, "[ERROR]": hclog.Error, "[ERR]": hclog.Error,
			} {
				if rest, ok := strings.CutPrefix(msg, prefix); ok {
					level, msg = l, strings.TrimSpace(rest)
					break
				}
			}
		}
		w.h.Log(level, msg)
	}
	return len(p), nil
}

package server

import (
	"io"
	"log/slog"
)

// NewLogger returns the structured logger the config asks for, writing to w
// (stderr in production; journald keeps it). When level is not nil it is
// set to the configured level and the logger follows it, so a reload can
// change the level of a running logger.
func NewLogger(w io.Writer, cfg Config, level *slog.LevelVar) *slog.Logger {
	l, _ := parseLogLevel(cfg.LogLevel)
	if level == nil {
		level = new(slog.LevelVar)
	}
	level.Set(l)
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// ParseLogLevel parses a --log-level value.
func ParseLogLevel(s string) (slog.Level, error) { return parseLogLevel(s) }

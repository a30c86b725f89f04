package server

import (
	"io"
	"log/slog"
)

// NewLogger returns the structured logger the config asks for, writing to w
// (stderr in production; journald keeps it).
func NewLogger(w io.Writer, cfg Config) *slog.Logger {
	level, _ := parseLogLevel(cfg.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

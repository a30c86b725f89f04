package persist

import (
	"context"
	"fmt"
	"log/slog"
)

// pebbleFatal is the panic value of pebbleLogger.Fatalf. The committer
// recovers it (and any other panic out of a commit) and reopens the DB.
type pebbleFatal struct{ msg string }

func (f pebbleFatal) Error() string { return f.msg }

// pebbleLogger routes Pebble's log to slog. Fatalf panics instead of calling
// os.Exit: see "Disk faults" in doc.go for which panics are recovered.
type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...), "source", "pebble")
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...), "source", "pebble")
}

func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.log.Error(msg, "source", "pebble", "fatal", true)
	panic(pebbleFatal{msg})
}

func (l pebbleLogger) IsTracingEnabled(context.Context) bool  { return false }
func (l pebbleLogger) Eventf(context.Context, string, ...any) {}

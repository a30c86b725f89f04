package persist

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// pebbleFatal is the panic value of pebbleLogger.Fatalf. The committer
// recovers it (and any other panic out of a commit) and reopens the DB.
type pebbleFatal struct{ msg string }

func (f pebbleFatal) Error() string { return f.msg }

// pebbleLogger routes Pebble's log to slog. Fatalf panics instead of calling
// os.Exit: see "Disk faults" in doc.go for which panics are recovered.
// Errors go through lim (when set), so a failing disk cannot flood the log.
type pebbleLogger struct {
	log *slog.Logger
	lim *logLimiter
}

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...), "source", "pebble")
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	if l.lim != nil {
		ok, suppressed := l.lim.allow()
		if !ok {
			return
		}
		l.log.Error(oneLine(fmt.Sprintf(format, args...)), "source", "pebble", "suppressed_since_last", suppressed)
		return
	}
	l.log.Error(oneLine(fmt.Sprintf(format, args...)), "source", "pebble")
}

func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := oneLine(fmt.Sprintf(format, args...))
	l.log.Error(msg, "source", "pebble", "fatal", true)
	panic(pebbleFatal{msg})
}

func (l pebbleLogger) IsTracingEnabled(context.Context) bool  { return false }
func (l pebbleLogger) Eventf(context.Context, string, ...any) {}

// logLimiter lets one line through per interval and counts the rest.
type logLimiter struct {
	every time.Duration

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// allow reports whether to log now, and how many lines were held back
// since the last one logged.
func (l *logLimiter) allow() (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		l.suppressed++
		return false, 0
	}
	l.last, suppressed, l.suppressed = now, l.suppressed, 0
	return true, suppressed
}

// oneLine cuts a message at its first newline: Pebble's errors (from
// cockroachdb/errors) may carry a multi-line stack trace after it.
func oneLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// errLine is oneLine of an error's message ("" for nil).
func errLine(err error) string {
	if err == nil {
		return ""
	}
	return oneLine(err.Error())
}

package persist

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
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
	// walStop, when set, gets Pebble's note of where it stopped reading
	// each WAL at open (the detail of a damaged log).
	walStop func(msg string)
}

func (l pebbleLogger) Infof(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if l.walStop != nil && strings.Contains(msg, "stopped reading at offset") {
		l.walStop(msg)
	}
	l.log.Debug(msg, "source", "pebble")
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
	if !recoverableHere() {
		// On one of Pebble's own goroutines (a flush or compaction that
		// could not write the MANIFEST) nobody recovers the panic: the
		// process would die with Go's status 2, which presenced keeps for
		// usage errors. Exit 1 with the reason instead, as Pebble's own
		// logger would exit.
		l.log.Error("pebble cannot continue; exiting (the log replays at the next start): "+msg, "source", "pebble", "fatal", true)
		fatalExit()
	}
	l.log.Error(msg, "source", "pebble", "fatal", true)
	panic(pebbleFatal{msg})
}

// fatalExit ends the process after a Fatalf nobody can recover.
var fatalExit = func() { os.Exit(1) }

// recoverableHere reports whether the calling goroutine runs persist code
// that recovers a panic (a commit, an open, a close, a repair) rather than
// one of Pebble's background goroutines.
func recoverableHere() bool {
	var buf [16 << 10]byte
	n := runtime.Stack(buf[:], false)
	st := buf[:n]
	for _, f := range recoveringFrames {
		if bytes.Contains(st, f) {
			return true
		}
	}
	return false
}

// recoveringFrames are the persist functions that recover a Fatalf panic
// below them (Store methods: apply, openDB, setMarker, compact, Replay;
// closeDB; Repair and its helpers).
var recoveringFrames = [][]byte{
	[]byte("presenced/persist.(*Store)."),
	[]byte("presenced/persist.closeDB"),
	[]byte("presenced/persist.Repair"),
	[]byte("presenced/persist.openDamaged"),
	[]byte("presenced/persist.copyReadable"),
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

package server

import "time"

// clock is the server's time source, an interface so tests can step the
// wall clock. Wall time (unix ms) dates what is stored and shown: session
// expiries, last-seen, events. Monotonic time (ms from an arbitrary origin,
// never stepped) measures rates and ages: the per-source limiter and the
// watchdog's Alive. So an NTP or operator step of the wall clock neither
// leaves every source's bucket empty (after a step back) nor trips the
// watchdog (after a step forward).
type clock interface {
	// Now returns wall time in unix ms and monotonic time in ms (never 0).
	// It is safe for concurrent use and does not allocate.
	Now() (wallMs, monoMs int64)
}

// systemClock reads time.Now once: its wall reading and, through Sub, its
// monotonic reading.
type systemClock struct{ origin time.Time }

// newSystemClock puts the monotonic origin an hour in the past, so that
// monotonic time is never 0 (0 means "never" to its readers).
func newSystemClock() systemClock { return systemClock{origin: time.Now().Add(-time.Hour)} }

func (c systemClock) Now() (int64, int64) {
	t := time.Now()
	return t.UnixMilli(), int64(t.Sub(c.origin) / time.Millisecond)
}

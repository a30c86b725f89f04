package persist

import "fmt"

// State is what the store can do right now; the server exports it as a
// metric and names it in /readyz.
type State uint8

const (
	// StateOpening: made by New, Open has not succeeded yet.
	StateOpening State = iota
	// StateOK: commits succeed.
	StateOK
	// StateFailing: commits fail (write or sync errors, a full disk); the
	// backlog is kept and retried every cycle.
	StateFailing
	// StateUnavailable: the database was closed after a fatal error and is
	// being reopened (with backoff); LastSeen answers ErrUnavailable.
	StateUnavailable
	// StateCorrupt: a checksum failed; the store needs Repair.
	StateCorrupt
	// StateClosed: Close was called.
	StateClosed
	numStates
)

var stateNames = [numStates]string{"opening", "ok", "failing", "unavailable", "corrupt", "closed"}

// States lists every State, in order (for one-hot metrics).
func States() []State {
	s := make([]State, numStates)
	for i := range s {
		s[i] = State(i)
	}
	return s
}

func (st State) String() string {
	if st < numStates {
		return stateNames[st]
	}
	return fmt.Sprintf("State(%d)", uint8(st))
}

// State returns the store's state. It never waits on the disk.
func (s *Store) State() State {
	s.mu.Lock()
	closed, health := s.mu.closed, s.mu.health
	s.mu.Unlock()
	switch {
	case closed:
		return StateClosed
	case s.corrupt.Load() != nil:
		return StateCorrupt
	case !s.opened.Load():
		return StateOpening
	case s.dbDown.Load():
		return StateUnavailable
	case health != nil:
		return StateFailing
	}
	return StateOK
}

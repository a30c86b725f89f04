// Package testkit is the poll helper of presenced's tests (wait, with a
// bounded deadline, for a condition that another goroutine makes true),
// their one source of free loopback ports ([FreePort]) and the one
// launcher of the real presenced binary ([Build] compiles it once per test
// process, [StartProc] runs it on a free port and waits for /readyz).
//
// It imports only the standard library and nothing of presenced (Build
// runs the go tool on the module's main package), so every
// package's tests can use it: persist's too, although persist never imports
// server (TestDependencyDirection checks persist's non-test dependencies and
// allows this one test-only import, which brings no server code along). The
// black-box server harness that needs the server lives beside it in
// internal/servertest.
//
// A test that waits for something to happen polls with [Eventually] (or
// [EventuallyErr], whose failure says what state it last saw); a
// test that must show something did NOT happen waits for a later signal
// that must come after it (a marker event, a metric that counts the thing)
// and then asserts, rather than sleeping.
package testkit

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Eventually calls f until it returns true, and fails t (naming what and
// how long it waited) when d passes first. It polls every millisecond at
// first and backs off to every 10 ms, so a fast condition costs little and
// a slow one little CPU. f runs on the test's goroutine; it may call
// t.Fatal.
func Eventually(t testing.TB, d time.Duration, what string, f func() bool) {
	t.Helper()
	EventuallyErr(t, d, what, func() error {
		if f() {
			return nil
		}
		return errNotYet
	})
}

// errNotYet is Eventually's condition not holding: nothing more to say.
var errNotYet = errors.New("not yet")

// EventuallyErr is Eventually for a condition that can say why it does
// not hold yet: f returns nil once it holds, and the failure carries the
// last error f returned (the state a reader needs to see what went wrong).
func EventuallyErr(t testing.TB, d time.Duration, what string, f func() error) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(d)
	pause := time.Millisecond
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			if err == errNotYet {
				t.Fatalf("timed out after %s waiting for %s", time.Since(start).Round(time.Millisecond), what)
			}
			t.Fatalf("timed out after %s waiting for %s: %v", time.Since(start).Round(time.Millisecond), what, err)
		}
		time.Sleep(pause)
		pause = min(2*pause, 10*time.Millisecond)
	}
}

// FreePort returns a loopback port that was free a moment ago for both
// TCP and UDP, so one number serves a node's HTTP and UDP listeners (or
// either alone). Another process may take it before the caller binds it.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("cannot find a free port: %v", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(p))
		l.Close()
		if err == nil {
			u.Close()
			return p
		}
	}
	t.Fatalf("cannot find a port free for both TCP and UDP in 100 tries")
	return 0
}

// UDPPortDrops sums the kernel's drop counts (the last column of
// /proc/net/udp and /proc/net/udp6) of the UDP sockets bound to local port,
// the figure the server's kernel-drop metric must match. It fails t when
// /proc/net/udp cannot be read.
func UDPPortDrops(t testing.TB, port int) uint64 {
	t.Helper()
	want := fmt.Sprintf(":%04X", port)
	var total uint64
	for _, name := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		b, err := os.ReadFile(name)
		if err != nil {
			if name == "/proc/net/udp" {
				t.Fatal(err)
			}
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 13 || !strings.HasSuffix(f[1], want) {
				continue
			}
			v, _ := strconv.ParseUint(f[len(f)-1], 10, 64)
			total += v
		}
	}
	return total
}

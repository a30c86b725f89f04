package testkit

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeT records a Fatalf and stops the poll with a panic the test recovers.
type fakeT struct {
	testing.TB
	msg string
}

func (f *fakeT) Helper() {}
func (f *fakeT) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic(f)
}

func TestEventuallyReturnsOnceTrue(t *testing.T) {
	var n atomic.Int32
	go func() {
		for range 3 {
			time.Sleep(time.Millisecond) // paces the writer only
			n.Add(1)
		}
	}()
	Eventually(t, 5*time.Second, "three increments", func() bool { return n.Load() == 3 })
}

func TestEventuallyFailsNamingWhatAndHowLong(t *testing.T) {
	ft := &fakeT{TB: t}
	calls := 0
	start := time.Now()
	func() {
		defer func() {
			if r := recover(); r != ft {
				t.Fatalf("recovered %v, want the fake's Fatalf", r)
			}
		}()
		Eventually(ft, 30*time.Millisecond, "the moon", func() bool { calls++; return false })
	}()
	if waited := time.Since(start); waited < 30*time.Millisecond {
		t.Fatalf("gave up after %s, before the 30ms deadline", waited)
	}
	if !strings.HasPrefix(ft.msg, "timed out after ") || !strings.HasSuffix(ft.msg, "ms waiting for the moon") || calls < 2 {
		t.Fatalf("message %q after %d polls: want how long and what", ft.msg, calls)
	}
}

func TestEventuallyErrFailsWithTheLastState(t *testing.T) {
	ft := &fakeT{TB: t}
	calls := 0
	func() {
		defer func() {
			if r := recover(); r != ft {
				t.Fatalf("recovered %v, want the fake's Fatalf", r)
			}
		}()
		EventuallyErr(ft, 20*time.Millisecond, "the tide", func() error { calls++; return fmt.Errorf("height %d", calls) })
	}()
	if want := fmt.Sprintf("waiting for the tide: height %d", calls); !strings.HasSuffix(ft.msg, want) {
		t.Fatalf("message %q: want it to end with %q", ft.msg, want)
	}
	EventuallyErr(t, time.Second, "nil at once", func() error { return nil })
}

func TestFreePortIsFreeForTCPAndUDP(t *testing.T) {
	p := FreePort(t)
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
	if err != nil {
		t.Fatalf("port %d is not free for TCP: %v", p, err)
	}
	defer l.Close()
	u, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(p))
	if err != nil {
		t.Fatalf("port %d is not free for UDP: %v", p, err)
	}
	u.Close()
}

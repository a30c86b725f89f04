package main

import (
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// notifier speaks systemd's notify protocol (Type=notify) when
// NOTIFY_SOCKET is set, and does nothing otherwise.
type notifier struct{ log *slog.Logger }

func newNotifier(log *slog.Logger) *notifier { return &notifier{log: log} }

func (n *notifier) send(state string) {
	if ok, err := daemon.SdNotify(false, state); err != nil {
		n.log.Warn("cannot notify systemd", "state", state, "err", err)
	} else if ok {
		n.log.Debug("notified systemd", "state", state)
	}
}

// ready says the log is replayed and both listeners are up.
func (n *notifier) ready() { n.send(daemon.SdNotifyReady) }

// stopping says shutdown has begun.
func (n *notifier) stopping() { n.send(daemon.SdNotifyStopping) }

// reloading says a SIGHUP reload is in progress (ready follows it).
func (n *notifier) reloading() { n.send(daemon.SdNotifyReloading) }

// watchdog pings systemd at half WatchdogSec while alive() holds, and
// returns a function that stops it. alive is the server's own liveness
// (its sweeper still takes every lock), not readiness: a node whose
// write-ahead log fails keeps pinging, as a restart would not mend the disk.
func (n *notifier) watchdog(alive func() bool) (stop func()) {
	every, err := daemon.SdWatchdogEnabled(false)
	if err != nil || every <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(every / 2)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if alive() {
					n.send(daemon.SdNotifyWatchdog)
				} else {
					n.log.Error("not alive: withholding the systemd watchdog ping")
				}
			}
		}
	}()
	return func() { close(done) }
}

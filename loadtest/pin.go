package loadtest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// pinnedEnv marks a process that --cpu already re-executed pinned, so it
// does not do it again.
const pinnedEnv = "PRESENCED_LOADTEST_PINNED"

// parseCPUList parses a CPU list as taskset -c takes it: "0", "0,2",
// "0-3". Empty is no list.
func parseCPUList(s string) (unix.CPUSet, error) {
	var set unix.CPUSet
	if s == "" {
		return set, nil
	}
	for _, f := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(f), "-")
		a, err1 := strconv.Atoi(lo)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 0 || b < a || b >= 1024 {
			return set, fmt.Errorf("%q is not a CPU list such as 0 or 0,2 or 0-3", s)
		}
		for c := a; c <= b; c++ {
			set.Set(c)
		}
	}
	return set, nil
}

// startPinned starts cmd on the CPUs in set: it is started from a thread
// pinned to them, and a child inherits the affinity of the thread that
// forks it (a Go child sizes GOMAXPROCS from it). The pinned thread exits
// with its goroutine, so this process's own threads stay unpinned.
func startPinned(set unix.CPUSet, cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	go func() {
		// This thread's affinity changes for good; it is never handed back
		// to the scheduler (the goroutine ends locked, so the thread exits).
		runtime.LockOSThread()
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			errc <- fmt.Errorf("cannot pin to --cpu: %w", err)
			return
		}
		errc <- cmd.Start()
	}()
	return <-errc
}

// runPinned re-executes `presenced loadtest args...` on the CPUs of
// --cpu, passes SIGINT/SIGTERM on, and returns its exit status.
func runPinned(cpus string, args []string, stdout, stderr io.Writer) int {
	set, err := parseCPUList(cpus)
	if err != nil {
		fmt.Fprintf(stderr, "presenced loadtest: --cpu: %v\n", err)
		return 2
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "presenced loadtest: cannot find this executable for --cpu: %v\n", err)
		return 1
	}
	cmd := exec.Command(exe, append([]string{"loadtest"}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	cmd.Env = append(os.Environ(), pinnedEnv+"="+cpus)
	if err := startPinned(set, cmd); err != nil {
		fmt.Fprintf(stderr, "presenced loadtest: %v\n", err)
		return 1
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case s := <-sigs:
				_ = cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	if err := cmd.Wait(); err != nil {
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			return ee.ExitCode()
		}
		fmt.Fprintf(stderr, "presenced loadtest: %v\n", err)
		return 1
	}
	return 0
}

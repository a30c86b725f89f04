package testkit

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// mainPackage is presenced's command, which Build compiles.
const mainPackage = "github.com/presenced/presenced"

var builds struct {
	mu  sync.Mutex
	dir string            // temporary directory of every build; RemoveBuilds deletes it
	m   map[string]*build // by the go build flags
}

type build struct {
	once sync.Once
	path string
	err  error
}

// Build returns the path of the presenced binary compiled with the go
// build flags (for example "-race", or "-ldflags", "-X main.buildTime=…").
// Each distinct set of flags is compiled once per test process; later
// calls, also a failed build's, return the first call's result. The
// binaries live in one temporary directory that [RemoveBuilds] deletes:
// a package whose tests call Build calls it from TestMain after m.Run.
func Build(flags ...string) (string, error) {
	key := strings.Join(flags, "\x00")
	builds.mu.Lock()
	if builds.m == nil {
		builds.m = make(map[string]*build)
	}
	b := builds.m[key]
	if b == nil {
		b = &build{}
		builds.m[key] = b
	}
	if builds.dir == "" {
		dir, err := os.MkdirTemp("", "presenced-bin")
		if err != nil {
			builds.mu.Unlock()
			return "", fmt.Errorf("cannot build presenced: %w", err)
		}
		builds.dir = dir
	}
	path := filepath.Join(builds.dir, "presenced-"+strconv.Itoa(len(builds.m)))
	builds.mu.Unlock()
	b.once.Do(func() {
		args := append(append([]string{"build"}, flags...), "-o", path, mainPackage)
		if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
			b.err = fmt.Errorf("cannot build presenced: %w\n%s", err, out)
			return
		}
		b.path = path
	})
	return b.path, b.err
}

// BuildT is Build that fails t when the build fails.
func BuildT(t testing.TB, flags ...string) string {
	t.Helper()
	path, err := Build(flags...)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// RemoveBuilds deletes every binary Build made.
func RemoveBuilds() {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.dir != "" {
		os.RemoveAll(builds.dir)
	}
	builds.dir, builds.m = "", nil
}

// ProcConfig says how StartProc runs the binary.
type ProcConfig struct {
	Bin  string   // the binary (Build)
	Args []string // after "serve --http-addr A --udp-addr A"; a later flag wins
	Env  []string // added to the test's environment
	// Wrap, when set, is a command that runs the binary: the process is
	// Wrap[0] with arguments Wrap[1:], then Bin and its arguments (for
	// example "taskset", "-c", "1").
	Wrap []string
	// Ready bounds the wait for /readyz; 0 means 20 s.
	Ready time.Duration
}

// Proc is one running presenced process of a test.
type Proc struct {
	t    testing.TB
	Cmd  *exec.Cmd
	Addr string // host:port of both the HTTP and the UDP listener
	Base string // http://Addr
	errb syncBuffer
	done chan struct{} // closed when the process has exited
	err  error         // Cmd.Wait's result, once done is closed
}

// StartProc runs "presenced serve" on one free loopback port for HTTP and
// UDP, waits until /readyz answers 200 (failing t if the process exits or
// the wait times out first, with its stderr), and kills the process when
// the test ends unless it has exited by then.
func StartProc(t testing.TB, cfg ProcConfig) *Proc {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(FreePort(t))
	p := &Proc{t: t, Addr: addr, Base: "http://" + addr, done: make(chan struct{})}
	args := append([]string{"serve", "--http-addr", addr, "--udp-addr", addr}, cfg.Args...)
	if len(cfg.Wrap) > 0 {
		args = append(append(append([]string{}, cfg.Wrap[1:]...), cfg.Bin), args...)
		p.Cmd = exec.Command(cfg.Wrap[0], args...)
	} else {
		p.Cmd = exec.Command(cfg.Bin, args...)
	}
	p.Cmd.Stderr = &p.errb
	p.Cmd.Env = append(os.Environ(), cfg.Env...)
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("cannot start presenced: %v", err)
	}
	go func() { p.err = p.Cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.Cmd.Process.Kill()
			<-p.done
		}
	})
	ready := cfg.Ready
	if ready == 0 {
		ready = 20 * time.Second
	}
	client := &http.Client{Timeout: time.Second}
	EventuallyErr(t, ready, "presenced to be ready", func() error {
		select {
		case <-p.done:
			t.Fatalf("presenced exited before ready: %v\n%s", p.err, p.Stderr())
		default:
		}
		resp, err := client.Get(p.Base + "/readyz")
		if err != nil {
			return fmt.Errorf("%w\n%s", err, p.Stderr())
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %d\n%s", resp.StatusCode, p.Stderr())
		}
		return nil
	})
	return p
}

// Stderr returns what the process has written to stderr so far.
func (p *Proc) Stderr() string { return p.errb.String() }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Stop sends sig and returns the exit status; it kills the process and
// fails the test if it has not exited 30 s later.
func (p *Proc) Stop(sig os.Signal) int {
	p.t.Helper()
	_ = p.Cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.Cmd.Process.Kill()
		<-p.done
		p.t.Fatalf("presenced did not exit after %v:\n%s", sig, p.Stderr())
	}
	return p.Cmd.ProcessState.ExitCode()
}

// syncBuffer is a bytes.Buffer that the process writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

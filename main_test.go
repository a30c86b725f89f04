package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server/token"
	"github.com/presenced/presenced/server/wire"
)

// binPath is the presenced binary built once for the tests that drive the
// real process, with -ldflags setting main.buildTime to testBuildTime.
var binPath string

const testBuildTime = "2026-12-07T22:00:00Z"

func TestMain(m *testing.M) {
	var err error
	binPath, err = testkit.Build("-race", "-buildvcs=auto", "-ldflags", "-X main.buildTime="+testBuildTime)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	testkit.RemoveBuilds()
	os.Exit(code)
}

func TestExitCodes(t *testing.T) {
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"version"}, 0, ""},
		{[]string{"help"}, 0, ""},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"serve", "--no-such-flag"}, 2, "no-such-flag"},
		{[]string{"serve", "--ttl", "-1s"}, 2, "--ttl"},
		{[]string{"serve", "--interval", "3m"}, 2, "--interval"},
		{[]string{"serve", "--fsync", "sometimes"}, 2, "--fsync"},
		{[]string{"serve", "--log-level", "loud"}, 2, "--log-level"},
		{[]string{"serve", "--secret-file", "/nonexistent/keys", "--data-dir", ""}, 2, "--secret-file"},
		{[]string{"config", "--config", "/nonexistent/file"}, 2, "config file"},
		{[]string{"token", "--user", "u"}, 2, "--secret-file"},
	}
	for _, tc := range cases {
		var out, errb bytes.Buffer
		if code := run(tc.args, &out, &errb); code != tc.code || !strings.Contains(errb.String(), tc.msg) {
			t.Errorf("%v: exit %d (want %d), stderr %q does not name %q", tc.args, code, tc.code, errb.String(), tc.msg)
		}
	}
}

// TestVersionAndBuildInfo: `presenced version` and `presenced --version`
// print the binary's module version, VCS revision (as `go version -m`
// reads it from the binary; "unknown" in a build without VCS stamping),
// Go version and build time, and /metrics carries the same as
// presenced_build_info.
func TestVersionAndBuildInfo(t *testing.T) {
	m, err := exec.Command("go", "version", "-m", binPath).Output()
	if err != nil {
		t.Fatal(err)
	}
	rev, modified := "unknown", ""
	for line := range strings.Lines(string(m)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "build\tvcs.revision="); ok {
			rev = v
		}
		if strings.TrimSpace(line) == "build\tvcs.modified=true" {
			modified = " (modified)"
		}
	}
	var first string
	for _, arg := range []string{"version", "--version"} {
		out, err := exec.Command(binPath, arg).Output()
		if err != nil {
			t.Fatalf("presenced %s: %v", arg, err)
		}
		for _, want := range []string{"presenced ", "revision: " + rev + modified + "\n", "go: " + runtime.Version() + "\n", "build time: " + testBuildTime + "\n"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("presenced %s lacks %q:\n%s", arg, want, out)
			}
		}
		if first == "" {
			first = string(out)
		} else if string(out) != first {
			t.Errorf("--version differs from version:\n%s\n%s", out, first)
		}
	}
	version := strings.TrimSpace(strings.TrimPrefix(strings.SplitN(first, "\n", 2)[0], "presenced "))
	p := startProc(t)
	resp, err := http.Get(p.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	label := rev
	if modified != "" {
		label += "-modified"
	}
	want := fmt.Sprintf("presenced_build_info{goversion=%q,revision=%q,version=%q} 1\n", runtime.Version(), label, version)
	if !strings.Contains(string(body), want) {
		t.Fatalf("/metrics lacks %s", want)
	}
}

func TestConfigPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "presenced.conf")
	os.WriteFile(file, []byte("# test\nttl = 90s\ninterval = 30s\nhttp-addr = \"127.0.0.1:1111\"\nmax-batch = 7\n"), 0o600)
	t.Setenv("PRESENCED_CONFIG", file)
	t.Setenv("PRESENCED_TTL", "120s")
	t.Setenv("PRESENCED_HTTP_ADDR", "127.0.0.1:2222")
	var out, errb bytes.Buffer
	if code := run([]string{"config", "--http-addr", "127.0.0.1:3333"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{
		`http-addr = "127.0.0.1:3333"`, // flag beats environment and file
		`ttl = "2m0s"`,                 // environment beats file
		`interval = "30s"`,             // file beats default
		`max-batch = "7"`,
		`udp-addr = "127.0.0.1:7070"`, // default
	} {
		if !strings.Contains(out.String(), want+"\n") {
			t.Errorf("effective config lacks %s:\n%s", want, out.String())
		}
	}
}

func TestTokenCommand(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	os.WriteFile(keys, []byte("main 0123456789abcdef0123456789abcdef-cmd\n"), 0o600)
	var out, errb bytes.Buffer
	if code := run([]string{"token", "--secret-file", keys, "--user", "alice", "--room", "r1", "--valid-for", "10m"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	kr, _ := token.LoadKeyring(keys)
	tok := bytes.TrimSpace(out.Bytes())
	now := time.Now().Unix()
	if err := kr.Verify(tok, []byte("alice"), []byte("r1"), now); err != nil {
		t.Fatalf("minted token does not verify: %v", err)
	}
	if err := kr.Verify(tok, []byte("alice"), []byte("r2"), now); err == nil {
		t.Fatal("room-bound token verifies for another room")
	}
	if err := kr.Verify(tok, []byte("alice"), []byte("r1"), now+11*60); err == nil {
		t.Fatal("token verifies after --valid-for")
	}
}

// proc is one running presenced process (testkit.StartProc), with the
// short names these tests use.
type proc struct {
	*testkit.Proc
	cmd  *exec.Cmd
	base string
	udp  string
	errb interface{ String() string }
	done <-chan struct{} // closed when the process has exited
}

// startProc runs the binary and waits until /readyz answers 200.
func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	return startProcEnv(t, nil, args...)
}

func startProcEnv(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := testkit.StartProc(t, testkit.ProcConfig{Bin: binPath, Env: env, Args: append([]string{"--udp-loops", "2"}, args...)})
	return &proc{Proc: p, cmd: p.Cmd, base: p.Base, udp: p.Addr, errb: stderrOf{p}, done: p.Done()}
}

// stderrOf reads a process's stderr as it is at the call.
type stderrOf struct{ p *testkit.Proc }

func (s stderrOf) String() string { return s.p.Stderr() }

// stop sends sig and returns the exit status.
func (p *proc) stop(sig syscall.Signal) int { return p.Stop(sig) }

func TestSIGTERMExitsZeroAndKeepsSessions(t *testing.T) {
	dir := t.TempDir()
	p := startProc(t, "--data-dir", dir)
	for i := range 50 {
		body := fmt.Sprintf(`{"user":"u%d","room":"r%d"}`, i, i%5)
		resp, err := http.Post(p.base+"/v1/heartbeat", "application/json", strings.NewReader(body))
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("heartbeat: %v %v", err, resp)
		}
		resp.Body.Close()
	}
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit status %d after SIGTERM, want 0:\n%s", code, p.errb.String())
	}
	p2 := startProc(t, "--data-dir", dir)
	var st struct{ Sessions, Rooms int }
	getJSON(t, p2.base+"/v1/stats", &st)
	if st.Sessions != 50 || st.Rooms != 5 {
		t.Fatalf("after restart: %+v, want 50 sessions in 5 rooms", st)
	}
	if strings.Contains(p2.errb.String(), "did not shut down cleanly") {
		t.Fatal("a clean SIGTERM shutdown was reported as unclean")
	}
	if code := p2.stop(syscall.SIGINT); code != 0 {
		t.Fatalf("exit status %d after SIGINT", code)
	}
}

func getJSON(t *testing.T, u string, out any) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", u, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("GET %s: %v in %s", u, err, b)
	}
}

// ackRecord is the promise a node made: the heartbeat sent at sent for
// (user, room) was answered at acked.
type ackRecord struct {
	user, room  string
	sent, acked time.Time
}

// expectation is what must be back after a crash, per user.
type expectation struct {
	rooms    map[string]bool
	lastSeen time.Time // the restored last_seen may not be older
}

// drive sends HTTP and UDP heartbeats with acks until ctx ends, and returns
// what was acknowledged.
func drive(ctx context.Context, p *proc, round int) []ackRecord {
	var (
		mu   sync.Mutex
		acks []ackRecord
		wg   sync.WaitGroup
	)
	record := func(a ackRecord) { mu.Lock(); acks = append(acks, a); mu.Unlock() }
	client := &http.Client{Timeout: 2 * time.Second}
	for w := range 3 {
		wg.Add(1)
		go func() { // HTTP heartbeats
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				user, room := fmt.Sprintf("h%d-%d-%d", round, w, i%40), fmt.Sprintf("room%d", i%7)
				sent := time.Now()
				resp, err := client.Post(p.base+"/v1/heartbeat", "application/json",
					strings.NewReader(fmt.Sprintf(`{"user":%q,"room":%q}`, user, room)))
				if err != nil {
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					record(ackRecord{user, room, sent, time.Now()})
				}
			}
		}()
		wg.Add(1)
		go func() { // UDP heartbeats with acks
			defer wg.Done()
			c, err := net.Dial("udp", p.udp)
			if err != nil {
				return
			}
			defer c.Close()
			buf := make([]byte, 1500)
			for i := 0; ctx.Err() == nil; i++ {
				user, room := fmt.Sprintf("u%d-%d-%d", round, w, i%40), fmt.Sprintf("room%d", i%5)
				req, _ := wire.AppendRequest(nil, uint32(i), true, []wire.Item{{Op: wire.OpHeartbeat, User: []byte(user), Room: []byte(room)}})
				sent := time.Now()
				c.Write(req)
				c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				n, err := c.Read(buf)
				if err != nil {
					continue
				}
				var r wire.Reply
				if r.Decode(buf[:n]) == nil && r.Seq == uint32(i) && r.Statuses()[0] == wire.StatusOK {
					record(ackRecord{user, room, sent, time.Now()})
				}
			}
		}()
	}
	wg.Wait()
	return acks
}

// verify checks every expectation against a running node and returns the
// violations.
func verify(t *testing.T, p *proc, exp map[string]*expectation, seenLag time.Duration) []string {
	t.Helper()
	var bad []string
	for user, e := range exp {
		var us struct {
			Online   bool
			Rooms    []string
			LastSeen *time.Time `json:"last_seen"`
		}
		getJSON(t, p.base+"/v1/users/"+url.PathEscape(user), &us)
		have := map[string]bool{}
		for _, r := range us.Rooms {
			have[r] = true
		}
		for r := range e.rooms {
			if !us.Online || !have[r] {
				bad = append(bad, fmt.Sprintf("%s lost room %s (online=%v rooms=%v)", user, r, us.Online, us.Rooms))
			}
		}
		if us.LastSeen == nil || us.LastSeen.Before(e.lastSeen.Truncate(time.Millisecond).Add(-seenLag)) {
			bad = append(bad, fmt.Sprintf("%s last_seen %v older than acknowledged %v", user, us.LastSeen, e.lastSeen))
		}
	}
	return bad
}

// TestCrashRecovery drives the real binary with HTTP and UDP heartbeats,
// kills it with SIGKILL at random moments, restarts it, and checks that
// every session acknowledged more than one sync interval before the kill
// (with --fsync=always: every acknowledged one) is back with its room and a
// last_seen no older than acknowledged; with the default
// --wal-refresh-margin (5m of the 10m TTL here), no older than acknowledged
// minus TTL-margin (persist's TestRefreshMarginCrashPromise checks that
// bound on a virtual clock where it can bite).
func TestCrashRecovery(t *testing.T) {
	const syncInterval = 100 * time.Millisecond
	for _, mode := range []struct {
		name    string
		rounds  int
		window  time.Duration // acks younger than this at the kill may be lost
		seenLag time.Duration // how much older than acknowledged last_seen may be
		args    []string
	}{
		{"interval", 8, syncInterval, 0, []string{"--fsync", "interval", "--fsync-interval", syncInterval.String(), "--wal-refresh-margin", "10m"}},
		{"interval-margin", 4, syncInterval, 5*time.Minute + syncInterval, []string{"--fsync", "interval", "--fsync-interval", syncInterval.String()}},
		{"always", 6, 0, 0, []string{"--fsync", "always"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			dir := t.TempDir()
			args := append([]string{"--data-dir", dir, "--ttl", "10m", "--interval", "1m", "--log-level", "warn", "--source-rate", "0"}, mode.args...)
			exp := map[string]*expectation{}
			rng := rand.New(rand.NewPCG(uint64(len(mode.name)), 7))
			total := 0
			for round := 0; round < mode.rounds; round++ {
				p := startProc(t, args...)
				if bad := verify(t, p, exp, mode.seenLag); len(bad) > 0 {
					t.Fatalf("round %d: %d violations after restart, e.g. %s", round, len(bad), strings.Join(bad[:min(5, len(bad))], "; "))
				}
				ctx, cancel := context.WithCancel(context.Background())
				var acks []ackRecord
				done := make(chan struct{})
				go func() { acks = drive(ctx, p, round); close(done) }()
				time.Sleep(time.Duration(200+rng.IntN(600)) * time.Millisecond)
				killed := time.Now()
				p.cmd.Process.Signal(syscall.SIGKILL)
				<-p.done
				cancel()
				<-done
				for _, a := range acks {
					if !a.acked.Before(killed.Add(-mode.window)) {
						continue // inside the window the policy may lose
					}
					e := exp[a.user]
					if e == nil {
						e = &expectation{rooms: map[string]bool{}}
						exp[a.user] = e
					}
					e.rooms[a.room] = true
					if a.sent.After(e.lastSeen) {
						e.lastSeen = a.sent
					}
					total++
				}
			}
			p := startProc(t, args...)
			if bad := verify(t, p, exp, mode.seenLag); len(bad) > 0 {
				t.Fatalf("final: %d violations, e.g. %s", len(bad), strings.Join(bad[:min(5, len(bad))], "; "))
			}
			if !strings.Contains(p.errb.String(), "did not shut down cleanly") {
				t.Errorf("the unclean shutdown was not logged:\n%s", p.errb.String())
			}
			if total < 100 || len(exp) < 50 {
				t.Fatalf("too little load to mean anything: %d acks, %d users", total, len(exp))
			}
			// The checker is not vacuous: a node without the log fails it.
			p.stop(syscall.SIGTERM)
			empty := startProc(t, append(args, "--data-dir", t.TempDir())...)
			if bad := verify(t, empty, exp, mode.seenLag); len(bad) < len(exp) {
				t.Fatalf("a node with an empty log passed %d of %d checks", len(exp)-len(bad), len(exp))
			}
			t.Logf("%s: %d rounds, %d acknowledged heartbeats checked, %d users, zero violations", mode.name, mode.rounds, total, len(exp))
		})
	}
}

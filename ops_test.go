package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server/token"
)

// TestSystemdNotify runs the binary with a fake NOTIFY_SOCKET: READY=1
// arrives only once the log is replayed (the node is ready then, with the
// sessions of the previous run back) and STOPPING=1 at shutdown.
func TestSystemdNotify(t *testing.T) {
	dir := t.TempDir()
	p := startProc(t, "--data-dir", dir)
	for i := range 20 {
		resp, err := http.Post(p.base+"/v1/heartbeat", "application/json", strings.NewReader(fmt.Sprintf(`{"user":"n%d"}`, i)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	p.stop(syscall.SIGTERM)

	sockPath := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	p2 := startProcEnv(t, []string{"NOTIFY_SOCKET=" + sockPath, "WATCHDOG_USEC=400000"}, "--data-dir", dir)
	want := func(state string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case m := <-msgs:
				if strings.Contains(m, state) {
					return
				}
			case <-deadline:
				t.Fatalf("no %s on the notify socket", state)
			}
		}
	}
	want("READY=1")
	var st struct{ Sessions int }
	getJSON(t, p2.base+"/v1/stats", &st)
	if st.Sessions != 20 {
		t.Fatalf("READY=1 sent with %d sessions replayed, want 20", st.Sessions)
	}
	want("WATCHDOG=1")
	if code := p2.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d", code)
	}
	want("STOPPING=1")
}

// TestSIGHUPReload rotates the token key and a limit through the config
// file and SIGHUP: the change takes effect and no session is dropped.
func TestSIGHUPReload(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	conf := filepath.Join(dir, "presenced.conf")
	os.WriteFile(keys, []byte("old 0123456789abcdef0123456789abcdef-old-key\n"), 0o600)
	os.WriteFile(conf, []byte("secret-file = "+keys+"\nheartbeat-min-gap = 0s\n"), 0o600)
	p := startProc(t, "--config", conf, "--data-dir", "", "--log-level", "info")
	oldKR, _ := token.LoadKeyring(keys)
	post := func(user, tok string) int {
		resp, err := http.Post(p.base+"/v1/heartbeat", "application/json", strings.NewReader(fmt.Sprintf(`{"user":%q,"token":%q}`, user, tok)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for i := range 10 {
		tok, _ := oldKR.Mint("", fmt.Sprintf("u%d", i), "", false, time.Now().Add(time.Hour))
		if code := post(fmt.Sprintf("u%d", i), tok); code != 200 {
			t.Fatalf("before reload: %d", code)
		}
	}
	oldTok, _ := oldKR.Mint("", "u0", "", false, time.Now().Add(time.Hour))
	os.WriteFile(keys, []byte("new fedcba9876543210fedcba9876543210-new-key\n"), 0o600)
	os.WriteFile(conf, []byte("secret-file = "+keys+"\nheartbeat-min-gap = 5s\n"), 0o600)
	p.cmd.Process.Signal(syscall.SIGHUP)
	testkit.EventuallyErr(t, 10*time.Second, "the reload logged", func() error {
		if log := p.errb.String(); !strings.Contains(log, "heartbeat-min-gap: 0s -> 5s") {
			return fmt.Errorf("log so far:\n%s", log)
		}
		return nil
	})
	if !strings.Contains(p.errb.String(), "token keys: [old] -> [new]") {
		t.Fatalf("key change not logged:\n%s", p.errb.String())
	}
	if code := post("u0", oldTok); code != 401 {
		t.Fatalf("rotated-out key after SIGHUP: %d, want 401", code)
	}
	newKR, _ := token.LoadKeyring(keys)
	newTok, _ := newKR.Mint("", "u1", "", false, time.Now().Add(time.Hour))
	if code := post("u1", newTok); code != 429 {
		// u1 heartbeated less than the new 5 s gap ago: the limit is live
		t.Fatalf("new key within the new min gap: %d, want 429", code)
	}
	newTok2, _ := newKR.Mint("", "fresh", "", false, time.Now().Add(time.Hour))
	if code := post("fresh", newTok2); code != 200 {
		t.Fatalf("new key after SIGHUP: %d", code)
	}
	var st struct{ Sessions int }
	getJSON(t, p.base+"/v1/stats", &st)
	if st.Sessions != 11 {
		t.Fatalf("%d sessions after reload, want 11 (none dropped)", st.Sessions)
	}
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// TestSIGTERMUnderLoad: /readyz turns 503 while heartbeats are still
// taken (the drain delay), then intake stops, the process exits 0, and
// after a restart every live session is back.
func TestSIGTERMUnderLoad(t *testing.T) {
	dir := t.TempDir()
	args := []string{"--data-dir", dir, "--drain-delay", "800ms", "--source-rate", "0", "--heartbeat-min-gap", "0s"}
	p := startProc(t, args...)
	var (
		mu       sync.Mutex
		accepted = map[string]bool{}
		stop     atomic.Bool
		wg       sync.WaitGroup
		// okAfterUnready counts heartbeats answered 200 after /readyz said 503.
		okAfterUnready atomic.Int64
		unready        atomic.Bool
	)
	client := &http.Client{Timeout: 2 * time.Second}
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				user := fmt.Sprintf("w%d-%d", w, i%200)
				resp, err := client.Post(p.base+"/v1/heartbeat", "application/json", strings.NewReader(fmt.Sprintf(`{"user":%q,"room":"r"}`, user)))
				if err != nil {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					mu.Lock()
					accepted[user] = true
					mu.Unlock()
					if unready.Load() {
						okAfterUnready.Add(1)
					}
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	p.cmd.Process.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(5 * time.Second)
	for !unready.Load() && time.Now().Before(deadline) {
		resp, err := client.Get(p.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 503 {
				unready.Store(true)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	stop.Store(true)
	wg.Wait()
	if !unready.Load() {
		t.Fatal("/readyz never answered 503 before the process stopped")
	}
	if okAfterUnready.Load() == 0 {
		t.Fatal("no heartbeat was taken after /readyz failed: intake stopped before readiness")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, p.errb.String())
	}
	p2 := startProc(t, args...)
	var st struct{ Sessions int }
	getJSON(t, p2.base+"/v1/stats", &st)
	if st.Sessions != len(accepted) {
		t.Fatalf("%d sessions after restart, %d were accepted", st.Sessions, len(accepted))
	}
	p2.stop(syscall.SIGTERM)
}

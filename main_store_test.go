package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/presenced/presenced/internal/persisttest"
)

// flushStore flushes the memtable of the stopped node's store in dir to an
// sstable, so there is a table to damage. The merger only needs the name
// persist registered (no merge operands are combined here).
func flushStore(t *testing.T, dir string) {
	t.Helper()
	db, err := pebble.Open(dir, &pebble.Options{Merger: &pebble.Merger{Name: "presenced.lastseen.max.v1", Merge: pebble.DefaultMerger.Merge}})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// runBin runs the binary to completion (bounded) and returns its exit
// status, stdout and stderr.
func runBin(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%v did not exit within 30s:\n%s", args, errb.String())
	}
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String()
}

// Flipped bytes in an sstable: the node exits 1 naming the file (not a
// panic with status 2), repair moves the store aside, and the next start
// serves the sessions that could be read.
func TestCorruptSSTableExitOneAndRepair(t *testing.T) {
	const n = 3000
	dir := filepath.Join(t.TempDir(), "data")
	p := startProc(t, "--data-dir", dir)
	for b := range n / 1000 {
		var body strings.Builder
		body.WriteString(`{"heartbeats":[`)
		for i := range 1000 {
			if i > 0 {
				body.WriteByte(',')
			}
			fmt.Fprintf(&body, `{"user":"user%05d","room":"lobby"}`, b*1000+i)
		}
		body.WriteString(`]}`)
		resp, err := http.Post(p.base+"/v1/heartbeats", "application/json", strings.NewReader(body.String()))
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("heartbeats: %v %v", err, resp)
		}
		resp.Body.Close()
	}
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit status %d after SIGTERM:\n%s", code, p.errb.String())
	}
	flushStore(t, dir)
	sst := persisttest.FlipSSTable(t, dir)

	code, _, stderr := runBin(t, "serve", "--data-dir", dir, "--http-addr", "127.0.0.1:0", "--udp-addr", "")
	if code != 1 || !strings.Contains(stderr, sst) || !strings.Contains(stderr, "presenced repair") {
		t.Fatalf("start on a damaged sstable: exit %d (want 1), stderr does not name %s and the repair command:\n%s",
			code, sst, stderr)
	}

	code, stdout, stderr := runBin(t, "repair", "--data-dir", dir)
	if code != 0 || !strings.Contains(stdout, "damaged file: ") {
		t.Fatalf("repair: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	t.Logf("repair said:\n%s", stdout)
	moved, _ := filepath.Glob(dir + ".damaged-*")
	if len(moved) != 1 {
		t.Fatalf("damaged store not kept aside: %v", moved)
	}

	p2 := startProc(t, "--data-dir", dir)
	var st struct{ Sessions, Rooms int }
	getJSON(t, p2.base+"/v1/stats", &st)
	if st.Sessions < n/2 || st.Sessions >= n || st.Rooms != 1 {
		t.Fatalf("after repair: %+v, want most (not all) of %d sessions in 1 room", st, n)
	}
	if code := p2.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit status %d after SIGTERM:\n%s", code, p2.errb.String())
	}
}

// mountTmpfs mounts a tmpfs of size bytes (root only) and unmounts it when
// the test ends.
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("cannot mount a tmpfs (the full-disk test needs root, as .ci/test.sh runs): %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("cannot unmount %s: %v %s", dir, err, out)
		}
	})
	return dir
}

// A real full disk (8 MiB tmpfs): reads and metrics keep answering while the
// log cannot write, /readyz names the state, SIGTERM is honoured within
// --shutdown-timeout, a restart on the still-full disk exits 1 with the
// reason within --store-open-timeout, and once space is freed the node
// starts with the sessions acknowledged before the disk filled.
func TestFullDiskRealTmpfs(t *testing.T) {
	mnt := mountTmpfs(t, 8<<20)
	dir := filepath.Join(mnt, "data")
	args := []string{"--data-dir", dir, "--shutdown-timeout", "5s", "--store-open-timeout", "3s", "--source-rate", "0"}
	p := startProc(t, args...)
	post := func(path, body string) (int, error) {
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Post(p.base+path, "application/json", strings.NewReader(body))
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	get := func(path string) (int, string, error) {
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get(p.base + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	// Sessions acknowledged and durable before the disk fills.
	if code, err := post("/v1/heartbeat", `{"user":"early","room":"r"}`); err != nil || code != 200 {
		t.Fatalf("heartbeat: %v %d", err, code)
	}
	if code, err := post("/v1/leave", `{"user":"gone","room":""}`); err != nil || code != 200 {
		t.Fatalf("leave: %v %d", err, code)
	}
	// Leave about 1 MiB, then fill it with sessions until the log fails.
	filler := filepath.Join(mnt, "filler")
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filler, make([]byte, int64(st.Bavail)*st.Bsize-1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	failing := false
	for b := 0; b < 400 && !failing; b++ {
		var body strings.Builder
		body.WriteString(`{"heartbeats":[`)
		for i := range 1000 {
			if i > 0 {
				body.WriteByte(',')
			}
			fmt.Fprintf(&body, `{"user":"filler-user-with-a-long-name-%07d","room":"room-%d"}`, b*1000+i, i%50)
		}
		body.WriteString(`]}`)
		if _, err := post("/v1/heartbeats", body.String()); err != nil {
			t.Fatalf("heartbeats while filling the disk: %v", err)
		}
		code, _, err := get("/readyz")
		if err != nil {
			t.Fatalf("/readyz while filling the disk: %v", err)
		}
		failing = code == 503
	}
	if !failing {
		t.Fatal("the log never failed on a full disk; the test proves nothing")
	}
	// Everything a reader or a scraper asks answers while the log fails.
	for range 5 {
		if code, body, err := get("/readyz"); err != nil || code != 503 || !strings.Contains(body, "write-ahead log") {
			t.Fatalf("/readyz on a full disk: %v %d %s", err, code, body)
		}
		if code, body, err := get("/metrics"); err != nil || code != 200 || !strings.Contains(body, `presenced_wal_state{state="ok"} 0`) {
			t.Fatalf("/metrics on a full disk: %v %d", err, code)
		}
		if code, _, err := get("/v1/users/gone"); err != nil || code != 200 {
			t.Fatalf("GET /v1/users/<offline> on a full disk: %v %d", err, code)
		}
		if code, err := post("/v1/status", `{"users":["gone","early"]}`); err != nil || code != 200 {
			t.Fatalf("POST /v1/status on a full disk: %v %d", err, code)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t0 := time.Now()
	code := p.stop(syscall.SIGTERM)
	if took := time.Since(t0); took > 5*time.Second+3*time.Second {
		t.Errorf("SIGTERM on a full disk took %v with --shutdown-timeout 5s", took)
	}
	t.Logf("exit %d after SIGTERM on a full disk; %d log lines, %d bytes in all", code, strings.Count(p.errb.String(), "\n"), len(p.errb.String()))

	t0 = time.Now()
	code, _, stderr := runBin(t, append([]string{"serve", "--http-addr", "127.0.0.1:0", "--udp-addr", ""}, args...)...)
	if code != 1 || !strings.Contains(stderr, "no space left on device") {
		t.Fatalf("restart on the full disk: exit %d after %v, want 1 naming the full disk:\n%s", code, time.Since(t0), stderr)
	}
	t.Logf("restart on the full disk: exit 1 after %v: %s", time.Since(t0), stderr[strings.LastIndex(strings.TrimSpace(stderr), "\n")+1:])

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	p2 := startProc(t, args...)
	var u struct{ Online bool }
	getJSON(t, p2.base+"/v1/users/early", &u)
	if !u.Online {
		t.Error("a session acknowledged before the disk filled is gone")
	}
	if code := p2.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d after SIGTERM with space freed:\n%s", code, p2.errb.String())
	}
}

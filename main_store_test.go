package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
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
	ssts, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	if len(ssts) != 1 {
		t.Fatalf("want one sstable, have %v", ssts)
	}
	b, err := os.ReadFile(ssts[0])
	if err != nil {
		t.Fatal(err)
	}
	for i := range 16 {
		b[len(b)/3+i] ^= 0xff
	}
	if err := os.WriteFile(ssts[0], b, 0o644); err != nil {
		t.Fatal(err)
	}

	code, _, stderr := runBin(t, "serve", "--data-dir", dir, "--http-addr", "127.0.0.1:0", "--udp-addr", "")
	if code != 1 || !strings.Contains(stderr, filepath.Base(ssts[0])) || !strings.Contains(stderr, "presenced repair") {
		t.Fatalf("start on a damaged sstable: exit %d (want 1), stderr does not name %s and the repair command:\n%s",
			code, filepath.Base(ssts[0]), stderr)
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

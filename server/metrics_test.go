package server

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/presenced/presenced/server/internal/redistest"
)

// familyLines renders a scrape as one line per metric family: name, type,
// label names and the label values seen (sorted), without the values of
// labels that differ per run (master: a Redis address; version: Go's).
func familyLines(t *testing.T, r io.Reader) map[string]string {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		t.Fatalf("cannot parse /metrics: %v", err)
	}
	out := map[string]string{}
	for name, f := range fams {
		names, values := map[string]bool{}, map[string]bool{}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				names[l.GetName()] = true
				if l.GetName() != "master" && l.GetName() != "version" {
					values[l.GetName()+"="+l.GetValue()] = true
				}
			}
		}
		keys := func(m map[string]bool) string {
			s := make([]string, 0, len(m))
			for k := range m {
				s = append(s, k)
			}
			sort.Strings(s)
			return "[" + strings.Join(s, ",") + "]"
		}
		out[name] = name + " " + strings.ToLower(dto.MetricType_name[int32(f.GetType())]) + " " + keys(names) + " " + keys(values)
	}
	return out
}

// Every metric family a node exported before client_golang served them
// (testdata/metrics-families.txt, from the hand-written writer, with Redis
// and a webhook configured) keeps its name, type, labels and label values;
// the Go and process collectors add theirs.
func TestMetricsFamiliesKept(t *testing.T) {
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	t.Cleanup(hook.Close)
	r := redistest.Start(t)
	cfg := DefaultConfig()
	cfg.HTTPAddr, cfg.UDPAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.UDPLoops = 1
	cfg.Redis = r.Addr()
	cfg.Webhook.URL = hook.URL
	s, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	resp, err := http.Get("http://" + s.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q, want the text format", ct)
	}
	got := familyLines(t, resp.Body)

	f, err := os.Open("testdata/metrics-families.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	n := 0
	for sc.Scan() {
		want := sc.Text()
		if want == "" || strings.HasPrefix(want, "#") {
			continue
		}
		n++
		name, _, _ := strings.Cut(want, " ")
		if name == "presenced_redis_master_errors_total" && got[name] == "" {
			continue // a series per Redis address that failed: none yet (cluster_test checks one)
		}
		if got[name] != want {
			t.Errorf("family %s:\n got %s\nwant %s", name, got[name], want)
		}
	}
	if n < 60 {
		t.Fatalf("only %d families in testdata/metrics-families.txt", n)
	}
	// The collectors' families, beside ours.
	for _, name := range []string{"go_threads", "go_gc_duration_seconds", "go_memstats_heap_objects", "process_resident_memory_bytes", "process_open_fds"} {
		if got[name] == "" {
			t.Errorf("no %s (Go or process collector)", name)
		}
	}
	if len(got) <= n {
		t.Errorf("%d families, want more than the %d kept", len(got), n)
	}
}

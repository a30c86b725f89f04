package loadtest

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// A step against presenced reports the kernel drops the server itself
// counted (presenced_udp_kernel_drops_total, over the step) and whether it
// ended the step shedding, in the JSON figures and the text report.
func TestStepReportsServerKernelDropsAndShedding(t *testing.T) {
	var scrapes atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if scrapes.Add(1) == 1 {
			w.Write([]byte("presenced_udp_datagrams_total 100\npresenced_udp_kernel_drops_total 40\npresenced_overload_shedding 0\n"))
			return
		}
		w.Write([]byte("presenced_udp_datagrams_total 1100\npresenced_udp_kernel_drops_total 540\npresenced_overload_shedding 1\n"))
	}))
	defer srv.Close()
	s := newServerProbe(srv.URL, 0, 0).end(1, 0)
	if s.Error != "" || s.ReportedKernelDrops != 500 || !s.Shedding || s.DatagramsPerS != 1000 {
		t.Fatalf("server side %+v, want 500 reported kernel drops, shedding, 1000 datagrams/s", s)
	}
	var b bytes.Buffer
	writeServerText(&b, s)
	if !strings.Contains(b.String(), "reported by the server 500") || !strings.Contains(b.String(), "shedding") {
		t.Fatalf("report %q lacks the server's kernel drops or its shedding", b.String())
	}
	// A target without the metric (an older presenced, a do-nothing
	// target) reports -1 and the text says nothing of it.
	scrapes.Store(0)
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("presenced_udp_datagrams_total 100\n"))
	}))
	defer plain.Close()
	s = newServerProbe(plain.URL, 0, 0).end(1, 0)
	b.Reset()
	writeServerText(&b, s)
	if s.ReportedKernelDrops != -1 || strings.Contains(b.String(), "reported by the server") {
		t.Fatalf("without the metric: %d, %q", s.ReportedKernelDrops, b.String())
	}
}

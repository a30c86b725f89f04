package webhook_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/presenced/presenced/server/internal/webhook"
)

// A receiver verifies each batch before it trusts it, and de-duplicates
// events by id (delivery is at least once).
func ExampleVerify() {
	secret := []byte("the first key's secret, 32 bytes or more")
	receiver := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		err := webhook.Verify(secret, r.Header.Get("X-Presenced-Signature"), body, time.Now().Unix(), 300)
		if err != nil {
			http.Error(w, "bad signature", http.StatusUnauthorized) // a 4xx: dead-lettered, not retried
			return
		}
		fmt.Println("verified", string(body))
		w.WriteHeader(http.StatusNoContent)
	})

	// What presenced sends:
	body := []byte(`{"events":[{"id":"1-1","type":"join","user":"u","room":"r","at":"2026-01-01T00:00:00.000Z","state":null}]}`)
	req := httptest.NewRequest("POST", "/hook", strings.NewReader(string(body)))
	req.Header.Set("X-Presenced-Signature", webhook.Sign(secret, time.Now().Unix(), body))
	rec := httptest.NewRecorder()
	receiver.ServeHTTP(rec, req)
	fmt.Println(rec.Code)
	// Output:
	// verified {"events":[{"id":"1-1","type":"join","user":"u","room":"r","at":"2026-01-01T00:00:00.000Z","state":null}]}
	// 204
}

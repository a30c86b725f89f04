package client

import (
	"bufio"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// FuzzReadEvent feeds arbitrary bytes to the event-stream parser: it must
// not panic, must return only events whose data is a JSON object, and must
// end with an error at the end of the input.
func FuzzReadEvent(f *testing.F) {
	for _, seed := range []string{
		"id: 1\nevent: join\ndata: {\"user\":\"a\",\"room\":\"r\",\"at\":\"2026-11-28T04:31:00.120Z\",\"reason\":null}\n\n",
		"event: leave\r\ndata: {\"user\":\"a\",\r\ndata: \"reason\":\"timeout\"}\r\n\r\n",
		": comment\n\nretry: 100\nid\ndata:{\"id\":\"7\",\"type\":\"reset\",\"reason\":\"history_lost\"}\n\n",
		"id: 5\nevent: join\ndata: {",
		"data: not json\n\ndata: {\"state\":{\"k\":[1,2]}}\n\n",
		"id: a\x00b\ndata: {}\n\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s := &Subscription{cfg: SubscriberConfig{IdleTimeout: time.Hour}}
		s.ctx, s.cancel = context.WithCancel(context.Background())
		defer s.cancel()
		s.rd = bufio.NewReader(strings.NewReader(in))
		s.idle = time.AfterFunc(time.Hour, func() {})
		defer s.idle.Stop()
		for range len(in) + 1 {
			ev, err := s.readEvent()
			if err != nil {
				return
			}
			var m map[string]json.RawMessage
			if json.Unmarshal(ev.Data, &m) != nil || ev.Type == "" {
				t.Fatalf("event %+v: data is not a JSON object or type is empty", ev)
			}
			if strings.ContainsRune(ev.ID, 0) || strings.ContainsRune(s.LastEventID(), 0) {
				t.Fatalf("id with NUL: %q", ev.ID)
			}
		}
		t.Fatalf("more events than input bytes")
	})
}

package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// checkOnline asks presenced (POST /v1/status on --http-addr, at most
// statusChunk users a request, with --api-token as a bearer token) which
// of the simulated users the run reached are online. A user the answer
// leaves out counts as offline. sent is the most heartbeats one step sent:
// job k goes to user pop.user(k), so a run that sent fewer jobs than there
// are users (shorter than --interval) never reached the others, and they
// are counted as NotReached, not as offline.
func checkOnline(ctx context.Context, cfg *Config, pop *population, sent int64) *OnlineCheck {
	start := time.Now()
	reached := pop.n
	if sent < int64(pop.n) {
		reached = int(max(sent, 0))
	}
	users := make([]string, reached)
	for k := range users {
		users[k] = pop.users[pop.user(int64(k))]
	}
	c := &OnlineCheck{Users: reached, NotReached: pop.n - reached}
	client := &http.Client{Timeout: 10 * time.Second}
	url := "http://" + cfg.HTTPAddr + "/v1/status"
	online := make(map[string]bool, statusChunk)
	for lo := 0; lo < reached; lo += statusChunk {
		hi := min(lo+statusChunk, reached)
		body, err := json.Marshal(struct {
			Users []string `json:"users"`
		}{users[lo:hi]})
		if err != nil {
			c.Error = err.Error()
			return c
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			c.Error = err.Error()
			return c
		}
		req.Header.Set("Content-Type", "application/json")
		if cfg.APIToken != "" {
			req.Header.Set("Authorization", "Bearer "+cfg.APIToken)
		}
		c.Requests++
		resp, err := client.Do(req)
		if err != nil {
			c.Error = fmt.Sprintf("POST %s: %v", url, err)
			return c
		}
		data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		resp.Body.Close()
		if err != nil {
			c.Error = fmt.Sprintf("POST %s: %v", url, err)
			return c
		}
		if resp.StatusCode != http.StatusOK {
			c.Error = fmt.Sprintf("POST %s: %s: %.200s", url, resp.Status, bytes.TrimSpace(data))
			return c
		}
		var ans struct {
			Users []struct {
				User   string `json:"user"`
				Online bool   `json:"online"`
			} `json:"users"`
		}
		if err := json.Unmarshal(data, &ans); err != nil {
			c.Error = fmt.Sprintf("POST %s: cannot decode the answer: %v", url, err)
			return c
		}
		clear(online)
		for _, u := range ans.Users {
			online[u.User] = online[u.User] || u.Online
		}
		for _, u := range users[lo:hi] {
			if online[u] {
				c.Online++
			}
		}
	}
	c.Offline = c.Users - c.Online
	c.TookS = time.Since(start).Seconds()
	return c
}

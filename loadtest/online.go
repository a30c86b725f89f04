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
// of the simulated users are online. A user the answer leaves out counts
// as offline.
func checkOnline(ctx context.Context, cfg *Config, pop *population) *OnlineCheck {
	start := time.Now()
	c := &OnlineCheck{Users: pop.n}
	client := &http.Client{Timeout: 10 * time.Second}
	url := "http://" + cfg.HTTPAddr + "/v1/status"
	online := make(map[string]bool, statusChunk)
	for lo := 0; lo < pop.n; lo += statusChunk {
		hi := min(lo+statusChunk, pop.n)
		body, err := json.Marshal(struct {
			Users []string `json:"users"`
		}{pop.users[lo:hi]})
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
		for _, u := range pop.users[lo:hi] {
			if online[u] {
				c.Online++
			}
		}
	}
	c.Offline = c.Users - c.Online
	c.TookS = time.Since(start).Seconds()
	return c
}

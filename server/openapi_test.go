package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/presenced/presenced/internal/servertest"
	"github.com/presenced/presenced/server"
	"github.com/presenced/presenced/server/openapi"
)

func init() {
	// The non-JSON answers are read as text: kin-openapi then checks their
	// status and content type against the document.
	for _, ct := range []string{"text/html", "text/javascript", "text/event-stream"} {
		openapi3filter.RegisterBodyDecoder(ct, openapi3filter.PlainBodyDecoder)
	}
}

// apiChecker validates a real server's answers against the OpenAPI
// document it serves.
type apiChecker struct {
	t      *testing.T
	base   string
	router routers.Router
	seen   map[string]bool // "METHOD /path/template" answered and valid
}

func newAPIChecker(t *testing.T, base string) *apiChecker {
	t.Helper()
	resp, err := http.Get(base + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	served, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(served, openapi.JSON) {
		t.Fatalf("GET /openapi.json: %d, %d bytes, want the embedded document", resp.StatusCode, len(served))
	}
	doc, err := openapi3.NewLoader().LoadFromData(served)
	if err != nil {
		t.Fatalf("cannot load the OpenAPI document: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("the OpenAPI document is not valid: %v", err)
	}
	if !doc.IsOpenAPI31OrLater() {
		t.Fatalf("openapi %q, want 3.1", doc.OpenAPI)
	}
	doc.Servers = openapi3.Servers{{URL: base}}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &apiChecker{t: t, base: base, router: router, seen: map[string]bool{}}
}

// do sends a request and validates the answer (status, content type,
// body) against the document; an undocumented route or status fails.
func (c *apiChecker) do(req *http.Request) (int, []byte) {
	c.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	var body []byte
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		// A stream does not end: its first line (a comment) stands for it.
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		body = []byte(line)
	} else {
		body, _ = io.ReadAll(resp.Body)
	}
	c.validate(req, resp.StatusCode, resp.Header, body)
	return resp.StatusCode, body
}

func (c *apiChecker) validate(req *http.Request, status int, h http.Header, body []byte) {
	c.t.Helper()
	route, params, err := c.router.FindRoute(req)
	if err != nil {
		c.t.Fatalf("%s %s is not in the document: %v", req.Method, req.URL.Path, err)
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 status,
		Header:                 h,
		Body:                   io.NopCloser(bytes.NewReader(body)),
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		c.t.Errorf("%s %s -> %d %s\ndoes not match the document: %v", req.Method, req.URL, status, body, err)
		return
	}
	c.seen[req.Method+" "+route.Path] = true
}

func (c *apiChecker) call(method, path, body string, hdr ...string) (int, []byte) {
	c.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.base+path, r)
	if err != nil {
		c.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return c.do(req)
}

// TestOpenAPIDocumentMatchesServer: GET /openapi.json serves a valid
// OpenAPI 3.1 document, every route it documents answers the real server's
// requests (good and bad ones) as documented, and no route the document
// names goes uncalled.
func TestOpenAPIDocumentMatchesServer(t *testing.T) {
	n := startNode(t, func(c *server.Config) { c.MaxBatch = 3; c.MaxStatusUsers = 2; c.LeaveDelay = 0 })
	c := newAPIChecker(t, n.Base)
	want := func(code int, got int, body []byte, what string) {
		t.Helper()
		if got != code {
			t.Errorf("%s: %d %s, want %d", what, got, body, code)
		}
	}
	code, body := c.call("POST", "/v1/heartbeat", `{"user":"alice","room":"lobby","state":{"status":"away"}}`)
	want(200, code, body, "heartbeat")
	code, body = c.call("POST", "/v1/heartbeat", `{"user":"","room":"lobby"}`)
	want(400, code, body, "heartbeat without user")
	code, body = c.call("GET", "/v1/heartbeat?user=bob&room=lobby", "")
	want(200, code, body, "GET heartbeat")
	code, body = c.call("GET", "/v1/heartbeat?room=lobby", "")
	want(400, code, body, "GET heartbeat without user")
	code, body = c.call("POST", "/v1/heartbeats", `{"heartbeats":[{"user":"carol","room":"lobby"},{"user":""}]}`)
	want(200, code, body, "batch")
	code, body = c.call("POST", "/v1/heartbeats", `{"heartbeats":[{"user":"a"},{"user":"b"},{"user":"c"},{"user":"d"}]}`)
	want(413, code, body, "batch over max-batch")
	code, body = c.call("POST", "/v1/heartbeats", `{"nope":1}`)
	want(400, code, body, "batch without heartbeats")
	code, body = c.call("GET", "/v1/users/alice", "")
	want(200, code, body, "user")
	code, body = c.call("GET", "/v1/users/nobody", "")
	want(200, code, body, "unknown user")
	code, body = c.call("POST", "/v1/status", `{"users":["alice","bob"]}`)
	want(200, code, body, "status")
	code, body = c.call("POST", "/v1/status", `{"users":["a","b","c"]}`)
	want(413, code, body, "status over max-status-users")
	code, body = c.call("POST", "/v1/status", `{"users":"alice"}`)
	want(400, code, body, "status with a string")
	code, body = c.call("GET", "/v1/rooms/lobby", "")
	want(200, code, body, "room")
	code, body = c.call("GET", "/v1/rooms/lobby/members?limit=2", "")
	want(200, code, body, "members")
	code, body = c.call("GET", "/v1/rooms/lobby/members?cursor=zzz", "")
	want(400, code, body, "members with a bad cursor")
	code, body = c.call("GET", "/v1/rooms/lobby/members?limit=1001", "")
	want(400, code, body, "members over the limit")
	code, body = c.call("GET", "/v1/rooms?top=5", "")
	want(200, code, body, "top rooms")
	code, body = c.call("GET", "/v1/rooms?top=0", "")
	want(400, code, body, "top=0")
	code, body = c.call("GET", "/v1/stats", "")
	want(200, code, body, "stats")
	code, body = c.call("GET", "/v1/events?room=lobby", "")
	want(200, code, body, "events")
	code, body = c.call("GET", "/v1/events", "", "Last-Event-ID", "not-an-id")
	want(400, code, body, "events with a bad Last-Event-ID")
	code, body = c.call("POST", "/v1/leave", `{"user":"alice","room":"lobby"}`)
	want(200, code, body, "leave")
	code, body = c.call("POST", "/v1/leave", `{"room":"lobby"}`)
	want(400, code, body, "leave without user")
	// A method the document does not list for a path: 405 naming the right one.
	if resp, err := http.Get(n.Base + "/v1/leave"); err != nil || resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" {
		t.Errorf("GET /v1/leave: %v %v, want 405 with Allow: POST", resp, err)
	} else {
		resp.Body.Close()
	}
	for _, p := range []string{"/livez", "/readyz", "/metrics", "/openapi.json", "/ui", "/ui/presenced.js", "/ui/demo"} {
		code, body = c.call("GET", p, "")
		want(200, code, body, p)
	}

	// The WebSocket: an upgrade (101), then a heartbeat answered on it.
	ws, resp, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(n.Base, "http")+"/v1/ws", nil)
	if err != nil {
		t.Fatalf("websocket: %v", err)
	}
	req, _ := http.NewRequest("GET", n.Base+"/v1/ws", nil)
	c.validate(req, resp.StatusCode, resp.Header, nil)
	if err := ws.WriteJSON(map[string]any{"op": "heartbeat", "ref": "1", "user": "dave", "room": "lobby"}); err != nil {
		t.Fatal(err)
	}
	var ans map[string]any
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := ws.ReadJSON(&ans); err != nil || ans["ok"] != true || ans["interval_ms"] == nil {
		t.Fatalf("websocket heartbeat: %v %v", ans, err)
	}
	ws.Close()
	code, body = c.call("GET", "/v1/ws", "")
	want(400, code, body, "GET /v1/ws without an upgrade")

	// Every documented operation was called and validated.
	doc, _ := openapi3.NewLoader().LoadFromData(openapi.JSON)
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			if !c.seen[method+" "+path] {
				t.Errorf("%s %s is documented but no answer of it was validated", method, path)
			}
		}
	}
}

// TestOpenAPIConnectionsFieldsOptional: the Connections fields (conn in
// requests, connections in answers) validate when present and when absent.
func TestOpenAPIConnectionsFieldsOptional(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(openapi.JSON)
	if err != nil {
		t.Fatal(err)
	}
	check := func(schema, value string, ok bool) {
		t.Helper()
		var v any
		if err := json.Unmarshal([]byte(value), &v); err != nil {
			t.Fatal(err)
		}
		err := doc.Components.Schemas[schema].Value.VisitJSON(v, openapi3.EnableJSONSchema2020())
		if (err == nil) != ok {
			t.Errorf("%s %s: %v, want valid=%v", schema, value, err, ok)
		}
	}
	check("HeartbeatRequest", `{"user":"u","room":"r","conn":"tab-1"}`, true)
	check("HeartbeatRequest", `{"user":"u","room":"r"}`, true)
	check("HeartbeatRequest", `{"user":"u","conn":""}`, false)
	check("LeaveRequest", `{"user":"u","conn":"tab-1"}`, true)
	check("Member", `{"user":"u","last_seen":"2026-12-07T22:00:00.000Z","state":null,"connections":[{"conn":"a","state":null,"last_seen":"2026-12-07T22:00:00.000Z"}]}`, true)
	check("Member", `{"user":"u","last_seen":"2026-12-07T22:00:00.000Z","state":null}`, true)
	check("Session", `{"room":"r","state":{"s":1},"last_seen":"2026-12-07T22:00:00.000Z","connections":[{"conn":"a","state":null,"last_seen":"2026-12-07T22:00:00.000Z"}]}`, true)
	check("Stats", `{"online_users":1,"sessions":1,"rooms":1,"connections":2}`, true)
	check("Stats", `{"online_users":1,"sessions":1,"rooms":1}`, true)
	check("Stats", `{"online_users":1,"sessions":1}`, false)
}

// TestCORS: a browser on another origin gets Access-Control-Allow-Origin on
// the API, the event stream and the browser module, and its preflights are
// answered 204 with the methods and headers the API takes; with a list of
// origins, others get no header, a 403 preflight and no WebSocket.
func TestCORS(t *testing.T) {
	get := func(base, method, path, origin string, hdr ...string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, nil)
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
			io.Copy(io.Discard, resp.Body)
		}
		resp.Body.Close()
		return resp
	}
	open := startNode(t, nil)
	for _, p := range []string{"/v1/stats", "/v1/rooms/lobby/members", "/v1/heartbeat?user=u", "/v1/events", "/ui/presenced.js", "/openapi.json"} {
		if r := get(open.Base, "GET", p, "https://app.example.com"); r.Header.Get("Access-Control-Allow-Origin") != "*" {
			t.Errorf("GET %s from another origin: Access-Control-Allow-Origin %q, want *", p, r.Header.Get("Access-Control-Allow-Origin"))
		}
	}
	for _, p := range []string{"/v1/heartbeat", "/v1/leave", "/v1/status", "/v1/events"} {
		r := get(open.Base, "OPTIONS", p, "https://app.example.com", "Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "content-type, authorization")
		if r.StatusCode != 204 || r.Header.Get("Access-Control-Allow-Origin") != "*" ||
			!strings.Contains(r.Header.Get("Access-Control-Allow-Methods"), "POST") ||
			r.Header.Get("Access-Control-Allow-Headers") != "Authorization, Content-Type, Last-Event-ID" {
			t.Errorf("preflight %s: %d %v", p, r.StatusCode, r.Header)
		}
	}
	if before := open.Stats(); before.Sessions != 1 { // the GET heartbeat above
		t.Fatalf("sessions %d, want 1: a preflight must change nothing", before.Sessions)
	}

	const app = "https://app.example.com"
	listed := startNode(t, func(c *server.Config) { c.CORSOrigins = app + ", http://localhost:3000" })
	if r := get(listed.Base, "GET", "/v1/stats", app); r.Header.Get("Access-Control-Allow-Origin") != app || r.Header.Get("Vary") != "Origin" {
		t.Errorf("listed origin: %v", r.Header)
	}
	if r := get(listed.Base, "GET", "/v1/stats", "https://evil.example.com"); r.Header.Get("Access-Control-Allow-Origin") != "" || r.StatusCode != 200 {
		t.Errorf("other origin: %d %v, want 200 without Access-Control-Allow-Origin", r.StatusCode, r.Header)
	}
	if r := get(listed.Base, "OPTIONS", "/v1/heartbeat", "https://evil.example.com", "Access-Control-Request-Method", "POST"); r.StatusCode != 403 {
		t.Errorf("preflight from another origin: %d, want 403", r.StatusCode)
	}
	wsURL := "ws" + strings.TrimPrefix(listed.Base, "http") + "/v1/ws"
	dial := func(origin string) (int, error) {
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		ws, resp, err := websocket.DefaultDialer.Dial(wsURL, h)
		if ws != nil {
			ws.Close()
		}
		if resp == nil {
			return 0, err
		}
		return resp.StatusCode, err
	}
	u, _ := url.Parse(listed.Base)
	for origin, code := range map[string]int{app: 101, "": 101, "http://" + u.Host: 101, "https://evil.example.com": 403} {
		if got, err := dial(origin); got != code {
			t.Errorf("websocket from origin %q: %d (%v), want %d", origin, got, err, code)
		}
	}
	bad := servertest.Config()
	bad.CORSOrigins = "app.example.com"
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "--cors-origins") {
		t.Errorf("an origin without a scheme: %v, want an error naming --cors-origins", err)
	}
}

// TestREADMECurlExamples runs every curl command of README.md's "HTTP API"
// section against a real node (streams for a second) and fails on an
// error answer, so the examples stay true.
func TestREADMECurlExamples(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed (apt-get install curl; .ci/test.sh installs it)")
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	sec := string(readme)
	start := strings.Index(sec, "## HTTP API")
	if start < 0 {
		t.Fatal(`README.md has no "## HTTP API" section`)
	}
	sec = sec[start:]
	block := regexp.MustCompile("(?s)```sh\n(.*?)```").FindStringSubmatch(sec)
	if block == nil {
		t.Fatal("no sh block in README's HTTP API section")
	}
	n := startNode(t, func(c *server.Config) { c.LeaveDelay = 0 })
	ran := 0
	for line := range strings.Lines(block[1]) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "curl ") {
			continue
		}
		if i := strings.Index(line, " #"); i >= 0 {
			line = line[:i]
		}
		stream := strings.Contains(line, "-sN")
		args := "--fail-with-body --max-time 1"
		if !stream {
			args = "--fail-with-body --max-time 10"
		}
		cmd := exec.Command("sh", "-c", strings.Replace(line, "curl ", "curl "+args+" ", 1))
		cmd.Env = append(os.Environ(), "H="+n.Base)
		out, err := cmd.CombinedOutput()
		if stream {
			// curl ends a stream at --max-time (exit 28) after its first line.
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 28 || !strings.Contains(string(out), ": presenced event stream") {
				t.Errorf("%s: %v\n%s", line, err, out)
			}
		} else if err != nil {
			t.Errorf("%s: %v\n%s", line, err, out)
		}
		ran++
	}
	if ran < 15 {
		t.Fatalf("ran %d curl examples, README's HTTP API section has more", ran)
	}
}

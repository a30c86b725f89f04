package jsonbody

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParseHeartbeat(t *testing.T) {
	f := func(body, user, room, tok, fieldErr string, ok bool) {
		t.Helper()
		var p Parser
		var hb Heartbeat
		err := p.Heartbeat([]byte(body), &hb)
		if (err == nil) != ok {
			t.Fatalf("%s: err %v, want ok=%v", body, err, ok)
		}
		if !ok {
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("%s: err %v, want ErrSyntax", body, err)
			}
			return
		}
		if string(hb.User) != user || string(hb.Room) != room || string(hb.Token) != tok || hb.FieldErr != fieldErr {
			t.Fatalf("%s: got %q %q %q %q", body, hb.User, hb.Room, hb.Token, hb.FieldErr)
		}
	}
	f(`{"user":"a","room":"b","token":"c"}`, "a", "b", "c", "", true)
	f(` { "room" : "b" , "user" : "a" } `, "a", "b", "", "", true)
	f(`{"user":"a\"b\\c\/d\u00e9\ud83d\ude00"}`, "a\"b\\c/dé😀", "", "", "", true)
	f(`{"us\u0065r":"a"}`, "a", "", "", "", true)
	f(`{"user":"a","extra":{"x":[1,2.5e3,true,false,null,"s"]}}`, "a", "", "", "", true)
	f(`{"user":"a","room":null}`, "a", "", "", "", true)
	f(`{"user":1}`, "", "", "", "user must be a string", true)
	f(`{"user":"a","room":["r"],"token":{}}`, "a", "", "", "room must be a string", true)
	f(`{"user":"a","user":"b"}`, "b", "", "", "", true)
	f(`{"user":"a","state":[]}`, "a", "", "", "state must be a JSON object or null", true)
	f(`{}`, "", "", "", "", true)
	for _, bad := range []string{``, `{`, `{"user":"a"`, `{"user":"a",}`, `{"user":"a"}x`, `[]`, `{"user":"a` + "\x01" + `"}`, `{"user":"\x"}`, `{"user":"\u12"}`, `{"a":01}`, `{"a":-}`, `{"a":1.}`, `{"a":tru}`, `nul`,
		`{"user":"\ud800"}`, `{"user":"\ud800\u0041"}`, `{"user":"\ud800\u0042"}`, `{"user":"\udc00"}`, `{"user":"\ud800\ud800"}`,
		`{"user":"a","x":"\ud800x"}`, `{"user":"\ud83d\u12"}`, `{"\udc00":"a"}`, `{"state":{"s":"\ud800"}}`} {
		f(bad, "", "", "", "", false)
	}
}

func TestParseHeartbeatState(t *testing.T) {
	f := func(body, state string, has bool) {
		t.Helper()
		var p Parser
		var hb Heartbeat
		if err := p.Heartbeat([]byte(body), &hb); err != nil || hb.FieldErr != "" {
			t.Fatalf("%s: %v %q", body, err, hb.FieldErr)
		}
		if string(hb.State) != state || hb.HasState != has || (state == "" && hb.State != nil) {
			t.Fatalf("%s: state %q has %v, want %q %v", body, hb.State, hb.HasState, state, has)
		}
	}
	f(`{"user":"a"}`, "", false)
	f(`{"user":"a","state":null}`, "", true)
	// The raw bytes of the object, as in the body (escapes and spaces kept).
	f(`{"user":"a","state": {"s" : "\u00e9", "n":[1, 2]} }`, `{"s" : "\u00e9", "n":[1, 2]}`, true)
	f(`{"state":{"a":1},"state":null}`, "", true)
}

func TestMaxDepth(t *testing.T) {
	nest := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	var p Parser
	var hb Heartbeat
	// A value of MaxDepth+1 levels of arrays below the field: the innermost
	// (empty) one sits at depth MaxDepth.
	if err := p.Heartbeat([]byte(`{"x":`+nest(MaxDepth+1)+`}`), &hb); err != nil {
		t.Fatalf("depth %d: %v", MaxDepth+1, err)
	}
	if err := p.Heartbeat([]byte(`{"x":`+nest(MaxDepth+2)+`}`), &hb); !errors.Is(err, ErrSyntax) {
		t.Fatalf("depth %d: %v, want ErrSyntax", MaxDepth+2, err)
	}
	if err := p.Heartbeat([]byte(`{"state":{"a":`+nest(MaxDepth+1)+`}}`), &hb); !errors.Is(err, ErrTooDeep) || !errors.Is(err, ErrSyntax) {
		t.Fatalf("state nested too deep: %v, want ErrTooDeep (an ErrSyntax)", err)
	}
	if err := CheckDepth([]byte(`{"a":` + nest(MaxDepth) + `}`)); err != nil {
		t.Fatalf("CheckDepth at the limit: %v", err)
	}
	if err := CheckDepth([]byte(`{"a":` + nest(MaxDepth+1) + `}`)); !errors.Is(err, ErrTooDeep) {
		t.Fatalf("CheckDepth past the limit: %v, want ErrTooDeep", err)
	}
}

func TestParseBatch(t *testing.T) {
	var p Parser
	items, err := p.Batch([]byte(`{"x":1,"heartbeats":[{"user":"a"},{"user":"b","room":"r"}]}`), nil, 10)
	if err != nil || len(items) != 2 || string(items[1].Room) != "r" {
		t.Fatalf("%v %+v", err, items)
	}
	if _, err := p.Batch([]byte(`{"heartbeats":[{},{},{}]}`), nil, 2); !errors.Is(err, ErrTooMany) {
		t.Fatalf("over max: %v", err)
	}
	for _, body := range []string{`{"other":[]}`, `{}`, `{"heartbeats":null}`, `{"heartbeats":{}}`, `{"heartbeats":"x"}`} {
		if _, err := p.Batch([]byte(body), nil, 2); !errors.Is(err, ErrMissingHeartbeats) {
			t.Fatalf("%s: %v, want ErrMissingHeartbeats", body, err)
		}
	}
	for _, body := range []string{`{"heartbeats":1}`, `{"heartbeats":[1]}`, `{"heartbeats":[{}]`, `[]`, `{"heartbeats":[{"user":"\ud800"}]}`} {
		if _, err := p.Batch([]byte(body), nil, 2); !errors.Is(err, ErrSyntax) {
			t.Fatalf("%s: %v, want ErrSyntax", body, err)
		}
	}
	if items, err := p.Batch([]byte(`{"heartbeats":[]}`), nil, 2); err != nil || len(items) != 0 {
		t.Fatalf("empty: %v", err)
	}
	// Items are reused from the first element; the last "heartbeats" counts.
	items, err = p.Batch([]byte(`{"heartbeats":[{"user":"a"},{"user":1}],"heartbeats":[{"user":"c"}]}`), items, 2)
	if err != nil || len(items) != 1 || string(items[0].User) != "c" {
		t.Fatalf("repeated heartbeats: %v %+v", err, items)
	}
}

// TestParserReuseAllocs checks the promise of the package doc: ids decoded
// into the scratch buffer stay valid for the whole body, and a Parser
// reuses its scratch buffer across bodies.
func TestParserReuseAllocs(t *testing.T) {
	var p Parser
	var items []Heartbeat
	body := []byte(`{"heartbeats":[{"user":"\u00e9a","room":"r\/1"},{"user":"\u00e9b","room":"r\/2"}]}`)
	items, err := p.Batch(body, items, 10)
	if err != nil || string(items[0].User) != "éa" || string(items[0].Room) != "r/1" || string(items[1].User) != "éb" || string(items[1].Room) != "r/2" {
		t.Fatalf("%v %q %q %q %q", err, items[0].User, items[0].Room, items[1].User, items[1].Room)
	}
	var hb Heartbeat
	small := []byte(`{"user":"\u00e9"}`)
	if allocs := testing.AllocsPerRun(100, func() {
		if err := p.Heartbeat(small, &hb); err != nil {
			t.Fatal(err)
		}
		if items, err = p.Batch(body, items, 10); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Fatalf("reused Parser allocates %v times per body, want 0", allocs)
	}
}

// FuzzParseHeartbeat checks the hand-written body parser against
// encoding/json: whatever it accepts, encoding/json reads the same fields.
func FuzzParseHeartbeat(f *testing.F) {
	for _, s := range []string{
		`{"user":"alice","room":"lobby","token":"k1.1767225600.u.abc"}`,
		`{"user":"a\u00e9\"","room":""}`,
		`{"user":"a","extra":[1,{"b":null}],"room":"r"}`,
		`{"user":"a"`, `{"user":1}`, `{}`, `{"heartbeats":[{"user":"a"}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var p Parser
		var hb Heartbeat
		err := p.Heartbeat(body, &hb)
		var std map[string]any
		stdErr := json.Unmarshal(body, &std)
		if err != nil {
			// encoding/json may accept what we refuse only for a non-object
			// or invalid UTF-8 it replaces; never for a valid object.
			if stdErr == nil && std != nil && validUTF8JSON(body) {
				t.Fatalf("refused %q that encoding/json accepts: %v", body, err)
			}
			return
		}
		if stdErr != nil {
			t.Fatalf("accepted %q that encoding/json refuses: %v", body, stdErr)
		}
		check := func(name string, got []byte) {
			v, present := std[name]
			s, isStr := v.(string)
			switch {
			case !present || v == nil:
				if len(got) != 0 {
					t.Fatalf("%s: got %q, encoding/json has none", name, got)
				}
			case isStr:
				if hb.FieldErr == "" && string(got) != s && validUTF8JSON(body) {
					t.Fatalf("%s: got %q, encoding/json %q", name, got, s)
				}
			default:
				if hb.FieldErr == "" {
					t.Fatalf("%s is %T but no field error", name, v)
				}
			}
		}
		check("user", hb.User)
		check("room", hb.Room)
		check("token", hb.Token)
		// Batches of one parse the same way.
		batch := append(append([]byte(`{"heartbeats":[`), body...), "]}"...)
		items, err := p.Batch(batch, nil, 10)
		if err != nil || len(items) != 1 || !bytes.Equal(items[0].User, hb.User) {
			t.Fatalf("batch of %q: %v %d", body, err, len(items))
		}
	})
}

// validUTF8JSON reports whether body has no invalid UTF-8 and no lone
// surrogate escapes, where encoding/json substitutes U+FFFD.
func validUTF8JSON(body []byte) bool {
	return !bytes.ContainsRune(body, 0xFFFD) && bytes.Equal(bytes.ToValidUTF8(body, []byte("\uFFFD")), body) && !bytes.Contains(body, []byte(`\ud`)) && !bytes.Contains(body, []byte(`\uD`))
}

func TestHasLoneSurrogate(t *testing.T) {
	for body, want := range map[string]bool{
		`{"users":["a"]}`:            false,
		`{"users":["\ud83d\ude00"]}`: false,
		`{"users":["\\ud800"]}`:      false, // an escaped backslash, then text
		`{"users":["\u00e9\n"]}`:     false,
		`{"users":["\ud800"]}`:       true,
		`{"users":["\ud800\u0041"]}`: true,
		`{"users":["\udc00"]}`:       true,
		`{"users":["\uD800\uD800"]}`: true,
		`{"users":["x\ud83d"]}`:      true,
	} {
		if got := HasLoneSurrogate([]byte(body)); got != want {
			t.Errorf("%s: %v, want %v", body, got, want)
		}
	}
}

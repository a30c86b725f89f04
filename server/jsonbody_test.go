package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
)

func TestParseHeartbeat(t *testing.T) {
	f := func(body, user, room, tok, fieldErr string, ok bool) {
		t.Helper()
		var r jsonReader
		var hb heartbeatFields
		err := parseHeartbeat(&r, []byte(body), nil, &hb)
		if (err == nil) != ok {
			t.Fatalf("%s: err %v, want ok=%v", body, err, ok)
		}
		if !ok {
			return
		}
		if string(hb.user) != user || string(hb.room) != room || string(hb.token) != tok || hb.fieldErr != fieldErr {
			t.Fatalf("%s: got %q %q %q %q", body, hb.user, hb.room, hb.token, hb.fieldErr)
		}
	}
	f(`{"user":"a","room":"b","token":"c"}`, "a", "b", "c", "", true)
	f(` { "room" : "b" , "user" : "a" } `, "a", "b", "", "", true)
	f(`{"user":"a\"b\\c\/d\u00e9\ud83d\ude00"}`, "a\"b\\c/dé😀", "", "", "", true)
	f(`{"user":"a","extra":{"x":[1,2.5e3,true,false,null,"s"]}}`, "a", "", "", "", true)
	f(`{"user":"a","room":null}`, "a", "", "", "", true)
	f(`{"user":1}`, "", "", "", "user must be a string", true)
	f(`{"user":"a","user":"b"}`, "b", "", "", "", true)
	f(`{}`, "", "", "", "", true)
	for _, bad := range []string{``, `{`, `{"user":"a"`, `{"user":"a",}`, `{"user":"a"}x`, `[]`, `{"user":"a` + "\x01" + `"}`, `{"user":"\x"}`, `{"user":"\u12"}`, `{"a":01}`, `{"a":-}`, `{"a":1.}`, `{"a":tru}`, `nul`,
		`{"user":"\ud800"}`, `{"user":"\ud800\u0041"}`, `{"user":"\ud800\u0042"}`, `{"user":"\udc00"}`, `{"user":"\ud800\ud800"}`,
		`{"user":"a","x":"\ud800x"}`, `{"user":"\ud83d\u12"}`} {
		f(bad, "", "", "", "", false)
	}
}

func TestParseBatch(t *testing.T) {
	var r jsonReader
	items, err := parseBatch(&r, []byte(`{"x":1,"heartbeats":[{"user":"a"},{"user":"b","room":"r"}]}`), nil, nil, 10)
	if err != nil || len(items) != 2 || string(items[1].room) != "r" {
		t.Fatalf("%v %+v", err, items)
	}
	if _, err := parseBatch(&r, []byte(`{"heartbeats":[{},{},{}]}`), nil, nil, 2); !errors.Is(err, errTooMany) {
		t.Fatalf("over max: %v", err)
	}
	if _, err := parseBatch(&r, []byte(`{"other":[]}`), nil, nil, 2); !errors.Is(err, errMissingHeartbeats) {
		t.Fatalf("missing: %v", err)
	}
	if items, err := parseBatch(&r, []byte(`{"heartbeats":[]}`), nil, nil, 2); err != nil || len(items) != 0 {
		t.Fatalf("empty: %v", err)
	}
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"plain", "q\"b\\", "ctl\x01\n\t", "é😀", "bad\xffutf8", "<>&", "\u2028"} {
		got := appendJSONString(nil, s)
		want, _ := json.Marshal(s)
		if !bytes.Equal(got, want) {
			t.Fatalf("%q: got %s want %s", s, got, want)
		}
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
		var r jsonReader
		var hb heartbeatFields
		err := parseHeartbeat(&r, body, nil, &hb)
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
				if hb.fieldErr == "" && string(got) != s && validUTF8JSON(body) {
					t.Fatalf("%s: got %q, encoding/json %q", name, got, s)
				}
			default:
				if hb.fieldErr == "" {
					t.Fatalf("%s is %T but no field error", name, v)
				}
			}
		}
		check("user", hb.user)
		check("room", hb.room)
		check("token", hb.token)
		// Batches of one parse the same way.
		batch := append(append([]byte(`{"heartbeats":[`), body...), "]}"...)
		items, err := parseBatch(&r, batch, nil, nil, 10)
		if err != nil || len(items) != 1 || !bytes.Equal(items[0].user, hb.user) {
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
		if got := hasLoneSurrogate([]byte(body)); got != want {
			t.Errorf("%s: %v, want %v", body, got, want)
		}
	}
}

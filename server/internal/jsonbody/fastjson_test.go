package jsonbody

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/valyala/fastjson"
)

// fjParser is Parser's contract written with github.com/valyala/fastjson
// the idiomatic zero-allocation way (one reused fastjson.Parser), for
// BenchmarkParse: the same Heartbeat out, the same errors for the same
// bodies. TestFastjsonSideAgrees holds it to that.
//
// fastjson.Parser alone is lenient (it does not check escapes, control
// characters or number syntax: `{"a":01}` and `{"user":"\x"}` parse), so
// the body goes through fastjson.ValidateBytes first, and, when it holds
// a backslash, through HasLoneSurrogate (fastjson keeps a lone surrogate
// escape as the text `\ud800`) and fjRawControl (a gap of Validate).
// Depth is limited to MaxDepth by a walk (fastjson's own limit is 300). fastjson gives no raw bytes of a
// value, so State is the object re-serialized with MarshalTo (before any
// of its keys are unescaped: strings and numbers byte for byte, spaces
// dropped), the same after json.Compact, which the server applies to
// every state. What still differs: a body with two faults may name a
// different one, because fastjson reads the whole body before the first
// field is looked at (a batch past max whose tail is malformed is
// ErrSyntax here, ErrTooMany for Parser, which stops at item max+1).
type fjParser struct {
	p     fastjson.Parser
	state []byte // the re-serialized states of one body, one after another
	// lenient skips ValidateBytes and HasLoneSurrogate: fastjson.Parser
	// alone, for the benchmark's lower bound (not Parser's contract).
	lenient bool
}

func (f *fjParser) parse(body []byte) (*fastjson.Object, error) {
	if !f.lenient && fastjson.ValidateBytes(body) != nil {
		return nil, ErrSyntax
	}
	if !f.lenient && bytes.IndexByte(body, '\\') >= 0 && (HasLoneSurrogate(body) || fjRawControl(body)) {
		return nil, ErrSyntax
	}
	v, err := f.p.ParseBytes(body)
	if err != nil {
		return nil, ErrSyntax
	}
	o := v.GetObject()
	if o == nil {
		return nil, ErrSyntax
	}
	if cap(f.state) < len(body) {
		f.state = make([]byte, 0, len(body))
	}
	f.state = f.state[:0]
	return o, nil
}

func (f *fjParser) Heartbeat(body []byte, hb *Heartbeat) error {
	o, err := f.parse(body)
	if err != nil {
		return err
	}
	return f.object(o, hb)
}

func (f *fjParser) Batch(body []byte, items []Heartbeat, max int) ([]Heartbeat, error) {
	items = items[:0]
	o, err := f.parse(body)
	if err != nil {
		return items, err
	}
	seen := false
	o.Visit(func(key []byte, v *fastjson.Value) {
		if err != nil {
			return
		}
		if string(key) != "heartbeats" {
			if !fjWithin(v, 0) {
				err = ErrSyntax
			}
			return
		}
		seen = true
		items = items[:0]
		switch v.Type() {
		case fastjson.TypeArray:
		case fastjson.TypeNull, fastjson.TypeObject, fastjson.TypeString:
			err = ErrMissingHeartbeats
			return
		default:
			err = ErrSyntax
			return
		}
		for _, it := range v.GetArray() {
			if len(items) == max {
				err = ErrTooMany
				return
			}
			items = append(items, Heartbeat{})
			io := it.GetObject()
			if io == nil {
				err = ErrSyntax
				return
			}
			if err = f.object(io, &items[len(items)-1]); err != nil {
				return
			}
		}
	})
	if err != nil {
		return items, err
	}
	if !seen {
		return items, ErrMissingHeartbeats
	}
	return items, nil
}

func (f *fjParser) object(o *fastjson.Object, hb *Heartbeat) error {
	*hb = Heartbeat{}
	var err error
	o.Visit(func(key []byte, v *fastjson.Value) {
		if err != nil {
			return
		}
		dst := hb.stringField(key)
		if string(key) == "state" {
			hb.HasState = true
			switch v.Type() {
			case fastjson.TypeObject:
				start := len(f.state)
				f.state = v.MarshalTo(f.state)
				hb.State = f.state[start:len(f.state):len(f.state)]
			case fastjson.TypeNull:
				hb.State = nil
			default:
				hb.wrongType(key)
			}
		}
		if dst != nil {
			switch v.Type() {
			case fastjson.TypeString:
				*dst, _ = v.StringBytes()
			case fastjson.TypeNull:
				*dst = nil
			default:
				hb.wrongType(key)
			}
		}
		if !fjWithin(v, 0) {
			err = ErrSyntax
		}
	})
	return err
}

// fjRawControl reports whether a string of a valid JSON text holds a raw
// control character: fastjson.Validate (v1.6.10) misses one that comes
// before the string's last escape sequence ("\x01\\n" passes), which a
// differential fuzz run of fjParser against Parser found.
func fjRawControl(b []byte) bool {
	in := false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			in = !in
		case c == '\\' && in:
			i++
		case c < 0x20 && in:
			return true
		}
	}
	return false
}

// fjWithin reports whether v, at depth, nests no deeper than Parser allows.
func fjWithin(v *fastjson.Value, depth int) bool {
	if depth > MaxDepth {
		return false
	}
	for _, c := range v.GetArray() {
		if !fjWithin(c, depth+1) {
			return false
		}
	}
	ok := true
	v.GetObject().Visit(func(_ []byte, c *fastjson.Value) {
		ok = ok && fjWithin(c, depth+1)
	})
	return ok
}

// sameResult reports how two parses of one body differ, or "".
func sameResult(errA, errB error, a, b []Heartbeat) string {
	if !errors.Is(errA, errB) && (errA != nil || errB != nil) {
		return "errors " + errString(errA) + " vs " + errString(errB)
	}
	if errA != nil {
		return ""
	}
	if len(a) != len(b) {
		return "items " + strconv.Itoa(len(a)) + " vs " + strconv.Itoa(len(b))
	}
	for i := range a {
		x, y := &a[i], &b[i]
		switch {
		case !bytes.Equal(x.User, y.User) || !bytes.Equal(x.Room, y.Room) || !bytes.Equal(x.Token, y.Token):
			return "ids of item " + strconv.Itoa(i)
		case x.FieldErr != y.FieldErr:
			return "field error " + x.FieldErr + " vs " + y.FieldErr
		case x.HasState != y.HasState || (x.State == nil) != (y.State == nil):
			return "state presence of item " + strconv.Itoa(i)
		case x.State != nil && x.FieldErr == "" && compact(x.State) != compact(y.State):
			return "state " + string(x.State) + " vs " + string(y.State)
		}
	}
	return ""
}

func errString(err error) string {
	if err == nil {
		return "nil"
	}
	return err.Error()
}

func compact(b []byte) string {
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return "invalid: " + err.Error()
	}
	return out.String()
}

// agreementBodies are the bodies both sides must read alike: the parser
// tests' bodies, the fuzz corpus and the benchmark inputs.
func agreementBodies(t *testing.T) [][]byte {
	bodies := [][]byte{
		[]byte(`{"user":"a","room":"b","token":"c"}`),
		[]byte(` { "room" : "b" , "user" : "a" } `),
		[]byte(`{"user":"a\"b\\c\/d\u00e9\ud83d\ude00"}`),
		[]byte(`{"us\u0065r":"a"}`),
		[]byte(`{"user":"a","extra":{"x":[1,2.5e3,true,false,null,"s"]}}`),
		[]byte(`{"user":"a","room":null}`), []byte(`{"user":1}`), []byte(`{"user":"a","room":["r"],"token":{}}`),
		[]byte(`{"user":"a","user":"b"}`), []byte(`{"user":"a","state":[]}`), []byte(`{}`),
		[]byte(`{"user":"a","state":null}`), []byte(`{"state":{"a":1},"state":null}`),
		[]byte(`{"user":"a","state": {"s" : "\u00e9", "k\u00e9":[1, -2.5E+3, {}]} }`),
		[]byte(`{"x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`),
		[]byte(`{"x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`),
		[]byte(`{"user":"\u0000\ud7ff\ue000"}`), []byte("{\"user\":\"\xff\xfe\"}"),
		[]byte("{\"user\":\"a\x01\\n\"}"), []byte("{\"\":\"\x00\\b0000\"}"), // a control character before an escape
		[]byte(``), []byte(`{`), []byte(`{"user":"a"`), []byte(`{"user":"a",}`), []byte(`{"user":"a"}x`), []byte(`[]`), []byte(`"s"`),
		[]byte("{\"user\":\"a\x01\"}"), []byte(`{"user":"\x"}`), []byte(`{"user":"\u12"}`), []byte(`{"a":01}`), []byte(`{"a":-}`),
		[]byte(`{"a":1.}`), []byte(`{"a":tru}`), []byte(`nul`), []byte(`{"a":NaN}`), []byte(`{"a":inf}`), []byte(`{"a":+1}`),
		[]byte(`{"user":"\ud800"}`), []byte(`{"user":"\ud800\u0041"}`), []byte(`{"user":"\udc00"}`), []byte(`{"user":"\ud800\ud800"}`),
		[]byte(`{"\udc00":"a"}`), []byte(`{"state":{"s":"\ud800"}}`), []byte(`{"user":"a","x":"\ud800x"}`),
		[]byte(`{"heartbeats":[{"user":"a"},{"user":"b","room":"r","state":{"x":1}}],"y":null}`),
		[]byte(`{"heartbeats":[]}`), []byte(`{"heartbeats":null}`), []byte(`{"heartbeats":{}}`), []byte(`{"heartbeats":"x"}`),
		[]byte(`{"heartbeats":1}`), []byte(`{"heartbeats":[1]}`), []byte(`{"heartbeats":[{"user":2}]}`),
		[]byte(`{"heartbeats":[{"user":"a"}],"heartbeats":[{"user":"c"},{}]}`),
		[]byte(`{"heartbeats":[{},{},{},{},{},{},{},{},{},{},{}]}`),
		single, withState, batch100, malformed,
	}
	corpus, err := filepath.Glob("testdata/fuzz/FuzzParseHeartbeat/*")
	if err != nil || len(corpus) == 0 {
		t.Fatalf("fuzz corpus: %v, %d files", err, len(corpus))
	}
	for _, name := range corpus {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		// go test fuzz v1, then []byte("...") with Go escapes.
		line := bytes.TrimSpace(bytes.SplitN(b, []byte("\n"), 2)[1])
		s, err := strconv.Unquote(string(bytes.TrimSuffix(bytes.TrimPrefix(line, []byte("[]byte(")), []byte(")"))))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		bodies = append(bodies, []byte(s))
	}
	return bodies
}

// TestFastjsonSideAgrees holds the benchmark's fastjson side to Parser's
// results on every body of this package's tests, alone and as a batch of
// one, so BenchmarkParse compares the same work.
func TestFastjsonSideAgrees(t *testing.T) {
	var p Parser
	var f fjParser
	for _, body := range agreementBodies(t) {
		var a, b [1]Heartbeat
		errA := p.Heartbeat(body, &a[0])
		errB := f.Heartbeat(body, &b[0])
		if d := sameResult(errA, errB, a[:], b[:]); d != "" {
			t.Errorf("heartbeat %q: %s", body, d)
		}
		for _, batch := range [][]byte{body, append(append([]byte(`{"heartbeats":[`), body...), "]}"...)} {
			ia, errA := p.Batch(batch, nil, 10)
			ib, errB := f.Batch(batch, nil, 10)
			if d := sameResult(errA, errB, ia, ib); d != "" {
				t.Errorf("batch %q: %s", batch, d)
			}
		}
	}
}

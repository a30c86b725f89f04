package jsonbody

import (
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"testing"
)

// The heartbeat path's inputs (README "HTTP API"): a heartbeat with a real token (as
// `presenced token` mints it), the same with a 100-byte state object, a
// batch of 100 items, and a malformed (truncated) body.
var (
	single    = []byte(`{"user":"alice","room":"lobby","token":"k1.1827680869.u.8xYNmEvtN6I_bQHmhrQjUeF8aIcoMkSMcqJU6eIlvGM"}`)
	withState = []byte(`{"user":"alice","room":"lobby","token":"k1.1827680869.u.8xYNmEvtN6I_bQHmhrQjUeF8aIcoMkSMcqJU6eIlvGM",` +
		`"state":{"status":"away","device":"ios","app":"4.12","typing":false,"cursor":{"x":12,"y":4},"tags":["beta"]}}`)
	batch100  = batchBody(100)
	malformed = []byte(`{"user":"alice","room":"lobby","token":"k1.1827680869.u.8xYNmEvtN6I_bQHmh`)
)

func batchBody(n int) []byte {
	b := []byte(`{"heartbeats":[`)
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		user := "user-" + strconv.Itoa(i)
		sig := sha256.Sum256([]byte(user))
		b = append(b, `{"user":"`+user+`","room":"room-`+strconv.Itoa(i%10)+`","token":"k1.1827680869.u.`+base64.RawURLEncoding.EncodeToString(sig[:])+`"}`...)
	}
	return append(b, "]}"...)
}

func TestBenchInputs(t *testing.T) {
	if n := len(`{"status":"away","device":"ios","app":"4.12","typing":false,"cursor":{"x":12,"y":4},"tags":["beta"]}`); n != 100 {
		t.Fatalf("state object is %d bytes, want 100", n)
	}
	var p Parser
	var hb Heartbeat
	if err := p.Heartbeat(withState, &hb); err != nil || len(hb.State) != 100 {
		t.Fatalf("state: %v %q", err, hb.State)
	}
	if items, err := p.Batch(batch100, nil, 1000); err != nil || len(items) != 100 || len(items[99].Token) != len(`k1.1827680869.u.8xYNmEvtN6I_bQHmhrQjUeF8aIcoMkSMcqJU6eIlvGM`) {
		t.Fatalf("batch: %v %d", err, len(items))
	}
	if err := p.Heartbeat(malformed, &hb); err == nil {
		t.Fatal("malformed body parsed")
	}
}

// parser is what BenchmarkParse compares: Parser and fjParser.
type parser interface {
	Heartbeat(body []byte, hb *Heartbeat) error
	Batch(body []byte, items []Heartbeat, max int) ([]Heartbeat, error)
}

// BenchmarkParse compares this package's Parser with the same contract on
// github.com/valyala/fastjson (fjParser), each reused across bodies as the
// HTTP handlers reuse theirs. "fastjson" validates as Parser does;
// "fastjson-lenient" skips fastjson.ValidateBytes and HasLoneSurrogate
// (it accepts bodies Parser refuses, so it is a lower bound, not a
// candidate). BENCHMARKS.md "JSON bodies" has the figures.
func BenchmarkParse(b *testing.B) {
	inputs := []struct {
		name  string
		body  []byte
		batch bool
	}{
		{"heartbeat", single, false},
		{"state100", withState, false},
		{"batch100", batch100, true},
		{"malformed", malformed, false},
	}
	for _, in := range inputs {
		for _, side := range []struct {
			name string
			p    parser
		}{
			{"jsonbody", &Parser{}},
			{"fastjson", &fjParser{}},
			{"fastjson-lenient", &fjParser{lenient: true}},
		} {
			b.Run(in.name+"/"+side.name, func(b *testing.B) {
				var hb Heartbeat
				items := make([]Heartbeat, 0, 1000)
				wantErr := in.body[len(in.body)-1] != '}'
				b.SetBytes(int64(len(in.body)))
				b.ReportAllocs()
				for b.Loop() {
					var err error
					if in.batch {
						items, err = side.p.Batch(in.body, items, 1000)
					} else {
						err = side.p.Heartbeat(in.body, &hb)
					}
					if (err != nil) != wantErr {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

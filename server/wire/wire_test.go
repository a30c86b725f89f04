package wire

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

type jsonItem struct {
	Op    Op     `json:"op"`
	User  string `json:"user"`
	Room  string `json:"room"`
	Conn  string `json:"conn"`
	Token string `json:"token"`
}

type vectors struct {
	Requests []struct {
		Name  string     `json:"name"`
		Seq   uint32     `json:"seq"`
		Ack   bool       `json:"ack"`
		Items []jsonItem `json:"items"`
		Hex   string     `json:"hex"`
	} `json:"requests"`
	Replies []struct {
		Name       string   `json:"name"`
		Request    string   `json:"request"`
		Statuses   []Status `json:"statuses"`
		IntervalMs uint32   `json:"interval_ms"`
		TTLMs      uint32   `json:"ttl_ms"`
		HasTiming  bool     `json:"has_timing"`
		Hex        string   `json:"hex"`
	} `json:"replies"`
	Invalid []struct {
		Name  string `json:"name"`
		Kind  string `json:"kind"`
		Hex   string `json:"hex"`
		Error string `json:"error"`
	} `json:"invalid"`
}

// unhex decodes a vector's hex; spaces and '|' are only for reading.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.NewReplacer(" ", "", "|", "").Replace(s))
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

func loadVectors(t testing.TB) *vectors {
	t.Helper()
	data, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	v := new(vectors)
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatal(err)
	}
	return v
}

func toItems(js []jsonItem) []Item {
	items := make([]Item, len(js))
	for i, j := range js {
		items[i] = Item{Op: j.Op, User: []byte(j.User), Room: []byte(j.Room), Conn: []byte(j.Conn), Token: []byte(j.Token)}
	}
	return items
}

func TestVectors(t *testing.T) {
	v := loadVectors(t)
	reqs := map[string][]byte{}
	for _, c := range v.Requests {
		t.Run(c.Name, func(t *testing.T) {
			want := unhex(t, c.Hex)
			reqs[c.Name] = want
			got, err := AppendRequest(nil, c.Seq, c.Ack, toItems(c.Items))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("AppendRequest = %x, %v\nwant %x", got, err, want)
			}
			var d Datagram
			if err := d.Decode(want); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if d.Seq != c.Seq || d.Ack != c.Ack || d.Size() != len(want) || len(d.Items()) != len(c.Items) {
				t.Fatalf("Decode = seq %d ack %v size %d items %d", d.Seq, d.Ack, d.Size(), len(d.Items()))
			}
			for i, it := range d.Items() {
				j := c.Items[i]
				if it.Op != j.Op || string(it.User) != j.User || string(it.Room) != j.Room || string(it.Conn) != j.Conn || string(it.Token) != j.Token {
					t.Errorf("item %d = %+v, want %+v", i, it, j)
				}
			}
		})
	}
	for _, c := range v.Replies {
		t.Run(c.Name, func(t *testing.T) {
			want := unhex(t, c.Hex)
			var d Datagram
			if err := d.Decode(reqs[c.Request]); err != nil {
				t.Fatalf("request %s: %v", c.Request, err)
			}
			got, err := AppendReply(nil, &d, c.Statuses, c.IntervalMs, c.TTLMs)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("AppendReply = %x, %v\nwant %x", got, err, want)
			}
			if len(got) > d.Size() {
				t.Errorf("reply %d bytes > request %d", len(got), d.Size())
			}
			var r Reply
			if err := r.Decode(want); err != nil {
				t.Fatalf("Reply.Decode: %v", err)
			}
			wantIv, wantTTL := uint32(0), uint32(0)
			if c.HasTiming {
				wantIv, wantTTL = c.IntervalMs, c.TTLMs
			}
			if r.Seq != d.Seq || r.HasTiming != c.HasTiming || r.IntervalMs != wantIv || r.TTLMs != wantTTL ||
				fmt.Sprint(r.Statuses()) != fmt.Sprint(c.Statuses) {
				t.Errorf("Reply.Decode = %+v statuses %v", r, r.Statuses())
			}
		})
	}
	for _, c := range v.Invalid {
		t.Run(c.Name, func(t *testing.T) {
			b := unhex(t, c.Hex)
			var err error
			switch c.Kind {
			case "request":
				var d Datagram
				err = d.Decode(b)
				if len(d.Items()) != 0 || d.Size() != 0 {
					t.Errorf("failed Decode left %d items", len(d.Items()))
				}
			case "reply":
				var r Reply
				err = r.Decode(b)
				if len(r.Statuses()) != 0 {
					t.Errorf("failed Decode left %d statuses", len(r.Statuses()))
				}
			default:
				t.Fatalf("kind %q", c.Kind)
			}
			if Reason(err) != c.Error {
				t.Errorf("Decode = %v (%s), want %s", err, Reason(err), c.Error)
			}
		})
	}
}

func TestAppendRequestErrors(t *testing.T) {
	ok := Item{Op: OpHeartbeat, User: []byte("u")}
	many := make([]Item, MaxItems+1)
	for i := range many {
		many[i] = ok
	}
	big := Item{Op: OpHeartbeat, User: bytes.Repeat([]byte("u"), 128), Room: bytes.Repeat([]byte("r"), 128), Token: bytes.Repeat([]byte("t"), 255)}
	cases := []struct {
		name  string
		items []Item
		want  error
	}{
		{"none", nil, ErrBadCount},
		{"65 items", many, ErrBadCount},
		{"bad op", []Item{{Op: 0, User: []byte("u")}}, ErrBadOp},
		{"empty user", []Item{{Op: OpLeave}}, ErrBadID},
		{"long room", []Item{{Op: OpLeave, User: []byte("u"), Room: bytes.Repeat([]byte("r"), 129)}}, ErrBadID},
		{"long token", []Item{{Op: OpHeartbeat, User: []byte("u"), Token: make([]byte, 256)}}, ErrTokenTooLong},
		{"long conn", []Item{{Op: OpHeartbeat, User: []byte("u"), Conn: bytes.Repeat([]byte("c"), 65)}}, ErrBadID},
		{"control char in conn", []Item{{Op: OpHeartbeat, User: []byte("u")}, {Op: OpLeave, User: []byte("u"), Conn: []byte("a\nb")}}, ErrBadID},
		{"too large", []Item{big, big, big}, ErrTooLarge},
	}
	for _, c := range cases {
		dst := []byte("keep")
		got, err := AppendRequest(dst, 1, true, c.items)
		if err != c.want || string(got) != "keep" {
			t.Errorf("%s: AppendRequest = %q, %v; want dst unchanged, %v", c.name, got, err, c.want)
		}
	}
	// Largest legal request: 2 maximal items (2*520+8 = 1048) plus smaller ones.
	b, err := AppendRequest(nil, 1, false, []Item{big, big})
	if err != nil || len(b) != 8+2*(4+128+128+255) {
		t.Fatalf("two maximal items: %d bytes, %v", len(b), err)
	}
	// 64 items decode and re-encode.
	items := many[:MaxItems]
	b, err = AppendRequest(nil, 1, false, items)
	var d Datagram
	if err != nil || d.Decode(b) != nil || len(d.Items()) != MaxItems {
		t.Fatalf("64 items: %v", err)
	}
}

func TestAppendReplyNeverLarger(t *testing.T) {
	var d Datagram
	if _, err := AppendReply(nil, &d, []Status{0}, 1, 1); err != ErrNoRequest {
		t.Errorf("undecoded request: %v", err)
	}
	for n := 1; n <= MaxItems; n++ {
		items := make([]Item, n)
		for i := range items {
			items[i] = Item{Op: OpHeartbeat, User: []byte("u")} // smallest item
		}
		req, err := AppendRequest(nil, uint32(n), true, items)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Decode(req); err != nil {
			t.Fatal(err)
		}
		statuses := make([]Status, n)
		rep, err := AppendReply(nil, &d, statuses, 60000, 150000)
		if err != nil || len(rep) > len(req) {
			t.Fatalf("%d items: reply %d bytes > request %d (%v)", n, len(rep), len(req), err)
		}
		var r Reply
		if err := r.Decode(rep); err != nil {
			t.Fatal(err)
		}
		// 16+n <= 8+5n from n = 2 on.
		if r.HasTiming != (n >= 2) {
			t.Errorf("%d items: timing %v", n, r.HasTiming)
		}
		if _, err := AppendReply(nil, &d, statuses[:n-1], 0, 0); err != ErrStatusCount {
			t.Errorf("short statuses: %v", err)
		}
	}
	// Forge a request size the decoder would never accept, to reach the guard.
	d.size = HeaderLen
	if got, err := AppendReply([]byte("x"), &d, make([]Status, d.n), 0, 0); err != ErrReplyTooLarge || string(got) != "x" {
		t.Errorf("oversized reply: %q, %v", got, err)
	}
}

func TestValidID(t *testing.T) {
	cases := []struct {
		id         string
		allowEmpty bool
		want       bool
	}{
		{"", false, false},
		{"", true, true},
		{"a", false, true},
		{strings.Repeat("a", 128), false, true},
		{strings.Repeat("a", 129), true, false},
		{"café ☕ 🙂", false, true},
		{"tab\there", false, false},
		{"nul\x00", false, false},
		{"del\x7f", false, false},
		{"\xc3", false, false},         // truncated UTF-8
		{"\xed\xa0\x80", false, false}, // surrogate
		{"x\u0085", false, true},       // C1 controls are valid UTF-8 and allowed
	}
	for _, c := range cases {
		if got := ValidID([]byte(c.id), c.allowEmpty); got != c.want {
			t.Errorf("ValidID(%q, %v) = %v", c.id, c.allowEmpty, got)
		}
	}
}

func TestReason(t *testing.T) {
	if Reason(nil) != "" || Reason(errors.New("x")) != "other" || Reason(ErrTruncated) != "truncated" {
		t.Error("Reason")
	}
	if got := strings.Join(Reasons(), ","); got != "too_large,too_short,bad_magic,bad_version,bad_flags,bad_count,truncated,bad_op,bad_id,trailing,other" {
		t.Errorf("Reasons = %s", got)
	}
	if StatusTokenExpired.String() != "token_expired" || Status(200).String() != "unknown" {
		t.Error("Status.String")
	}
}

func TestDecodeClipsCapacity(t *testing.T) {
	b, _ := AppendRequest(nil, 1, false, []Item{{Op: OpHeartbeat, User: []byte("ab"), Room: []byte("cd"), Conn: []byte("ef"), Token: []byte("gh")}})
	var d Datagram
	if err := d.Decode(b); err != nil {
		t.Fatal(err)
	}
	it := d.Items()[0]
	_ = append(it.User, 'X')
	_ = append(it.Room, 'X')
	_ = append(it.Conn, 'X')
	if string(it.Room) != "cd" || string(it.Conn) != "ef" || string(it.Token) != "gh" || len(b) != 8+1+3+3+3+3 {
		t.Errorf("append to a field overwrote the next one: %+v", it)
	}
}

// Without FlagConn no item names a connection, and the encoders set the
// flag only when one does: every datagram sent before connections existed
// keeps its bytes and its meaning.
func TestConnFlag(t *testing.T) {
	plain := []Item{{Op: OpHeartbeat, User: []byte("alice"), Room: []byte("lobby")}}
	b, err := AppendRequest(nil, 1, true, plain)
	if err != nil || b[2] != FlagAck {
		t.Fatalf("no conn: flags %#x, %v", b[2], err)
	}
	key := []byte("k")
	b2, err := AppendRequestV2(nil, 1, true, 1, []byte("t"), key, plain)
	if err != nil || b2[2] != FlagAck {
		t.Fatalf("v2 no conn: flags %#x, %v", b2[2], err)
	}
	withConn := []Item{plain[0], {Op: OpHeartbeat, User: []byte("alice"), Room: []byte("lobby"), Conn: []byte("tab-1")}}
	b, err = AppendRequest(nil, 1, false, withConn)
	if err != nil || b[2] != FlagConn || len(b) != RequestLen(withConn) {
		t.Fatalf("conn: flags %#x, %d bytes (RequestLen %d), %v", b[2], len(b), RequestLen(withConn), err)
	}
	b2, err = AppendRequestV2(nil, 1, false, 1, []byte("t"), key, withConn)
	if err != nil || b2[2] != FlagConn || len(b2) != RequestLenV2([]byte("t"), withConn) {
		t.Fatalf("v2 conn: flags %#x, %d bytes, %v", b2[2], len(b2), err)
	}
	var d Datagram
	if err := d.Decode(b2); err != nil || !d.VerifyMAC(key) || string(d.Items()[1].Conn) != "tab-1" || len(d.Items()[0].Conn) != 0 {
		t.Fatalf("v2 decode: %v %+v", err, d.Items())
	}

	// A sender that always sets the flag, with connLen 0 in every item,
	// means the default connection, as without the flag.
	always := []byte{Magic, Version, FlagAck | FlagConn, 1, 0, 0, 0, 1, byte(OpHeartbeat), 1, 'a', 0, 0, 0}
	if err := d.Decode(always); err != nil || len(d.Items()[0].Conn) != 0 || string(d.Items()[0].User) != "a" {
		t.Fatalf("flag without conns: %v %+v", err, d.Items())
	}
}

func batch(n int) []byte { return batchConn(n, false) }

// batchConn is batch with, when withConn, a connection id in every item.
func batchConn(n int, withConn bool) []byte {
	items := make([]Item, n)
	for i := range items {
		items[i] = Item{Op: OpHeartbeat, User: fmt.Appendf(nil, "user-%07d", i), Room: []byte("room-42"),
			Token: []byte("k1.1700000000.r.Tsp-J8CEq-nP6Iy6OGQ68akzL6cYvMZzRHLtcvMNS3U")}
		if withConn {
			items[i].Conn = fmt.Appendf(nil, "Q2xpZW50VGFi%04d", i)
		}
	}
	b, err := AppendRequest(nil, 7, true, items)
	if err != nil {
		panic(err)
	}
	return b
}

func TestAllocs(t *testing.T) {
	t.Run("conn=false", func(t *testing.T) { testAllocs(t, 16, batchConn(16, false)) })
	t.Run("conn=true", func(t *testing.T) { testAllocs(t, 12, batchConn(12, true)) })
}

func testAllocs(t *testing.T, count int, req []byte) {
	var d Datagram
	var r Reply
	statuses := make([]Status, count)
	out := make([]byte, 0, MaxDatagram)
	bad := req[:len(req)-1]
	n := testing.AllocsPerRun(100, func() {
		if err := d.Decode(bad); err != ErrTruncated {
			t.Fatal(err)
		}
		_ = Reason(ErrTruncated)
		if err := d.Decode(req); err != nil {
			t.Fatal(err)
		}
		rep, err := AppendReply(out[:0], &d, statuses, 60000, 150000)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Decode(rep); err != nil {
			t.Fatal(err)
		}
		_ = ValidID(d.Items()[0].User, false)
		if _, err := AppendRequest(out[:0], 1, true, d.Items()); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Errorf("%v allocations per run, want 0", n)
	}
}

func FuzzDecode(f *testing.F) {
	v := loadVectors(f)
	for _, c := range v.Requests {
		b := unhex(f, c.Hex)
		f.Add(b)
		f.Add(b[:len(b)-1])
	}
	for _, c := range v.Invalid {
		f.Add(unhex(f, c.Hex))
	}
	data, _ := os.ReadFile("testdata/vectors.json")
	var v2 v2Vectors
	if err := json.Unmarshal(data, &v2); err != nil {
		f.Fatal(err)
	}
	for _, c := range v2.RequestsV2 {
		b := unhex(f, c.Hex)
		f.Add(b)
		f.Add(b[:len(b)-1])
	}
	var d Datagram
	var r Reply
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := r.Decode(b); err == nil {
			// The reply flag keeps the two kinds apart.
			if d.Decode(b) == nil {
				t.Fatalf("%x decodes as both request and reply", b)
			}
		}
		err := d.Decode(b)
		if err != nil {
			if Reason(err) == "other" {
				t.Fatalf("unlabelled error %v", err)
			}
			if len(d.Items()) != 0 {
				t.Fatal("items exposed after failed decode")
			}
			return
		}
		if b[2]&FlagConn != 0 && !hasConn(d.Items()) {
			// The flag with only default connections: the encoders leave
			// the flag and the zero connLens out, and the meaning is the
			// same.
			again, err := AppendRequest(nil, d.Seq, d.Ack, d.Items())
			var d2 Datagram
			if err != nil || d2.Decode(again) != nil || len(again) != len(b)-len(d.Items()) || again[2]&FlagConn != 0 {
				t.Fatalf("re-encode without conns = %x, %v; from %x", again, err, b)
			}
		} else if d.Version == Version2 {
			// Re-encoded with any key, all but the MAC is the same.
			again, err := AppendRequestV2(nil, d.Seq, d.Ack, d.TimestampMs, d.Items()[0].Token, []byte("k"), d.Items())
			if err != nil || !bytes.Equal(again[:len(again)-MACLen], b[:len(b)-MACLen]) {
				t.Fatalf("v2 re-encode = %x, %v; want %x", again, err, b)
			}
		} else if again, err := AppendRequest(nil, d.Seq, d.Ack, d.Items()); err != nil || !bytes.Equal(again, b) {
			t.Fatalf("re-encode = %x, %v; want %x", again, err, b)
		}
		statuses := make([]Status, len(d.Items()))
		for i := range statuses {
			if len(b) > i {
				statuses[i] = Status(b[i])
			}
		}
		for _, timing := range [][2]uint32{{0, 0}, {60000, 150000}, {0, 1}} {
			rep, err := AppendReply(nil, &d, statuses, timing[0], timing[1])
			if err != nil {
				t.Fatalf("AppendReply: %v", err)
			}
			if len(rep) > len(b) {
				t.Fatalf("reply %d bytes > request %d", len(rep), len(b))
			}
			if err := r.Decode(rep); err != nil || r.Seq != d.Seq || fmt.Sprint(r.Statuses()) != fmt.Sprint(statuses) {
				t.Fatalf("reply %x does not decode back: %v", rep, err)
			}
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	for _, n := range []int{1, 16} {
		req := batch(n)
		b.Run(fmt.Sprintf("items=%d", n), func(b *testing.B) {
			var d Datagram
			b.ReportAllocs()
			b.SetBytes(int64(len(req)))
			for b.Loop() {
				if err := d.Decode(req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkAppendReply(b *testing.B) {
	var d Datagram
	if err := d.Decode(batch(16)); err != nil {
		b.Fatal(err)
	}
	statuses := make([]Status, 16)
	out := make([]byte, 0, MaxDatagram)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if out, err = AppendReply(out[:0], &d, statuses, 60000, 150000); err != nil {
			b.Fatal(err)
		}
	}
}

// A reply vector must answer a request that asked for one: the server
// replies only when the ack flag is set.
func TestReplyVectorsAnswerAckRequests(t *testing.T) {
	v := loadVectors(t)
	ack := map[string]bool{}
	for _, r := range v.Requests {
		ack[r.Name] = r.Ack
	}
	for _, r := range v.Replies {
		if !ack[r.Request] {
			t.Errorf("reply vector %s answers %s, which asks for no ack", r.Name, r.Request)
		}
	}
}

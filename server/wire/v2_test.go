package wire

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"testing"
)

type v2Vectors struct {
	RequestsV2 []struct {
		Name        string     `json:"name"`
		Seq         uint32     `json:"seq"`
		Ack         bool       `json:"ack"`
		TimestampMs uint64     `json:"timestamp_ms"`
		Token       string     `json:"token"`
		ClientKey   string     `json:"client_key"`
		Items       []jsonItem `json:"items"`
		Hex         string     `json:"hex"`
	} `json:"requests_v2"`
}

func TestVectorsV2(t *testing.T) {
	data, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v v2Vectors
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.RequestsV2) == 0 {
		t.Fatal("no v2 vectors")
	}
	for _, c := range v.RequestsV2 {
		t.Run(c.Name, func(t *testing.T) {
			want := unhex(t, c.Hex)
			key, _ := hex.DecodeString(c.ClientKey)
			got, err := AppendRequestV2(nil, c.Seq, c.Ack, c.TimestampMs, []byte(c.Token), key, toItems(c.Items))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("AppendRequestV2 = %x, %v\nwant %x", got, err, want)
			}
			var d Datagram
			if err := d.Decode(want); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if d.Version != Version2 || d.Seq != c.Seq || d.Ack != c.Ack || d.TimestampMs != c.TimestampMs || len(d.Items()) != len(c.Items) {
				t.Fatalf("Decode = %+v", d)
			}
			for i, it := range d.Items() {
				j := c.Items[i]
				if it.Op != j.Op || string(it.User) != j.User || string(it.Room) != j.Room || string(it.Conn) != j.Conn || string(it.Token) != c.Token {
					t.Errorf("item %d = %+v", i, it)
				}
			}
			if !d.VerifyMAC(key) {
				t.Fatal("MAC does not verify with the client key")
			}
			// Any flipped bit (op, seq, timestamp, ids, MAC) breaks it.
			for i := range want {
				bad := append([]byte(nil), want...)
				bad[i] ^= 0x01
				var bd Datagram
				if bd.Decode(bad) == nil && bd.VerifyMAC(key) {
					t.Fatalf("byte %d flipped still verifies", i)
				}
			}
			other := append([]byte(nil), key...)
			other[0] ^= 1
			if d.VerifyMAC(other) {
				t.Fatal("verifies with another key")
			}
			r, err := AppendReply(nil, &d, make([]Status, len(c.Items)), 60000, 150000)
			var rep Reply
			if err != nil || len(r) > len(want) || r[1] != Version2 || rep.Decode(r) != nil {
				t.Fatalf("reply %x: %v", r, err)
			}
		})
	}
}

// The Python client example builds the same datagrams as the Go encoder.
func TestPythonClientV2(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is needed for this test: %v", err)
	}
	script := `import sys; sys.path.insert(0, "testdata"); from client_v2 import client_key, request_v2
k = client_key(b"0123456789abcdef0123456789abcdef", "k1.1700000000.r.Tsp-J8CEq-nP6Iy6OGQ68akzL6cYvMZzRHLtcvMNS3U")
t = "k1.1700000000.r.Tsp-J8CEq-nP6Iy6OGQ68akzL6cYvMZzRHLtcvMNS3U"
print(k.hex()); print(request_v2(7, True, 1700000000123, t, k, [(1, "bob", "r\u00e9"), (2, "bob", "")]).hex())
print(request_v2(8, False, 1700000000124, t, k, [(1, "bob", "r\u00e9", "tab\u00e9"), (2, "bob", "r\u00e9", "")]).hex())`
	out, err := exec.Command(py, "-c", script).Output()
	if err != nil {
		t.Fatalf("python: %v", err)
	}
	lines := bytes.Fields(out)
	key, _ := hex.DecodeString(string(lines[0]))
	got, _ := hex.DecodeString(string(lines[1]))
	want, err := AppendRequestV2(nil, 7, true, 1700000000123, []byte("k1.1700000000.r.Tsp-J8CEq-nP6Iy6OGQ68akzL6cYvMZzRHLtcvMNS3U"), key,
		[]Item{{Op: OpHeartbeat, User: []byte("bob"), Room: []byte("ré")}, {Op: OpLeave, User: []byte("bob")}})
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("python %x\ngo     %x (%v)", got, want, err)
	}
	got, _ = hex.DecodeString(string(lines[2]))
	want, err = AppendRequestV2(nil, 8, false, 1700000000124, []byte("k1.1700000000.r.Tsp-J8CEq-nP6Iy6OGQ68akzL6cYvMZzRHLtcvMNS3U"), key,
		[]Item{{Op: OpHeartbeat, User: []byte("bob"), Room: []byte("ré"), Conn: []byte("tabé")}, {Op: OpLeave, User: []byte("bob"), Room: []byte("ré")}})
	if err != nil || !bytes.Equal(got, want) || want[2]&FlagConn == 0 {
		t.Fatalf("with conn: python %x\ngo     %x (%v)", got, want, err)
	}
}

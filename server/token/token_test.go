package token

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const testSecret = "0123456789abcdef0123456789abcdef"

func testKeyring(t testing.TB, text string) *Keyring {
	t.Helper()
	kr, err := ParseKeyring([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

type vector struct {
	Note   string `json:"note"`
	Kid    string `json:"kid"`
	Secret string `json:"secret"`
	User   string `json:"user"`
	Room   string `json:"room"`
	Scope  string `json:"scope"`
	Exp    int64  `json:"exp"`
	Token  string `json:"token"`
}

func loadVectors(t testing.TB) []vector {
	data, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(data, &vs); err != nil {
		t.Fatal(err)
	}
	return vs
}

// refToken builds a token with crypto/hmac, the reference for sign.
func refToken(kid, secret, user, room string, exp int64) string {
	scope := "u"
	if room != "" {
		scope = "r"
	}
	e := strconv.FormatInt(exp, 10)
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("presenced-token-v1\n" + kid + "\n" + e + "\n" + scope + "\n" + user + "\n" + room))
	return kid + "." + e + "." + scope + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func TestVectors(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.Note, func(t *testing.T) {
			kr := testKeyring(t, v.Kid+" "+v.Secret)
			got, err := kr.Mint(v.Kid, v.User, v.Room, v.Scope == "r", time.Unix(v.Exp, 0))
			if err != nil {
				t.Fatal(err)
			}
			if got != v.Token {
				t.Errorf("Mint = %s, want %s", got, v.Token)
			}
			if ref := refToken(v.Kid, v.Secret, v.User, v.Room, v.Exp); ref != v.Token {
				t.Errorf("crypto/hmac reference = %s, want %s", ref, v.Token)
			}
			if err := kr.Verify([]byte(v.Token), []byte(v.User), []byte(v.Room), v.Exp-1); err != nil {
				t.Errorf("Verify before expiry: %v", err)
			}
			if err := kr.Verify([]byte(v.Token), []byte(v.User), []byte(v.Room), v.Exp); !errors.Is(err, ErrExpired) {
				t.Errorf("Verify at expiry = %v, want ErrExpired", err)
			}
		})
	}
}

func TestVerifyErrors(t *testing.T) {
	kr := testKeyring(t, "k1 "+testSecret+"\nk2 "+strings.Repeat("z", 40))
	const exp = 2000000000
	const now = exp - 10
	userTok, _ := kr.Mint("k1", "alice", "", false, time.Unix(exp, 0))
	roomTok, _ := kr.Mint("k1", "alice", "lobby", true, time.Unix(exp, 0))
	k2Tok, _ := kr.Mint("k2", "alice", "", false, time.Unix(exp, 0))
	other := testKeyring(t, "k1 "+strings.Repeat("y", 32))
	forged, _ := other.Mint("k1", "alice", "", false, time.Unix(exp, 0))
	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}
	sig := userTok[strings.LastIndexByte(userTok, '.')+1:]
	cases := []struct {
		name, tok, user, room string
		want                  error
	}{
		{"user token, no room", userTok, "alice", "", nil},
		{"user token, any room", userTok, "alice", "kitchen", nil},
		{"room token, its room", roomTok, "alice", "lobby", nil},
		{"second key verifies", k2Tok, "alice", "", nil},
		{"room token, other room", roomTok, "alice", "kitchen", ErrBadSignature},
		{"room token, no room", roomTok, "alice", "", ErrWrongRoom},
		{"other user", userTok, "bob", "", ErrBadSignature},
		{"forged with other secret", forged, "alice", "", ErrBadSignature},
		{"flipped sig byte", flip(userTok, len(userTok)-5), "alice", "", ErrBadSignature},
		{"exp changed", strings.Replace(userTok, "2000000000", "2000000001", 1), "alice", "", ErrBadSignature},
		{"scope changed", strings.Replace(userTok, ".u.", ".r.", 1), "alice", "x", ErrBadSignature},
		{"unknown key", strings.Replace(userTok, "k1.", "k9.", 1), "alice", "", ErrUnknownKey},
		{"expired", userTok, "alice", "", nil}, // checked below with now=exp
		{"empty", "", "alice", "", ErrMalformed},
		{"no dots", "k1", "alice", "", ErrMalformed},
		{"empty kid", "." + strings.SplitN(userTok, ".", 2)[1], "alice", "", ErrMalformed},
		{"long kid", strings.Repeat("k", 17) + ".2000000000.u." + sig, "alice", "", ErrMalformed},
		{"bad kid char", "k!.2000000000.u." + sig, "alice", "", ErrMalformed},
		{"empty exp", "k1..u." + sig, "alice", "", ErrMalformed},
		{"leading zero exp", "k1.02000000000.u." + sig, "alice", "", ErrMalformed},
		{"zero exp", "k1.0.u." + sig, "alice", "", ErrMalformed},
		{"19 digit exp", "k1.1000000000000000000.u." + sig, "alice", "", ErrMalformed},
		{"signed exp", "k1.-2000000000.u." + sig, "alice", "", ErrMalformed},
		{"bad scope", "k1.2000000000.x." + sig, "alice", "", ErrMalformed},
		{"long scope", "k1.2000000000.uu." + sig, "alice", "", ErrMalformed},
		{"missing sig", "k1.2000000000.u.", "alice", "", ErrMalformed},
		{"short sig", userTok[:len(userTok)-1], "alice", "", ErrMalformed},
		{"long sig", userTok + "A", "alice", "", ErrMalformed},
		{"padded sig", userTok[:len(userTok)-1] + "=", "alice", "", ErrMalformed},
		{"std base64 sig", "k1.2000000000.u." + strings.Repeat("+", 42) + "A", "alice", "", ErrMalformed},
		{"non-canonical last char", userTok[:len(userTok)-1] + "B", "alice", "", ErrMalformed},
		{"trailing dot", userTok + ".", "alice", "", ErrMalformed},
		{"empty user", userTok, "", "", ErrBadID},
		{"long user", userTok, strings.Repeat("a", 129), "", ErrBadID},
		{"newline in user", userTok, "ali\nce", "", ErrBadID},
		{"DEL in room", userTok, "alice", "a\x7f", ErrBadID},
		{"bad UTF-8 room", userTok, "alice", "\xff", ErrBadID},
	}
	for _, c := range cases {
		err := kr.Verify([]byte(c.tok), []byte(c.user), []byte(c.room), now)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: Verify(%q) = %v, want %v", c.name, c.tok, err, c.want)
		}
	}
	if err := kr.Verify([]byte(userTok), []byte("alice"), nil, exp); err != ErrExpired {
		t.Errorf("at exp: %v, want ErrExpired", err)
	}
	if err := kr.Verify([]byte(forged), []byte("alice"), nil, exp+100); err != ErrBadSignature {
		t.Errorf("forged and expired: %v, want ErrBadSignature (signature is checked first)", err)
	}
}

func TestMintErrors(t *testing.T) {
	kr := testKeyring(t, "k1 "+testSecret)
	exp := time.Unix(2000000000, 0)
	check := func(name string, err, want error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	}
	_, err := kr.Mint("k2", "alice", "", false, exp)
	check("unknown kid", err, ErrUnknownKey)
	_, err = kr.Mint("", "", "", false, exp)
	check("empty user", err, ErrBadID)
	_, err = kr.Mint("", "alice", "", true, exp)
	check("bound to empty room", err, ErrBadID)
	_, err = kr.Mint("", "alice", "a\nb", true, exp)
	check("newline room", err, ErrBadID)
	if _, err = kr.Mint("", "alice", "", false, time.Unix(0, 0)); err == nil {
		t.Error("exp 0: no error")
	}
	tok, err := kr.Mint("", "alice", "ignored", false, exp)
	if err != nil || !strings.HasPrefix(tok, "k1.2000000000.u.") {
		t.Errorf("unbound with room = %q, %v; want scope u", tok, err)
	}
	if len(tok) > MaxTokenLen {
		t.Errorf("token %d bytes > MaxTokenLen", len(tok))
	}
}

func TestParseKeyring(t *testing.T) {
	kr := testKeyring(t, "# keys\n\n  new\t"+strings.Repeat("n", 32)+"  \r\nold "+testSecret+" with spaces\n# end")
	if got := strings.Join(kr.KeyIDs(), ","); got != "new,old" {
		t.Errorf("KeyIDs = %s", got)
	}
	if kr.SigningKeyID() != "new" {
		t.Errorf("SigningKeyID = %s", kr.SigningKeyID())
	}
	// The secret is the rest of the line, inner spaces included.
	want := refToken("old", testSecret+" with spaces", "u", "", 5)
	if err := kr.Verify([]byte(want), []byte("u"), nil, 1); err != nil {
		t.Errorf("secret with spaces: %v", err)
	}
	bad := map[string]string{
		"empty":        "",
		"only comment": "# nothing\n",
		"no secret":    "k1\n",
		"short":        "k1 " + strings.Repeat("s", 31),
		"bad kid":      "k.1 " + testSecret,
		"long kid":     strings.Repeat("k", 17) + " " + testSecret,
		"duplicate":    "k1 " + testSecret + "\nk1 " + testSecret,
	}
	for name, text := range bad {
		if _, err := ParseKeyring([]byte(text)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestLoadKeyring(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(path, []byte("k1 "+testSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyring(path); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyring(path + ".missing"); err == nil {
		t.Error("missing file: no error")
	}
}

// TestRotation walks the documented rotation: add the new key second, move it
// first, drop the old one.
func TestRotation(t *testing.T) {
	oldK, newK := "old "+testSecret, "new "+strings.Repeat("N", 32)
	exp := time.Unix(2000000000, 0)
	step1 := testKeyring(t, oldK+"\n"+newK)
	step2 := testKeyring(t, newK+"\n"+oldK)
	step3 := testKeyring(t, newK)
	oldTok, _ := step1.Mint("", "alice", "", false, exp)
	newTok, _ := step2.Mint("", "alice", "", false, exp)
	if !strings.HasPrefix(oldTok, "old.") || !strings.HasPrefix(newTok, "new.") {
		t.Fatalf("signing keys: %s %s", oldTok, newTok)
	}
	for i, kr := range []*Keyring{step1, step2} {
		for _, tok := range []string{oldTok, newTok} {
			if err := kr.Verify([]byte(tok), []byte("alice"), nil, 0); err != nil {
				t.Errorf("step %d: %s: %v", i+1, tok, err)
			}
		}
	}
	if err := step3.Verify([]byte(oldTok), []byte("alice"), nil, 0); err != ErrUnknownKey {
		t.Errorf("step 3, old token: %v", err)
	}
}

func TestVerifyAllocs(t *testing.T) {
	kr := testKeyring(t, "k1 "+testSecret)
	tok, _ := kr.Mint("", "alice", "lobby", true, time.Unix(2000000000, 0))
	bad := []byte(tok[:len(tok)-2] + "AA")
	tb, user, room := []byte(tok), []byte("alice"), []byte("lobby")
	n := testing.AllocsPerRun(100, func() {
		if err := kr.Verify(tb, user, room, 1); err != nil {
			t.Fatal(err)
		}
		_ = kr.Verify(bad, user, room, 1)
		_ = kr.Verify(tb[:5], user, room, 1)
		_ = kr.Verify(tb, user, room, 3000000000)
	})
	if n != 0 {
		t.Errorf("Verify allocates %v times per run, want 0", n)
	}
}

// TestPythonMint runs the Python example from PROTOCOL.md and checks that Go
// verifies its tokens and mints the same text.
func TestPythonMint(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is needed to check the Python minting example: install python3")
	}
	path := filepath.Join(t.TempDir(), "keys")
	keys := "# signing key first\nk-2024_a " + testSecret + " tail\nold " + strings.Repeat("o", 70) + "\n"
	if err := os.WriteFile(path, []byte(keys), 0o600); err != nil {
		t.Fatal(err)
	}
	kr, err := LoadKeyring(path)
	if err != nil {
		t.Fatal(err)
	}
	const exp = 1900000000
	for _, c := range []struct{ user, room string }{{"alice", ""}, {"alice", "lobby"}, {"Zoë 🙂", "café ☕"}} {
		args := []string{"testdata/mint.py", path, c.user}
		if c.room != "" {
			args = append(args, c.room)
		}
		args = append(args, "--exp", strconv.Itoa(exp))
		out, err := exec.Command(py, args...).Output()
		if err != nil {
			t.Fatalf("mint.py %q: %v", args, err)
		}
		got := strings.TrimSpace(string(out))
		if err := kr.Verify([]byte(got), []byte(c.user), []byte(c.room), exp-1); err != nil {
			t.Errorf("%q: Verify: %v", got, err)
		}
		want, _ := kr.Mint("", c.user, c.room, c.room != "", time.Unix(exp, 0))
		if got != want {
			t.Errorf("python %s, go %s", got, want)
		}
		out, err = exec.Command(py, append(args, "--client-key")...).Output()
		lines := strings.Fields(string(out))
		key, kerr := kr.ClientKey([]byte(want))
		if err != nil || kerr != nil || len(lines) != 2 || lines[0] != want || lines[1] != b64.EncodeToString(key[:]) {
			t.Errorf("mint.py --client-key: %q (%v), go key %s (%v)", out, err, b64.EncodeToString(key[:]), kerr)
		}
	}
}

func FuzzVerify(f *testing.F) {
	// Not the vectors' secret: their tokens parse but must not verify.
	kr := testKeyring(f, "k1 "+strings.Repeat("f", 32)+"\nk2 "+strings.Repeat("z", 80))
	for _, v := range loadVectors(f) {
		f.Add(v.Token, v.User, v.Room, v.Exp-1)
	}
	f.Add("", "a", "", int64(0))
	f.Add("k1.1.u.", "a", "", int64(0))
	f.Fuzz(func(t *testing.T, tok, user, room string, now int64) {
		// Random text never panics and never verifies.
		if err := kr.Verify([]byte(tok), []byte(user), []byte(room), now); err == nil {
			// Only possible if the fuzzer forged HMAC-SHA256.
			t.Fatalf("random token %q verified for %q/%q", tok, user, room)
		}
		if !validID([]byte(user), false) || !validID([]byte(room), true) {
			return
		}
		// A minted token verifies for exactly its (user, room).
		bind := room != ""
		minted, err := kr.Mint("k2", user, room, bind, time.Unix(2000000000, 0))
		if err != nil {
			t.Fatal(err)
		}
		if err := kr.Verify([]byte(minted), []byte(user), []byte(room), 0); err != nil {
			t.Fatalf("minted %q does not verify: %v", minted, err)
		}
		if err := kr.Verify([]byte(minted), []byte(user+"x"), []byte(room), 0); err == nil {
			t.Fatalf("minted %q verifies for another user", minted)
		}
		if bind {
			if err := kr.Verify([]byte(minted), []byte(user), []byte(room+"x"), 0); err == nil {
				t.Fatalf("minted %q verifies for another room", minted)
			}
			if err := kr.Verify([]byte(minted), []byte(user), nil, 0); err != ErrWrongRoom {
				t.Fatalf("room-bound %q without room: %v", minted, err)
			}
		}
		if len(tok) > 0 && tok != minted {
			// Any one-byte change to a genuine token breaks it.
			b := []byte(minted)
			i := int(uint(now) % uint(len(b)))
			b[i] ^= tok[0] | 1
			if err := kr.Verify(b, []byte(user), []byte(room), 0); err == nil {
				t.Fatalf("mutated token %q verified", b)
			}
		}
	})
}

func BenchmarkVerify(b *testing.B) {
	kr := testKeyring(b, "k1 "+testSecret)
	tok, _ := kr.Mint("", "user-1234567", "room-42", true, time.Unix(2000000000, 0))
	tb, user, room := []byte(tok), []byte("user-1234567"), []byte("room-42")
	b.ReportAllocs()
	for b.Loop() {
		if err := kr.Verify(tb, user, room, 1); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMint(b *testing.B) {
	kr := testKeyring(b, "k1 "+testSecret)
	exp := time.Unix(2000000000, 0)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := kr.Mint("", "user-1234567", "room-42", true, exp); err != nil {
			b.Fatal(err)
		}
	}
}

// TestProtocolDoc keeps PROTOCOL.md's Python example and worked example in
// step with testdata.
func TestProtocolDoc(t *testing.T) {
	doc, err := os.ReadFile("../../PROTOCOL.md")
	if err != nil {
		t.Fatal("PROTOCOL.md not found:", err)
	}
	py, err := os.ReadFile("testdata/mint.py")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), string(py)) {
		t.Error("PROTOCOL.md does not hold testdata/mint.py verbatim")
	}
	for _, v := range loadVectors(t)[:2] {
		if !strings.Contains(string(doc), v.Token) {
			t.Errorf("PROTOCOL.md lacks vector token %s", v.Token)
		}
	}
}

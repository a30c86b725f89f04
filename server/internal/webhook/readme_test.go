package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// verifyREADME is the Go receiver example of README "Webhooks", verbatim
// (TestReadmeExamples keeps them equal).
func verifyREADME(secret []byte, header string, body []byte, now, tolerance int64) bool {
	var t int64 = -1
	var sigs []string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		if k == "t" {
			t, _ = strconv.ParseInt(v, 10, 64)
		} else if k == "v1" {
			sigs = append(sigs, v)
		}
	}
	if t < 0 || len(sigs) == 0 || now-t > tolerance || t-now > tolerance {
		return false
	}
	m := hmac.New(sha256.New, secret)
	fmt.Fprintf(m, "%d.", t)
	m.Write(body)
	want := hex.EncodeToString(m.Sum(nil))
	for _, s := range sigs {
		if hmac.Equal([]byte(s), []byte(want)) {
			return true
		}
	}
	return false
}

// The README's Go and Python examples are the code the tests run.
func TestReadmeExamples(t *testing.T) {
	readme, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("readme_test.go")
	if err != nil {
		t.Fatal(err)
	}
	s := string(src)
	goFn := s[strings.Index(s, "func verifyREADME(") : strings.Index(s, "\n}\n")+2]
	goFn = strings.Replace(goFn, "verifyREADME", "verify", 1)
	if !strings.Contains(string(readme), goFn) {
		t.Errorf("README's Go example differs from verifyREADME in readme_test.go")
	}
	py, err := os.ReadFile("example/verify.py")
	if err != nil {
		t.Fatal(err)
	}
	p := string(py)
	pyFn := p[strings.Index(p, "def verify("):strings.Index(p, "\n\n\nif __name__")]
	// The README shows the function without its docstring.
	if i := strings.Index(pyFn, `    """`); i >= 0 {
		j := strings.Index(pyFn[i+7:], `"""`) + i + 7 + 4
		pyFn = pyFn[:i] + pyFn[j:]
	}
	if !strings.Contains(string(readme), pyFn) {
		t.Errorf("README's Python example differs from example/verify.py:\n%s", pyFn)
	}

	secret := []byte(testSecret)
	body := []byte(`{"events":[]}`)
	now := time.Now().Unix()
	h := Sign(secret, now, body)
	if !verifyREADME(secret, h, body, now, 300) || verifyREADME(secret, h, []byte(`{}`), now, 300) ||
		verifyREADME([]byte("other"), h, body, now, 300) {
		t.Fatal("README's Go example does not verify as Verify does")
	}
}

package client

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

// TestContentDigestSHA256 round-trips a SHA-256 through the header value,
// finds it among other members, and refuses a sha-256 member that cannot
// be a SHA-256.
func TestContentDigestSHA256(t *testing.T) {
	sum := sha256.Sum256([]byte("hello"))
	want := hex.EncodeToString(sum[:])
	v := ContentDigestSHA256(want)
	if v != "sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:" {
		t.Fatalf("ContentDigestSHA256 = %q", v) // SHA-256("hello") in base64
	}
	for _, h := range []string{v, "sha-512=:" + strings.Repeat("A", 88) + ":, " + v, " SHA-256 = :LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=: ;x=1"} {
		got, err := ParseContentDigestSHA256(h)
		if err != nil || got != want {
			t.Errorf("ParseContentDigestSHA256(%q) = %q, %v; want %q", h, got, err, want)
		}
	}
	for _, h := range []string{"", "sha-512=:AAAA:", "unixsum=:AAAA:"} {
		if got, err := ParseContentDigestSHA256(h); got != "" || err != nil {
			t.Errorf("ParseContentDigestSHA256(%q) = %q, %v; want no digest", h, got, err)
		}
	}
	for _, h := range []string{"sha-256=:AAAA:", "sha-256=" + want, "sha-256=:not base64!:", "sha-256=:"} {
		if got, err := ParseContentDigestSHA256(h); err == nil {
			t.Errorf("ParseContentDigestSHA256(%q) = %q, want an error", h, got)
		}
	}
	if ContentDigestSHA256("") != "" || ContentDigestSHA256("abc") != "" {
		t.Error("ContentDigestSHA256 of a non-digest is not empty")
	}
}

// FuzzParseContentDigest: any header value parses without panicking, and a
// digest it returns is a SHA-256 in hex that the formatter writes back to
// a value parsing to the same digest.
func FuzzParseContentDigest(f *testing.F) {
	for _, s := range []string{"sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:", "sha-512=:AAAA:, sha-256=:AAAA:", "sha-256", "=,=:;", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		got, err := ParseContentDigestSHA256(v)
		if err != nil || got == "" {
			return
		}
		if b, herr := hex.DecodeString(got); herr != nil || len(b) != 32 {
			t.Fatalf("ParseContentDigestSHA256(%q) = %q, not a SHA-256 in hex", v, got)
		}
		if again, err := ParseContentDigestSHA256(ContentDigestSHA256(got)); err != nil || again != got {
			t.Fatalf("round trip of %q: %q, %v", got, again, err)
		}
	})
}

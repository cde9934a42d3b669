package client

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkStore sends one STOW-RS request of 16 instances of 4 MiB to a
// loopback receiver that discards the body: the client's own cost per
// byte (framing, pipe, buffering), without a server's.
func BenchmarkStore(b *testing.B) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	defer ts.Close()
	insts := make([]Instance, 16)
	for i := range insts {
		insts[i] = pattern{n: 4 << 20, seed: byte(i)}
	}
	c := &Client{DICOMweb: ts.URL}
	b.SetBytes(16 * 4 << 20)
	for b.Loop() {
		resp, err := c.Store(b.Context(), "", insts, nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatal(resp, err)
		}
	}
}

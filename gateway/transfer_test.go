package gateway_test

import (
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
)

func TestPeerValidate(t *testing.T) {
	ok := gateway.Peer{Name: "surrey", URL: "https://surrey.example.nhs.uk/dicomweb"}
	for _, tt := range []struct {
		name string
		edit func(p *gateway.Peer)
		ok   bool
	}{
		{"plain", func(*gateway.Peer) {}, true},
		{"no name", func(p *gateway.Peer) { p.Name = "" }, false},
		{"name with slash", func(p *gateway.Peer) { p.Name = "a/b" }, false},
		{"ftp url", func(p *gateway.Peer) { p.URL = "ftp://x/dicomweb" }, false},
		{"token", func(p *gateway.Peer) { p.Token = "t" }, true},
		{"basic", func(p *gateway.Peer) { p.Username, p.Password = "u", "p" }, true},
		{"token and basic", func(p *gateway.Peer) { p.Token, p.Username, p.Password = "t", "u", "p" }, false},
		{"user without password", func(p *gateway.Peer) { p.Username = "u" }, false},
		{"cert without key", func(p *gateway.Peer) { p.TLS.CertFile = "c.pem" }, false},
		{"mtls", func(p *gateway.Peer) { p.TLS.CertFile, p.TLS.KeyFile = "c.pem", "k.pem" }, true},
		{"negative parallel", func(p *gateway.Peer) { p.MaxParallel = -1 }, false},
		{"bad admin url", func(p *gateway.Peer) { p.AdminURL = "surrey" }, false},
	} {
		p := ok
		tt.edit(&p)
		if err := p.Validate(); (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

// TestBackoff: exponential from Base, capped at Max, jittered within
// [d/2, d], never below the peer's Retry-After.
func TestBackoff(t *testing.T) {
	p := gateway.RetryPolicy{Base: time.Second, Max: 30 * time.Second}
	for _, tt := range []struct {
		attempt    int
		retryAfter time.Duration
		rnd        float64
		want       time.Duration
	}{
		{1, 0, 0, 500 * time.Millisecond},
		{1, 0, 1, time.Second},
		{2, 0, 1, 2 * time.Second},
		{4, 0, 0.5, 6 * time.Second},
		{10, 0, 1, 30 * time.Second},
		{10, 0, 0, 15 * time.Second},
		{1, 20 * time.Second, 0, 20 * time.Second},
		{1, 48 * time.Hour, 0, time.Hour},
	} {
		if got := p.Backoff(tt.attempt, tt.retryAfter, func() float64 { return tt.rnd }); got != tt.want {
			t.Errorf("Backoff(%d, %v, rnd %v) = %v, want %v", tt.attempt, tt.retryAfter, tt.rnd, got, tt.want)
		}
	}
}

func TestValidateTransferID(t *testing.T) {
	for _, tt := range []struct {
		id string
		ok bool
	}{
		{"tr-0123abcd", true}, {"hampshire_2026.1", true}, {"", false}, {"a/b", false}, {"a b", false}, {"x\n", false},
		{string(make([]byte, 65)), false},
	} {
		if err := gateway.ValidateTransferID(tt.id); (err == nil) != tt.ok {
			t.Errorf("ValidateTransferID(%q) = %v, want ok=%v", tt.id, err, tt.ok)
		}
	}
}

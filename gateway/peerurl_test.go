package gateway_test

import (
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
)

// TestPeerURLRules checks the peer URL rules of issue 16: no credentials in
// a URL (and the error never shows the password), plain http only to
// loopback unless allow_insecure, and Insecure naming what is insecure.
func TestPeerURLRules(t *testing.T) {
	for _, tt := range []struct {
		name         string
		peer         gateway.Peer
		wantErr      string // "" = valid
		wantInsecure string // substring of Insecure(), "" = none
	}{
		{"https", gateway.Peer{URL: "https://surrey.example/dicomweb"}, "", ""},
		{"http loopback v4", gateway.Peer{URL: "http://127.0.0.1:8081/dicomweb"}, "", ""},
		{"http loopback v6", gateway.Peer{URL: "http://[::1]:8081/dicomweb"}, "", ""},
		{"http localhost", gateway.Peer{URL: "http://localhost:8081/dicomweb"}, "", ""},
		{"http remote", gateway.Peer{URL: "http://surrey:8080/dicomweb"}, "plain http", "plain http"},
		{"http remote allowed", gateway.Peer{URL: "http://surrey:8080/dicomweb", AllowInsecure: true}, "", "plain http to surrey:8080"},
		{"password in url", gateway.Peer{URL: "https://pacs:hunter2@surrey.example/dicomweb"}, "carries credentials", ""},
		{"username in url", gateway.Peer{URL: "https://pacs@surrey.example/dicomweb"}, "carries credentials", ""},
		{"password in admin_url", gateway.Peer{URL: "https://s.example/dicomweb", AdminURL: "https://a:hunter2@s.example/api/v1"}, "admin_url", ""},
		{"http admin_url remote", gateway.Peer{URL: "https://s.example/dicomweb", AdminURL: "http://s.example/api/v1"}, "plain http", "plain http to s.example"},
		{"skip verify", gateway.Peer{URL: "https://s.example/dicomweb", TLS: gateway.PeerTLS{InsecureSkipVerify: true}}, "", "insecure_skip_verify"},
		{"not http", gateway.Peer{URL: "ftp://pacs:hunter2@s.example/"}, "not an http(s) URL", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.peer.Name = "surrey"
			err := tt.peer.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Validate = %v, want an error mentioning %q", err, tt.wantErr)
			case err != nil && strings.Contains(err.Error(), "hunter2"):
				t.Errorf("Validate error shows the password: %v", err)
			}
			got := tt.peer.Insecure()
			if (tt.wantInsecure == "") != (got == "") || !strings.Contains(got, tt.wantInsecure) {
				t.Errorf("Insecure() = %q, want %q", got, tt.wantInsecure)
			}
		})
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://pacs:hunter2@h/dicomweb": "https://pacs:xxxxx@h/dicomweb",
		"https://h/dicomweb":              "https://h/dicomweb",
		"https://pacs:hunter2@h:bad/":     "(unparseable URL)",
	} {
		if got := gateway.RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

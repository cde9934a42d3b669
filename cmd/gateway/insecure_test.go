package main

import (
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/syncbuf"
)

// TestServeWarnsAboutInsecurePeers checks that a peer reached over plain
// http (allowed explicitly) or without certificate verification is named in
// a warning at start-up, and a loopback http peer is not.
func TestServeWarnsAboutInsecurePeers(t *testing.T) {
	cfg := testConfig(t)
	cfg.File.Peers = []gateway.Peer{
		{Name: "surrey", URL: "http://surrey:8080/dicomweb", AllowInsecure: true},
		{Name: "lab", URL: "https://lab.example/dicomweb", TLS: gateway.PeerTLS{InsecureSkipVerify: true}},
		{Name: "local", URL: "http://127.0.0.1:8081/dicomweb"},
	}
	var logs syncbuf.Buffer
	MustRunMain(t, cfg, &logs)
	warned := map[string]bool{}
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "INSECURE PEER") && strings.Contains(line, `"level":"WARN"`) {
			for _, name := range []string{"surrey", "lab", "local"} {
				if strings.Contains(line, `"peer":"`+name+`"`) {
					warned[name] = true
				}
			}
		}
	}
	if !warned["surrey"] || !warned["lab"] || warned["local"] {
		t.Errorf("insecure peer warnings for %v, want surrey and lab only; logs:\n%s", warned, logs.String())
	}
}

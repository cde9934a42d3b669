package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/syncbuf"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// TestS3ConditionalWritesProbedAtStart: a gateway started on an S3 server
// that stores a PUT with If-None-Match: * over an existing object (here a
// proxy in front of MinIO answers such a PUT as stored; MinIO itself
// honours the header) warns at start-up that acknowledged instances are
// not protected from being overwritten.
func TestS3ConditionalWritesProbedAtStart(t *testing.T) {
	s := storagetest.MinIO(t)
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: s.Endpoint})
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.Header.Get("If-None-Match") != "" {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("ETag", `"0123456789abcdef0123456789abcdef"`)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	cfg := testConfig(t)
	cfg.S3Endpoint, cfg.S3AccessKey, cfg.S3SecretKey = strings.TrimPrefix(front.URL, "http://"), s.AccessKey, gateway.Secret(s.SecretKey)
	cfg.S3Bucket = s.Bucket(t)
	var logs syncbuf.Buffer
	MustRunMain(t, cfg, &logs)
	deadline := time.Now().Add(15 * time.Second) // the probe runs in the background
	for !strings.Contains(logs.String(), "S3 SERVER IGNORES CONDITIONAL WRITES") {
		if time.Now().After(deadline) {
			t.Fatalf("no warning after start-up about the ignored If-None-Match:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

package dicomweb_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/gateway"
)

// TestParseTrustedProxies: addresses and CIDRs, IPv4-mapped forms as the
// IPv4 ones (a peer is compared unmapped), masked; zones, names and mapped
// ranges wider than the IPv4 space are refused by name. gin, given the
// parsed list, believes X-Forwarded-For from exactly the peers the list
// names, so the audit address and the public URLs judge a peer alike.
func TestParseTrustedProxies(t *testing.T) {
	got, err := dicomweb.ParseTrustedProxies([]string{"10.0.0.5", "10.1.2.3/8", "::ffff:192.0.2.7", "::ffff:198.51.100.0/120", "2001:db8::/32"})
	if err != nil {
		t.Fatal(err)
	}
	var strs []string
	for _, p := range got {
		strs = append(strs, p.String())
	}
	if want := []string{"10.0.0.5/32", "10.0.0.0/8", "192.0.2.7/32", "198.51.100.0/24", "2001:db8::/32"}; !slices.Equal(strs, want) {
		t.Errorf("parsed %v, want %v", strs, want)
	}
	for _, bad := range []string{"proxy.internal", "fe80::1%eth0", "::ffff:0.0.0.0/80", "10.0.0.0/33"} {
		if _, err := dicomweb.ParseTrustedProxies([]string{"10.0.0.5", bad}); !errors.Is(err, gateway.ErrInvalid) {
			t.Errorf("%q: err %v, want ErrInvalid", bad, err)
		}
	}

	for _, tc := range []struct {
		entries []string
		client  string // what gin says the client is
	}{
		{[]string{"::ffff:127.0.0.1"}, "203.0.113.9"},
		{[]string{"::ffff:127.0.0.0/104"}, "203.0.113.9"},
		{[]string{"10.0.0.5"}, "127.0.0.1"},
	} {
		parsed, err := dicomweb.ParseTrustedProxies(tc.entries)
		if err != nil {
			t.Fatal(err)
		}
		var strs []string
		for _, p := range parsed {
			strs = append(strs, p.String())
		}
		r := gin.New()
		if err := r.SetTrustedProxies(strs); err != nil {
			t.Fatalf("%v: gin refused the parsed list %v: %v", tc.entries, strs, err)
		}
		r.GET("/", func(c *gin.Context) { c.String(http.StatusOK, c.ClientIP()) })
		srv := httptest.NewServer(r)
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL, nil)
		req.Header.Set("X-Forwarded-For", "203.0.113.9")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readBody(t, resp)
		srv.Close()
		if string(body) != tc.client {
			t.Errorf("trusted_proxies %v: gin says the client is %s, want %s", tc.entries, body, tc.client)
		}
	}
}

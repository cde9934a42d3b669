package dicomweb

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
)

// downPinger is a backend that does not answer, with an error text that
// must not reach anonymous callers.
type downPinger struct{}

const downPingerText = "dial tcp 10.1.2.3:6379: connect: connection refused (redis-internal.example)"

func (downPinger) Ping(context.Context) error { return errors.New(downPingerText) }

type upPinger struct{}

func (upPinger) Ping(context.Context) error { return nil }

// TestReadyzHidesBackendErrors checks that /readyz tells an anonymous
// caller only "not ready" and the failing component's name, while the
// error text goes to the log and to admins (issue 16).
func TestReadyzHidesBackendErrors(t *testing.T) {
	cfg, tokens := tokenPerRole(t)
	auth, err := NewAuthenticator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := newAuthTestServer(t, wiring{cfg: Config{Auth: auth, Ready: map[string]gateway.Pinger{"redis": downPinger{}, "s3": upPinger{}}}})

	for _, tt := range []struct {
		name, authorization string
		wantStatus          int
		wantErrorText       bool
	}{
		{"anonymous", "", http.StatusServiceUnavailable, false},
		{"role read", "Bearer " + tokens[gateway.RoleRead], http.StatusServiceUnavailable, false},
		{"admin", "Bearer " + tokens[gateway.RoleAdmin], http.StatusServiceUnavailable, true},
		{"bad token", "Bearer nope", http.StatusUnauthorized, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, _, body := ts.do(t, http.MethodGet, "/readyz", tt.authorization)
			if code != tt.wantStatus {
				t.Fatalf("/readyz = %d %s, want %d", code, body, tt.wantStatus)
			}
			if got := strings.Contains(body, "connection refused"); got != tt.wantErrorText {
				t.Errorf("/readyz body shows the backend error: %v, want %v: %s", got, tt.wantErrorText, body)
			}
			if code != http.StatusServiceUnavailable {
				return
			}
			var ans struct {
				Status  string            `json:"status"`
				Failing map[string]string `json:"failing"`
			}
			if err := json.Unmarshal([]byte(body), &ans); err != nil {
				t.Fatal(err)
			}
			if _, ok := ans.Failing["redis"]; ans.Status != "not ready" || !ok || len(ans.Failing) != 1 {
				t.Errorf("/readyz = %s, want not ready naming redis only", body)
			}
		})
	}
	if !strings.Contains(ts.logs.String(), downPingerText) {
		t.Errorf("the backend error is not in the log:\n%s", ts.logs.String())
	}

	local := newAuthTestServer(t, wiring{cfg: Config{Ready: map[string]gateway.Pinger{"redis": downPinger{}}}})
	if code, _, body := local.do(t, http.MethodGet, "/readyz", ""); code != http.StatusServiceUnavailable || !strings.Contains(body, "connection refused") {
		t.Errorf("/readyz without auth (loopback, local admin) = %d %s, want the error text", code, body)
	}
}

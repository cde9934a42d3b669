package dicomweb

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// sha256Server is an embedded server holding one synthetic study; auditor
// replaces the recorder when not nil.
func sha256Server(t *testing.T, auditor gateway.Auditor) (*authTestServer, []synth.Instance) {
	t.Helper()
	s := embeddedServer(t, nil)
	ins := synth.Study(synth.StudySpec{Seed: 1616, Series: 1, InstancesPerSeries: 2})
	for _, in := range ins {
		var buf bytes.Buffer
		if _, err := in.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Ingester.Store(t.Context(), &buf, gateway.StoreOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ts := newAuthTestServer(t, s)
	if auditor != nil {
		s.Auditor = auditor
	}
	return ts, ins
}

// TestSHA256EndpointsAudited checks that the SHA-256 endpoints are audited
// like reads (who asked about which study and patient), and refused with
// 503, answering no hash, when the audit log cannot take the event.
func TestSHA256EndpointsAudited(t *testing.T) {
	ts, ins := sha256Server(t, nil)
	study, sop := ins[0].StudyInstanceUID, ins[0].SOPInstanceUID
	for _, path := range []string{
		"/api/v1/studies/" + study + "/sha256",
		"/api/v1/studies/" + study + "/sha256?recompute=true",
		"/api/v1/instances/" + sop + "/sha256",
		"/api/v1/instances/" + sop + "/sha256?recompute=true",
	} {
		before := len(ts.audit.all())
		if code, _, body := ts.do(t, http.MethodGet, path, ""); code != http.StatusOK {
			t.Fatalf("GET %s = %d %s", path, code, body)
		}
		evs := ts.audit.all()[before:]
		if len(evs) != 1 {
			t.Fatalf("GET %s wrote %d audit events, want 1", path, len(evs))
		}
		ev := evs[0]
		if ev.Action != gateway.ActionRetrieve || !slices.Equal(ev.StudyUIDs, []string{study}) || len(ev.PatientIDs) == 0 || ev.Actor.Name == "" {
			t.Errorf("GET %s audited as %+v, want a retrieve of study %s naming its patient and actor", path, ev, study)
		}
	}

	down, _ := sha256Server(t, auditDown{})
	for _, path := range []string{"/api/v1/studies/" + study + "/sha256", "/api/v1/instances/" + sop + "/sha256?recompute=true"} {
		code, _, body := down.do(t, http.MethodGet, path, "")
		if code != http.StatusServiceUnavailable || strings.Contains(body, `"sha256"`) {
			t.Errorf("GET %s with the audit log down = %d %s, want 503 without a hash", path, code, body)
		}
	}
}

// auditDown is an audit log that takes nothing: a fault a real log cannot
// produce on demand.
type auditDown struct{}

func (auditDown) Record(context.Context, *gateway.AuditEvent) error {
	return errors.New("audit log unavailable")
}

// TestSHA256RecomputeBounded checks that ?recompute=true runs once per
// study at a time and at most maxConcurrentRecompute times overall: beyond,
// 429 with Retry-After; the index form is not bounded.
func TestSHA256RecomputeBounded(t *testing.T) {
	ts, ins := sha256Server(t, nil)
	study, sop := ins[0].StudyInstanceUID, ins[0].SOPInstanceUID
	gate := ts.s.recompute

	release, err := gate.enter(study)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/api/v1/studies/" + study + "/sha256?recompute=true", "/api/v1/instances/" + sop + "/sha256?recompute=true"} {
		code, hdr, _ := ts.do(t, http.MethodGet, path, "")
		if code != http.StatusTooManyRequests || hdr.Get("Retry-After") == "" {
			t.Errorf("GET %s while the study is being recomputed = %d (Retry-After %q), want 429 with Retry-After", path, code, hdr.Get("Retry-After"))
		}
	}
	if code, _, _ := ts.do(t, http.MethodGet, "/api/v1/studies/"+study+"/sha256", ""); code != http.StatusOK {
		t.Errorf("index SHA-256 while the study is being recomputed = %d, want 200", code)
	}
	release()

	var others []func()
	for i := range maxConcurrentRecompute {
		r, err := gate.enter("1.2.3." + string(rune('1'+i)))
		if err != nil {
			t.Fatalf("recompute %d of other studies: %v", i, err)
		}
		others = append(others, r)
	}
	if code, _, _ := ts.do(t, http.MethodGet, "/api/v1/studies/"+study+"/sha256?recompute=true", ""); code != http.StatusTooManyRequests {
		t.Errorf("recompute with %d others running = %d, want 429", maxConcurrentRecompute, code)
	}
	for _, r := range others {
		r()
	}
	if code, _, body := ts.do(t, http.MethodGet, "/api/v1/studies/"+study+"/sha256?recompute=true", ""); code != http.StatusOK || !strings.Contains(body, `"storage"`) {
		t.Errorf("recompute after the others finished = %d %s, want 200 from storage", code, body)
	}
	if _, err := gate.enter(study); err != nil {
		t.Errorf("the study's recompute slot was not released: %v", err)
	}
}

package dicomweb

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// sha256Server is an embedded server holding one synthetic study and
// others studies of one instance each; auditor replaces the recorder when
// not nil. Its blob reads can be held (heldBlobs).
func sha256Server(t *testing.T, auditor gateway.Auditor, others int) (*authTestServer, []synth.Instance, []string, *heldBlobs) {
	t.Helper()
	w := embeddedServer(t, nil)
	held := &heldBlobs{BlobStore: w.deps.Blobs, started: make(chan struct{}, 16), release: make(chan struct{})}
	w.deps.Blobs = held
	w.deps.Ingester.Blobs = held
	store := func(ins []synth.Instance) {
		for _, in := range ins {
			var buf bytes.Buffer
			if _, err := in.WriteTo(&buf); err != nil {
				t.Fatal(err)
			}
			if _, err := w.deps.Ingester.Store(t.Context(), &buf, gateway.StoreOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	ins := synth.Study(synth.StudySpec{Seed: 1616, Series: 1, InstancesPerSeries: 2})
	store(ins)
	var studies []string
	for i := range others {
		other := synth.Study(synth.StudySpec{Seed: 1700 + uint64(i), Series: 1, InstancesPerSeries: 1})
		store(other)
		studies = append(studies, other[0].StudyInstanceUID)
	}
	if auditor != nil {
		w.deps.Auditor = auditor
	}
	return newAuthTestServer(t, w), ins, studies, held
}

// heldBlobs holds every Get while hold is set, until the test sends on
// release, and says on started that one is held: a recompute still reading
// storage, which a real store cannot be made to be on demand.
type heldBlobs struct {
	gateway.BlobStore
	hold             atomic.Bool
	started, release chan struct{}
}

func (h *heldBlobs) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if h.hold.Load() {
		h.started <- struct{}{}
		<-h.release
	}
	return h.BlobStore.Get(ctx, key, offset, length)
}

// TestSHA256EndpointsAudited checks that the SHA-256 endpoints are audited
// like reads (who asked about which study and patient), and refused with
// 503, answering no hash, when the audit log cannot take the event.
func TestSHA256EndpointsAudited(t *testing.T) {
	ts, ins, _, _ := sha256Server(t, nil, 0)
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

	down, _, _, _ := sha256Server(t, auditDown{}, 0)
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
// study at a time and at most 4 times overall (recomputes held reading
// storage): beyond, 429 with Retry-After; the index form is not bounded.
func TestSHA256RecomputeBounded(t *testing.T) {
	const maxConcurrentRecompute = 4 // gateway's bound
	ts, ins, others, held := sha256Server(t, nil, maxConcurrentRecompute)
	study, sop := ins[0].StudyInstanceUID, ins[0].SOPInstanceUID
	// recompute starts a recompute of study that is held reading storage
	// until the test lets it go; the returned channel gives its status.
	recompute := func(study string) chan int {
		done := make(chan int, 1)
		go func() {
			code, _, _ := ts.do(t, http.MethodGet, "/api/v1/studies/"+study+"/sha256?recompute=true", "")
			done <- code
		}()
		<-held.started
		return done
	}
	letGo := func(n int) {
		held.hold.Store(false)
		for range n {
			held.release <- struct{}{}
		}
	}

	held.hold.Store(true)
	running := recompute(study)
	for _, path := range []string{"/api/v1/studies/" + study + "/sha256?recompute=true", "/api/v1/instances/" + sop + "/sha256?recompute=true"} {
		code, hdr, _ := ts.do(t, http.MethodGet, path, "")
		if code != http.StatusTooManyRequests || hdr.Get("Retry-After") == "" {
			t.Errorf("GET %s while the study is being recomputed = %d (Retry-After %q), want 429 with Retry-After", path, code, hdr.Get("Retry-After"))
		}
	}
	if code, _, _ := ts.do(t, http.MethodGet, "/api/v1/studies/"+study+"/sha256", ""); code != http.StatusOK {
		t.Errorf("index SHA-256 while the study is being recomputed = %d, want 200", code)
	}
	letGo(1)
	if code := <-running; code != http.StatusOK {
		t.Fatalf("the held recompute = %d, want 200", code)
	}

	held.hold.Store(true)
	var all []chan int
	for _, other := range others {
		all = append(all, recompute(other))
	}
	if code, _, _ := ts.do(t, http.MethodGet, "/api/v1/studies/"+study+"/sha256?recompute=true", ""); code != http.StatusTooManyRequests {
		t.Errorf("recompute with %d others running = %d, want 429", maxConcurrentRecompute, code)
	}
	letGo(len(others))
	for i, done := range all {
		if code := <-done; code != http.StatusOK {
			t.Errorf("recompute of other study %d = %d, want 200", i, code)
		}
	}
	if code, _, body := ts.do(t, http.MethodGet, "/api/v1/studies/"+study+"/sha256?recompute=true", ""); code != http.StatusOK || !strings.Contains(body, `"storage"`) {
		t.Errorf("recompute after the others finished = %d %s, want 200 from storage", code, body)
	}
	if code, _, _ := ts.do(t, http.MethodGet, "/api/v1/studies/"+study+"/sha256?recompute=true", ""); code != http.StatusOK {
		t.Errorf("the study's recompute slot was not released: %d", code)
	}
}

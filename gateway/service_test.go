package gateway_test

import (
	"context"
	"errors"
	"maps"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// eventLog records audit events, or refuses them while down: the one fault
// a real audit log cannot produce on demand.
type eventLog struct {
	mu     sync.Mutex
	events []gateway.AuditEvent
	down   bool
}

func (l *eventLog) Record(_ context.Context, ev *gateway.AuditEvent) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.down {
		return errors.New("audit log down")
	}
	l.events = append(l.events, *ev)
	return nil
}

func (l *eventLog) last(t *testing.T) gateway.AuditEvent {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.events) == 0 {
		t.Fatal("no audit event recorded")
	}
	return l.events[len(l.events)-1]
}

// servicesOn builds the services on the embedded backends, as a front end
// other than DICOMweb gets them, with a clock stopped at now.
func servicesOn(t *testing.T, now time.Time) (*gateway.Services, *eventLog) {
	t.Helper()
	b := backendtest.Open(t, backendtest.Embedded, backendtest.Options{})
	log := &eventLog{}
	return gateway.NewServices(gateway.ServiceDeps{
		Name: "hampshire", Blobs: b.Blobs, Index: b.Index, Auditor: log, AuditLog: b.AuditLog,
		Ingester: &gateway.Ingester{Blobs: b.Blobs, Index: b.Index, Auditor: log},
		Now:      func() time.Time { return now },
	}), log
}

// TestStoreServiceWithoutHTTP stores a study the way a DIMSE listener
// would (one instance per call, the calling AE title as the actor): the
// instances are stored, a non-DICOM one is refused with 0xC000, and the
// request is audited with the caller's principal and route and the
// injected clock's time.
func TestStoreServiceWithoutHTTP(t *testing.T) {
	now := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	svc, log := servicesOn(t, now)
	caller := gateway.Caller{Principal: gateway.Principal{Name: "PACS1", Method: "dimse"}, Route: "DIMSE C-STORE"}
	ins := synth.Study(synth.StudySpec{Seed: 2020, Series: 1, InstancesPerSeries: 3})

	batch, err := svc.Store.Begin(t.Context(), gateway.StoreRequest{Caller: caller})
	if err != nil {
		t.Fatal(err)
	}
	for i, in := range ins {
		if err := batch.Add(i+1, in.Reader()); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Add(len(ins)+1, strings.NewReader(strings.Repeat("not DICOM ", 40))); err != nil {
		t.Fatal(err)
	}
	res := batch.Wait()
	if res.Err != nil || len(res.Stored) != len(ins) || len(res.Failed) != 1 || res.Failed[0].Reason != gateway.ReasonCannotUnderstand {
		t.Fatalf("result: err %v, %d stored, failed %+v; want %d stored and one 0xC000", res.Err, len(res.Stored), res.Failed, len(ins))
	}
	if err := batch.Close(res, 202, nil); err != nil {
		t.Fatal(err)
	}
	ev := log.last(t)
	if ev.Action != gateway.ActionStore || ev.Outcome != gateway.OutcomeFailure || ev.Actor.Name != "PACS1" ||
		!ev.Time.Equal(now) || ev.Gateway != "hampshire" || ev.Detail["route"] != "DIMSE C-STORE" ||
		ev.Detail["stored"] != len(ins) || ev.Detail["failed"] != 1 ||
		!slices.Equal(ev.StudyUIDs, []string{ins[0].StudyInstanceUID}) || !slices.Equal(ev.PatientIDs, []string{ins[0].PatientID}) {
		t.Errorf("audit event %+v", ev)
	}
	for _, in := range ins {
		if _, err := svc.Retrieve.Instance(t.Context(), in.StudyInstanceUID, in.SeriesInstanceUID, in.SOPInstanceUID); err != nil {
			t.Errorf("instance %s not retrievable after the store: %v", in.SOPInstanceUID, err)
		}
	}

	log.down = true
	batch, err = svc.Store.Begin(t.Context(), gateway.StoreRequest{Caller: caller})
	if err != nil {
		t.Fatal(err)
	}
	if err := batch.Close(batch.Wait(), 200, nil); err == nil {
		t.Error("Close with the audit log down succeeded, want an error (fail closed)")
	}
}

// TestStoreServiceWithoutIngester: a gateway without storage refuses to
// begin a store as unavailable.
func TestStoreServiceWithoutIngester(t *testing.T) {
	svc := gateway.NewServices(gateway.ServiceDeps{})
	if _, err := svc.Store.Begin(t.Context(), gateway.StoreRequest{}); !errors.Is(err, gateway.ErrUnavailable) {
		t.Errorf("Begin without an Ingester: %v, want ErrUnavailable", err)
	}
}

// TestQueryServiceAudits searches the way a FHIR facade would: the search
// is audited with the caller, the sorted parameter names (never their
// values), the result's studies and patients and the injected time; with
// the audit log down it returns no result and ErrUnavailable.
func TestQueryServiceAudits(t *testing.T) {
	now := time.Date(2026, 5, 2, 11, 0, 0, 0, time.UTC)
	svc, log := servicesOn(t, now)
	ins := synth.Study(synth.StudySpec{Seed: 2021, Series: 1, InstancesPerSeries: 1})
	batch, err := svc.Store.Begin(t.Context(), gateway.StoreRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if err := batch.Add(1, ins[0].Reader()); err != nil {
		t.Fatal(err)
	}
	if res := batch.Wait(); len(res.Stored) != 1 {
		t.Fatalf("stored %d, want 1", len(res.Stored))
	}
	params := url.Values{"PatientID": {ins[0].PatientID}, "ModalitiesInStudy": {""}}
	q, err := gateway.ParseQuery(gateway.LevelStudy, "", "", params, gateway.QueryLimits{Default: 10, Max: 10})
	if err != nil {
		t.Fatal(err)
	}
	caller := gateway.Caller{Principal: gateway.Principal{Name: "viewer"}, Route: "/fhir/ImagingStudy"}
	res, err := svc.Query.Search(t.Context(), caller, q, []string{"PatientID", "ModalitiesInStudy"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Items) != 1 {
		t.Fatalf("%d results, want 1", len(res.Items))
	}
	ev := log.last(t)
	keys, _ := ev.Detail["keys"].([]string)
	if ev.Action != gateway.ActionQuery || ev.Actor.Name != "viewer" || !ev.Time.Equal(now) || ev.Detail["route"] != "/fhir/ImagingStudy" ||
		!slices.Equal(keys, []string{"ModalitiesInStudy", "PatientID"}) || !slices.Equal(ev.PatientIDs, []string{ins[0].PatientID}) {
		t.Errorf("audit event %+v", ev)
	}
	log.down = true
	if res, err := svc.Query.Search(t.Context(), caller, q, nil); !errors.Is(err, gateway.ErrUnavailable) || res != nil {
		t.Errorf("search with the audit log down = %v, %v; want no result and ErrUnavailable", res, err)
	}
}

// TestVerifyServiceRecompute: the SHA-256 from the index and recomputed
// from storage agree, each read is audited as a retrieve of the study, and
// an unknown instance is ErrNotFound.
func TestVerifyServiceRecompute(t *testing.T) {
	svc, log := servicesOn(t, time.Now())
	ins := synth.Study(synth.StudySpec{Seed: 2022, Series: 1, InstancesPerSeries: 2})
	batch, err := svc.Store.Begin(t.Context(), gateway.StoreRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for i, in := range ins {
		if err := batch.Add(i+1, in.Reader()); err != nil {
			t.Fatal(err)
		}
	}
	batch.Wait()
	caller := gateway.Caller{Principal: gateway.Principal{Name: "surrey"}}
	indexed, err := svc.Verify.StudySHA256(t.Context(), caller, ins[0].StudyInstanceUID, false)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := svc.Verify.StudySHA256(t.Context(), caller, ins[0].StudyInstanceUID, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(indexed) != len(ins) || len(stored) != len(ins) {
		t.Fatalf("%d indexed and %d recomputed sums, want %d", len(indexed), len(stored), len(ins))
	}
	for sop, sum := range indexed {
		if stored[sop] != sum || len(sum) != 64 {
			t.Errorf("%s: index %s, storage %s", sop, sum, stored[sop])
		}
	}
	if ev := log.last(t); ev.Action != gateway.ActionRetrieve || ev.Detail["sha256_source"] != "storage" || ev.Actor.Name != "surrey" {
		t.Errorf("audit event %+v", ev)
	}
	if _, err := svc.Verify.InstanceSHA256(t.Context(), caller, "1.2.3.4.5", false); !errors.Is(err, gateway.ErrNotFound) {
		t.Errorf("unknown instance: %v, want ErrNotFound", err)
	}
}

// TestStoreStagesObserved: each instance stored reports how long it took to
// receive, to make durable and to index, and each request its audit record;
// an instance already stored with the same bytes is received and answered
// without being written or indexed again.
func TestStoreStagesObserved(t *testing.T) {
	b := backendtest.Open(t, backendtest.Embedded, backendtest.Options{})
	var mu sync.Mutex
	seen := map[gateway.StoreStage]int{}
	in := &gateway.Ingester{Blobs: b.Blobs, Index: b.Index, ObserveStage: func(s gateway.StoreStage, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if d < 0 {
			t.Errorf("stage %s took %v", s, d)
		}
		seen[s]++
	}}
	svc := gateway.NewServices(gateway.ServiceDeps{Name: "hampshire", Blobs: b.Blobs, Index: b.Index, Auditor: &eventLog{}, Ingester: in})
	ins := synth.Study(synth.StudySpec{Seed: 2021, Series: 1, InstancesPerSeries: 3})
	store := func() {
		t.Helper()
		batch, err := svc.Store.Begin(t.Context(), gateway.StoreRequest{Caller: gateway.Caller{Route: "test"}})
		if err != nil {
			t.Fatal(err)
		}
		for i, x := range ins {
			if err := batch.Add(i+1, x.Reader()); err != nil {
				t.Fatal(err)
			}
		}
		res := batch.Wait()
		if len(res.Stored) != len(ins) {
			t.Fatalf("%d of %d stored: %+v", len(res.Stored), len(ins), res.Failed)
		}
		if err := batch.Close(res, 200, nil); err != nil {
			t.Fatal(err)
		}
	}
	store()
	want := map[gateway.StoreStage]int{gateway.StageReceive: 3, gateway.StageDurable: 3, gateway.StageIndex: 3, gateway.StageAudit: 1}
	if !maps.Equal(seen, want) {
		t.Errorf("stages observed %v, want %v", seen, want)
	}
	clear(seen)
	store() // the same bytes again: idempotent
	want = map[gateway.StoreStage]int{gateway.StageReceive: 3, gateway.StageAudit: 1}
	if !maps.Equal(seen, want) {
		t.Errorf("stages observed for a resend %v, want %v", seen, want)
	}
}

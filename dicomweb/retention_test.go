package dicomweb_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

const day = 24 * time.Hour

// retentionNow is the injected clock of the retention tests.
var retentionNow = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// Tokens of the retention tests, by principal name.
var retentionTokens = map[string]struct {
	token string
	roles []gateway.Role
}{
	"records-officer": {"admin-token", []gateway.Role{gateway.RoleAdmin}},
	"viewer":          {"viewer-token", []gateway.Role{gateway.RoleRead, gateway.RoleStore, gateway.RoleTransfer}},
}

// retentionEnv is a gateway with auth on one backend family, its services
// (whose Retention the tests run) and a registry with the retention
// metrics.
type retentionEnv struct {
	kind string
	b    *backendtest.Backends
	svc  *gateway.Services
	srv  *httptest.Server
	reg  *prometheus.Registry
}

func newRetentionEnv(t *testing.T, kind string, policy gateway.RetentionPolicy) *retentionEnv {
	t.Helper()
	b := backendtest.Open(t, kind, backendtest.Options{GatewayName: "hampshire"})
	var cfg dicomweb.AuthConfig
	for name, tok := range retentionTokens {
		sum := sha256.Sum256([]byte(tok.token))
		cfg.Tokens = append(cfg.Tokens, dicomweb.TokenConfig{Name: name, SHA256: hex.EncodeToString(sum[:]), Roles: tok.roles})
	}
	auth, err := dicomweb.NewAuthenticator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e := &retentionEnv{kind: kind, b: b, reg: prometheus.NewRegistry()}
	e.svc = e.services(b.Index, policy)
	e.reg.MustRegister(dicomweb.NewRetentionCollector(e.svc.Retention))
	// Built with the constructors gateway serve uses; the services are
	// kept because the tests run their Retention directly too.
	s := dicomweb.New(dicomweb.Config{Services: e.svc, Auth: auth, Registerer: e.reg, Gatherer: e.reg})
	e.srv = httptest.NewServer(s.Handler())
	t.Cleanup(e.srv.Close)
	return e
}

// services builds the gateway's services on e's backends with index (a
// second replica passes its own connection).
func (e *retentionEnv) services(index gateway.Index, policy gateway.RetentionPolicy) *gateway.Services {
	return gateway.NewServices(gateway.ServiceDeps{
		Name: "hampshire", Blobs: e.b.Blobs, Index: index, Auditor: e.b.AuditLog, AuditLog: e.b.AuditLog,
		Transfers: &gateway.Transfers{Name: "hampshire", Queue: e.b.Queue, Index: index},
		Holds:     e.b.Holds, Retention: policy, Now: func() time.Time { return retentionNow },
	})
}

// putStudy stores a study of n instances of size bytes each, received
// age ago, as ingest leaves it: blobs, then index records.
func (e *retentionEnv) putStudy(t *testing.T, study, modality string, n int, size int, age time.Duration) {
	t.Helper()
	for i := range n {
		rec := storagetest.Record(study, study+".1", fmt.Sprintf("%s.1.%d", study, i+1), map[string]any{dicomcodec.TagModality: modality})
		got, err := e.b.Blobs.Put(t.Context(), rec.Key(), bytes.NewReader(bytes.Repeat([]byte{byte(i)}, size)))
		if err != nil {
			t.Fatal(err)
		}
		rec.Size, rec.StoredAt = got, retentionNow.Add(-age)
		if _, _, err := e.b.Index.PutInstance(t.Context(), rec); err != nil {
			t.Fatal(err)
		}
	}
}

// stored reports whether study still has index records, and fails if its
// blobs and records disagree.
func (e *retentionEnv) stored(t *testing.T, study string) bool {
	t.Helper()
	_, err := e.b.Index.ListInstances(t.Context(), study, "")
	indexed := err == nil
	if err != nil && !errors.Is(err, gateway.ErrNotFound) {
		t.Fatal(err)
	}
	blobs := 0
	if err := e.b.Blobs.Walk(t.Context(), gateway.StudyPrefix(study), func(gateway.BlobInfo) error { blobs++; return nil }); err != nil {
		t.Fatal(err)
	}
	if indexed != (blobs > 0) {
		t.Fatalf("study %s: indexed %v but %d blobs", study, indexed, blobs)
	}
	return indexed
}

// putStudies stores n studies prefix1 … prefixN of two 500-byte CT
// instances each, received 10, 9, … days ago: the oldest first.
func (e *retentionEnv) putStudies(t *testing.T, prefix string, n int) {
	t.Helper()
	for i := range n {
		e.putStudy(t, fmt.Sprintf("%s%d", prefix, i+1), "CT", 2, 500, time.Duration(10-i)*day)
	}
}

// assertStored checks, for the studies prefix1, prefix2, …, which are
// still stored.
func (e *retentionEnv) assertStored(t *testing.T, prefix string, want ...bool) {
	t.Helper()
	for i, w := range want {
		if got := e.stored(t, fmt.Sprintf("%s%d", prefix, i+1)); got != w {
			t.Errorf("study %s%d stored = %v, want %v", prefix, i+1, got, w)
		}
	}
}

func (e *retentionEnv) run(t *testing.T, r *gateway.Retention) *gateway.RetentionReport {
	t.Helper()
	rep, err := r.RunOnce(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// events returns the audit events of action by actor.
func (e *retentionEnv) events(t *testing.T, actor, action string) []*gateway.AuditEvent {
	t.Helper()
	page, err := e.b.AuditLog.Query(t.Context(), gateway.AuditFilter{Actor: actor, Action: action, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return page.Events
}

// metric returns the value of an unlabelled metric, or with label=value.
func (e *retentionEnv) metric(t *testing.T, name string, labelValue ...string) float64 {
	t.Helper()
	if len(labelValue) == 2 {
		v, ok := gathered(t, e.reg, name, labelValue[0], labelValue[1])
		if !ok {
			t.Fatalf("metric %s{%s=%s} missing", name, labelValue[0], labelValue[1])
		}
		return v
	}
	families, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			m := f.GetMetric()[0]
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s missing", name)
	return 0
}

// api sends an admin API request with token and returns the status and body.
func (e *retentionEnv) api(t *testing.T, method, path, token string, body any) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, e.srv.URL+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, data
}

func forEachBackend(t *testing.T, f func(t *testing.T, kind string)) {
	for _, kind := range backendtest.Kinds {
		t.Run(kind, func(t *testing.T) { f(t, kind) })
	}
}

// TestRetentionAgeDeletesOldestKeepsNewer: with max_age 365 days the study
// received 400 days ago is deleted (blobs and records), the ones received
// 100 days and 1 day ago stay; the deletion is audited with the retention
// actor and the rule, the run is audited, and the metrics move.
func TestRetentionAgeDeletesOldestKeepsNewer(t *testing.T) {
	forEachBackend(t, func(t *testing.T, kind string) {
		e := newRetentionEnv(t, kind, gateway.RetentionPolicy{MaxAge: 365 * day})
		e.putStudy(t, "1.2.826.1.1", "CT", 3, 1000, 400*day)
		e.putStudy(t, "1.2.826.1.2", "CT", 2, 500, 100*day)
		e.putStudy(t, "1.2.826.1.3", "MR", 1, 700, day)
		if got := e.metric(t, "gateway_retention_held_bytes"); got != 4700 {
			t.Fatalf("held bytes before = %v, want 4700", got)
		}

		rep := e.run(t, e.svc.Retention)
		if rep.Deleted != 1 || rep.Reclaimed != 3000 {
			t.Fatalf("run deleted %d studies, %d bytes; want 1, 3000 (report %+v)", rep.Deleted, rep.Reclaimed, rep)
		}
		if e.stored(t, "1.2.826.1.1") {
			t.Error("the study received 400 days ago is still stored")
		}
		for _, study := range []string{"1.2.826.1.2", "1.2.826.1.3"} {
			if !e.stored(t, study) {
				t.Errorf("study %s (younger than max_age) was deleted", study)
			}
		}

		dels := e.events(t, gateway.RetentionActor, gateway.ActionDelete)
		if len(dels) != 1 || !slices.Equal(dels[0].StudyUIDs, []string{"1.2.826.1.1"}) || dels[0].Outcome != gateway.OutcomeSuccess {
			t.Fatalf("delete events of the retention actor = %+v, want one for 1.2.826.1.1", dels)
		}
		if rule := dels[0].Detail["retention_rule"]; rule != gateway.RetentionRuleMaxAge {
			t.Errorf("delete event's retention_rule = %v, want %s", rule, gateway.RetentionRuleMaxAge)
		}
		runs := e.events(t, gateway.RetentionActor, gateway.ActionRetentionRun)
		if len(runs) != 1 || fmt.Sprint(runs[0].Detail["deleted"]) != "1" || fmt.Sprint(runs[0].Detail["reclaimed_bytes"]) != "3000" {
			t.Fatalf("run events = %+v, want one with deleted 1, reclaimed 3000", runs)
		}

		for name, want := range map[string]float64{
			"gateway_retention_held_bytes":                 1700,
			"gateway_retention_held_studies":               2,
			"gateway_retention_deleted_studies_total":      1,
			"gateway_retention_reclaimed_bytes_total":      3000,
			"gateway_retention_runs_total":                 1,
			"gateway_retention_last_run_timestamp_seconds": float64(retentionNow.Unix()),
		} {
			if got := e.metric(t, name); got != want {
				t.Errorf("%s = %v, want %v", name, got, want)
			}
		}
		// A second run finds nothing due.
		if rep := e.run(t, e.svc.Retention); rep.Deleted != 0 || len(rep.Plan.Delete) != 0 {
			t.Errorf("second run: %+v, want nothing to do", rep)
		}
	})
}

// TestRetentionBytesCapStopsUnderCap: four studies of 1,000 bytes under a
// 2,500-byte cap: the two oldest go (4,000 → 3,000 → 2,000), the two newest
// stay, with rule max_bytes.
func TestRetentionBytesCapStopsUnderCap(t *testing.T) {
	forEachBackend(t, func(t *testing.T, kind string) {
		e := newRetentionEnv(t, kind, gateway.RetentionPolicy{MaxBytes: 2500})
		e.putStudies(t, "1.2.826.2.", 4)
		rep := e.run(t, e.svc.Retention)
		if rep.Deleted != 2 || rep.Reclaimed != 2000 {
			t.Fatalf("deleted %d studies, %d bytes; want 2, 2000", rep.Deleted, rep.Reclaimed)
		}
		e.assertStored(t, "1.2.826.2.", false, false, true, true)
		for _, ev := range e.events(t, gateway.RetentionActor, gateway.ActionDelete) {
			if ev.Detail["retention_rule"] != gateway.RetentionRuleMaxBytes {
				t.Errorf("delete of %v: rule %v, want max_bytes", ev.StudyUIDs, ev.Detail["retention_rule"])
			}
		}
		if got := e.metric(t, "gateway_retention_held_bytes"); got != 2000 {
			t.Errorf("held bytes = %v, want 2000", got)
		}
	})
}

// TestRetentionModalityRule: a CT rule of 30 days deletes a 60-day-old CT
// study, while the centre's 365 days keep a 60-day-old MR study.
func TestRetentionModalityRule(t *testing.T) {
	e := newRetentionEnv(t, backendtest.Embedded, gateway.RetentionPolicy{
		MaxAge: 365 * day, Rules: []gateway.RetentionRule{{Name: "ct-short", Modality: "CT", MaxAge: 30 * day}},
	})
	e.putStudy(t, "1.2.826.3.1", "MR", 1, 100, 60*day)
	e.putStudy(t, "1.2.826.3.2", "CT", 1, 100, 60*day)
	e.putStudy(t, "1.2.826.3.3", "CT", 1, 100, 10*day)
	rep := e.run(t, e.svc.Retention)
	if rep.Deleted != 1 || e.stored(t, "1.2.826.3.2") || !e.stored(t, "1.2.826.3.1") || !e.stored(t, "1.2.826.3.3") {
		t.Fatalf("deleted %d; want only the 60-day-old CT study gone (report %+v)", rep.Deleted, rep)
	}
	if dels := e.events(t, gateway.RetentionActor, gateway.ActionDelete); len(dels) != 1 || dels[0].Detail["retention_rule"] != "rule:ct-short" {
		t.Fatalf("delete events = %+v, want one with rule:ct-short", dels)
	}
}

// TestRetentionHoldSurvives: a study under a legal hold (set through the
// admin API, audited with who and why) survives a run that deletes its
// neighbour, counts as skipped, and is deleted once the hold is cleared.
func TestRetentionHoldSurvives(t *testing.T) {
	forEachBackend(t, func(t *testing.T, kind string) {
		e := newRetentionEnv(t, kind, gateway.RetentionPolicy{MaxAge: 365 * day})
		e.putStudy(t, "1.2.826.4.1", "CT", 1, 100, 500*day)
		e.putStudy(t, "1.2.826.4.2", "CT", 1, 100, 500*day)
		admin := retentionTokens["records-officer"].token
		status, body := e.api(t, http.MethodPut, "/api/v1/studies/1.2.826.4.1/hold", admin, map[string]string{"reason": "litigation 2026/17"})
		if status != http.StatusOK {
			t.Fatalf("PUT hold = %d %s", status, body)
		}
		status, body = e.api(t, http.MethodGet, "/api/v1/studies/1.2.826.4.1/hold", admin, nil)
		if status != http.StatusOK || !strings.Contains(string(body), "litigation 2026/17") {
			t.Fatalf("GET hold = %d %s", status, body)
		}
		if status, _ := e.api(t, http.MethodGet, "/api/v1/studies/1.2.826.4.2/hold", admin, nil); status != http.StatusNotFound {
			t.Fatalf("GET hold of a study without one = %d, want 404", status)
		}
		status, body = e.api(t, http.MethodGet, "/api/v1/holds", admin, nil)
		var list struct{ Holds []gateway.Hold }
		if err := json.Unmarshal(body, &list); status != http.StatusOK || err != nil || len(list.Holds) != 1 ||
			list.Holds[0].StudyInstanceUID != "1.2.826.4.1" || list.Holds[0].SetBy != "records-officer" || list.Holds[0].Reason != "litigation 2026/17" {
			t.Fatalf("GET holds = %d %s", status, body)
		}
		set := e.events(t, "records-officer", gateway.ActionHoldSet)
		if len(set) != 1 || set[0].Detail["reason"] != "litigation 2026/17" || !slices.Equal(set[0].StudyUIDs, []string{"1.2.826.4.1"}) {
			t.Fatalf("hold.set events = %+v", set)
		}

		// The plan says what the run will do, and deletes nothing.
		status, body = e.api(t, http.MethodGet, "/api/v1/retention/plan", admin, nil)
		var plan gateway.RetentionPlan
		if err := json.Unmarshal(body, &plan); status != http.StatusOK || err != nil || len(plan.Delete) != 1 || len(plan.Skipped) != 1 ||
			plan.Skipped[0].StudyInstanceUID != "1.2.826.4.1" || plan.Skipped[0].Skipped != gateway.RetentionSkipHeld {
			t.Fatalf("GET plan = %d %s", status, body)
		}
		if !e.stored(t, "1.2.826.4.2") {
			t.Fatal("GET plan deleted a study")
		}

		status, body = e.api(t, http.MethodPost, "/api/v1/retention/run", admin, nil)
		if status != http.StatusOK {
			t.Fatalf("POST run = %d %s", status, body)
		}
		if !e.stored(t, "1.2.826.4.1") || e.stored(t, "1.2.826.4.2") {
			t.Fatal("want the held study kept and the other deleted")
		}
		if got := e.metric(t, "gateway_retention_skipped_studies_total", "reason", gateway.RetentionSkipHeld); got != 1 {
			t.Errorf("skipped{held} = %v, want 1", got)
		}

		if status, body := e.api(t, http.MethodDelete, "/api/v1/studies/1.2.826.4.1/hold", admin, nil); status != http.StatusNoContent {
			t.Fatalf("DELETE hold = %d %s", status, body)
		}
		if status, _ := e.api(t, http.MethodDelete, "/api/v1/studies/1.2.826.4.1/hold", admin, nil); status != http.StatusNotFound {
			t.Fatalf("second DELETE hold = %d, want 404", status)
		}
		if cleared := e.events(t, "records-officer", gateway.ActionHoldCleared); len(cleared) != 1 || cleared[0].Detail["reason"] != "litigation 2026/17" {
			t.Fatalf("hold.cleared events = %+v", cleared)
		}
		if rep := e.run(t, e.svc.Retention); rep.Deleted != 1 || e.stored(t, "1.2.826.4.1") {
			t.Fatalf("after the hold was cleared: %+v, want the study deleted", rep)
		}
	})
}

// TestRetentionPendingTransferSurvives: a study with a queued outgoing
// transfer survives; once the transfer is completed and verified the next
// run deletes it. A running incoming transfer keeps a study too.
func TestRetentionPendingTransferSurvives(t *testing.T) {
	forEachBackend(t, func(t *testing.T, kind string) {
		e := newRetentionEnv(t, kind, gateway.RetentionPolicy{MaxAge: 30 * day})
		ctx := t.Context()
		e.putStudy(t, "1.2.826.5.1", "CT", 2, 100, 90*day)
		e.putStudy(t, "1.2.826.5.2", "CT", 1, 100, 90*day)
		tr := &gateway.Transfer{ID: gateway.NewTransferID(), StudyUID: "1.2.826.5.1", Destination: "surrey",
			Priority: gateway.PriorityNormal, State: gateway.StateQueued, Direction: gateway.DirectionOutgoing,
			Source: "hampshire", CreatedAt: retentionNow}
		if _, _, err := e.b.Queue.Enqueue(ctx, tr, time.Time{}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.b.Queue.RecordIncoming(ctx, []gateway.IncomingInstance{{TransferID: "tr-in-1", Source: "surrey",
			Destination: "hampshire", StudyUID: "1.2.826.5.2", SOPInstanceUID: "1.2.826.5.2.1.1", OK: true, Bytes: 100, Total: 5, At: retentionNow}}); err != nil {
			t.Fatal(err)
		}
		rep := e.run(t, e.svc.Retention)
		if rep.Deleted != 0 || !e.stored(t, "1.2.826.5.1") || !e.stored(t, "1.2.826.5.2") {
			t.Fatalf("run with pending transfers deleted %d (report %+v)", rep.Deleted, rep)
		}
		if got := e.metric(t, "gateway_retention_skipped_studies_total", "reason", gateway.RetentionSkipTransfer); got != 2 {
			t.Errorf("skipped{transfer_pending} = %v, want 2", got)
		}

		// The worker sends it and the destination verifies it.
		l, err := e.b.Queue.Claim(ctx, "worker-1", time.Second)
		if err != nil || l == nil {
			t.Fatalf("claim = %v, %v", l, err)
		}
		done := *tr
		ok, at := true, retentionNow
		done.State, done.Verified, done.CompletedAt, done.InstancesSent, done.InstancesTotal = gateway.StateCompleted, &ok, &at, 2, 2
		if err := e.b.Queue.Finish(ctx, l, &done); err != nil {
			t.Fatal(err)
		}
		rep = e.run(t, e.svc.Retention)
		if rep.Deleted != 1 || e.stored(t, "1.2.826.5.1") || !e.stored(t, "1.2.826.5.2") {
			t.Fatalf("after the transfer completed and verified: %+v; want 1.2.826.5.1 deleted, the incoming one kept", rep)
		}
	})
}

// storeOnHoldCheck is the hold store of a run into which an instance
// arrives while the run is under way: at the check made just before study
// is deleted (the second GetHold of it; the first is the plan's), store
// runs, then the check is answered as usual.
type storeOnHoldCheck struct {
	gateway.HoldStore
	study string
	store func()
	calls int
}

func (h *storeOnHoldCheck) GetHold(ctx context.Context, study string) (*gateway.Hold, error) {
	if study == h.study {
		if h.calls++; h.calls == 2 {
			h.store()
		}
	}
	return h.HoldStore.GetHold(ctx, study)
}

// TestRetentionKeepsAStudyReceivedIntoDuringTheRun: an instance that
// arrives in a planned study after the run's last check of it is not
// deleted with it: the study is kept (received_since_planned), whole, and
// the next run plans it anew, no longer due.
func TestRetentionKeepsAStudyReceivedIntoDuringTheRun(t *testing.T) {
	forEachBackend(t, func(t *testing.T, kind string) {
		e := newRetentionEnv(t, kind, gateway.RetentionPolicy{MaxAge: 30 * day})
		e.putStudy(t, "1.2.826.10.1", "CT", 1, 100, 90*day)
		e.putStudy(t, "1.2.826.10.2", "CT", 2, 100, 90*day)
		fresh := storagetest.Record("1.2.826.10.2", "1.2.826.10.2.1", "1.2.826.10.2.1.9", map[string]any{dicomcodec.TagModality: "CT"})
		e.svc.Retention.Holds = &storeOnHoldCheck{HoldStore: e.b.Holds, study: "1.2.826.10.2", store: func() {
			size, err := e.b.Blobs.Put(t.Context(), fresh.Key(), bytes.NewReader(bytes.Repeat([]byte{9}, 100)))
			if err != nil {
				t.Fatal(err)
			}
			fresh.Size, fresh.StoredAt = size, retentionNow
			if _, _, err := e.b.Index.PutInstance(t.Context(), fresh); err != nil {
				t.Fatal(err)
			}
		}}
		rep := e.run(t, e.svc.Retention)
		if rep.Deleted != 1 || e.stored(t, "1.2.826.10.1") {
			t.Fatalf("run: %+v; want the untouched due study deleted", rep)
		}
		recs, err := e.b.Index.ListInstances(t.Context(), "1.2.826.10.2", "")
		if err != nil || len(recs) != 3 {
			t.Fatalf("the study received into during the run has %d instances (%v), want all 3", len(recs), err)
		}
		if got := e.metric(t, "gateway_retention_skipped_studies_total", "reason", gateway.RetentionSkipReceived); got != 1 {
			t.Errorf("skipped{%s} = %v, want 1", gateway.RetentionSkipReceived, got)
		}
		if got := rep.Plan.Delete[1].Skipped; got != gateway.RetentionSkipReceived {
			t.Errorf("the kept study's candidate says skipped %q, want %q", got, gateway.RetentionSkipReceived)
		}
		for _, ev := range e.events(t, gateway.RetentionActor, gateway.ActionDelete) {
			if slices.Contains(ev.StudyUIDs, "1.2.826.10.2") {
				t.Errorf("a delete of the kept study was audited: %+v", ev)
			}
		}
		if rep := e.run(t, e.svc.Retention); rep.Deleted != 0 || len(rep.Plan.Delete) != 0 {
			t.Errorf("next run: %+v; want nothing due (the study was received into today)", rep)
		}
	})
}

// TestRetentionWalkGoesOnPastTheScanLimit: studies a longer rule keeps
// fill the first run's scan; the next run goes on after them and deletes
// the due CT study behind them, then, having reached the end, the run
// after starts at the oldest again.
func TestRetentionWalkGoesOnPastTheScanLimit(t *testing.T) {
	forEachBackend(t, func(t *testing.T, kind string) {
		e := newRetentionEnv(t, kind, gateway.RetentionPolicy{MaxAge: 30 * day,
			Rules: []gateway.RetentionRule{{Name: "ct", Modality: "CT", MaxAge: 2 * day}}, BatchSize: 2, ScanLimit: 4})
		for i := range 5 {
			e.putStudy(t, fmt.Sprintf("1.2.826.11.%d", i+1), "MR", 1, 100, time.Duration(20-i)*day)
		}
		e.putStudy(t, "1.2.826.11.9", "CT", 1, 100, 5*day)
		rep := e.run(t, e.svc.Retention)
		if rep.Deleted != 0 || rep.Plan.Examined != 4 || !rep.Plan.Truncated || rep.Plan.Resumed {
			t.Fatalf("first run: deleted %d, examined %d, truncated %v, resumed %v; want 0, 4, true, false",
				rep.Deleted, rep.Plan.Examined, rep.Plan.Truncated, rep.Plan.Resumed)
		}
		rep = e.run(t, e.svc.Retention)
		if rep.Deleted != 1 || !rep.Plan.Resumed || e.stored(t, "1.2.826.11.9") {
			t.Fatalf("second run: deleted %d, resumed %v; want the CT study behind the scan limit deleted", rep.Deleted, rep.Plan.Resumed)
		}
		if rep = e.run(t, e.svc.Retention); rep.Plan.Resumed || rep.Deleted != 0 {
			t.Errorf("third run: resumed %v, deleted %d; want a walk from the oldest that deletes nothing", rep.Plan.Resumed, rep.Deleted)
		}
	})
}

// TestRetentionBytesGoOnPastHeldStudies: held studies at the old end fill
// each run's scan; under max_bytes the next runs go on past them and
// delete the unheld ones, and never a held one.
func TestRetentionBytesGoOnPastHeldStudies(t *testing.T) {
	forEachBackend(t, func(t *testing.T, kind string) {
		e := newRetentionEnv(t, kind, gateway.RetentionPolicy{MaxBytes: 300, BatchSize: 2, ScanLimit: 4})
		var held, unheld []string
		for i := range 4 {
			held = append(held, fmt.Sprintf("1.2.826.12.%d", i+1))
			e.putStudy(t, held[i], "MR", 1, 100, time.Duration(20-i)*day)
			if _, err := e.svc.Retention.SetHold(t.Context(), gateway.Caller{Principal: gateway.Principal{Name: "records-officer"}}, held[i], "litigation"); err != nil {
				t.Fatal(err)
			}
		}
		for i := range 4 {
			unheld = append(unheld, fmt.Sprintf("1.2.826.13.%d", i+1))
			e.putStudy(t, unheld[i], "MR", 1, 100, time.Duration(10-i)*day)
		}
		for range 3 {
			e.run(t, e.svc.Retention)
		}
		for _, study := range unheld {
			if e.stored(t, study) {
				t.Errorf("unheld study %s is still stored after three runs over the cap", study)
			}
		}
		for _, study := range held {
			if !e.stored(t, study) {
				t.Errorf("held study %s was deleted", study)
			}
		}
	})
}

// TestRetentionBytesOverTheCapStartAtTheOldest: a run under the cap passes
// over studies no rule makes due and leaves its walk after them; when a
// new study takes stored bytes over the cap, the next run starts at the
// oldest again, so the oldest go first and the new one stays.
func TestRetentionBytesOverTheCapStartAtTheOldest(t *testing.T) {
	forEachBackend(t, func(t *testing.T, kind string) {
		e := newRetentionEnv(t, kind, gateway.RetentionPolicy{MaxAge: 30 * day, MaxBytes: 1000,
			Rules: []gateway.RetentionRule{{Name: "ct", Modality: "CT", MaxAge: 2 * day}}, BatchSize: 2, ScanLimit: 2})
		for i, study := range []string{"1.2.826.14.1", "1.2.826.14.2", "1.2.826.14.3"} {
			e.putStudy(t, study, "MR", 1, 100, time.Duration(10-i)*day)
		}
		if rep := e.run(t, e.svc.Retention); rep.Deleted != 0 || rep.Plan.Examined != 2 {
			t.Fatalf("run under the cap: deleted %d, examined %d; want 0, 2", rep.Deleted, rep.Plan.Examined)
		}
		e.putStudy(t, "1.2.826.14.4", "MR", 1, 1000, day)
		rep := e.run(t, e.svc.Retention)
		if rep.Plan.Resumed || rep.Deleted != 2 {
			t.Fatalf("run over the cap: resumed %v, deleted %d; want a walk from the oldest deleting 2", rep.Plan.Resumed, rep.Deleted)
		}
		e.assertStored(t, "1.2.826.14.", false, false, true, true)
	})
}

// TestDeleteLeavesNoSeriesMetadata: deleting a study removes every series
// metadata object under it, the one of a series it deletes (a read may
// have written it again during the delete) and one left behind earlier for
// a series with no instance left; a study that holds nothing but such an
// object can be deleted too.
func TestDeleteLeavesNoSeriesMetadata(t *testing.T) {
	forEachBackend(t, func(t *testing.T, kind string) {
		e := newRetentionEnv(t, kind, gateway.RetentionPolicy{MaxAge: 30 * day})
		ctx := t.Context()
		study := "1.2.826.15.1"
		e.putStudy(t, study, "CT", 2, 100, 90*day)
		keys := []string{gateway.SeriesMetadataKey(study, study+".1"), gateway.SeriesMetadataKey(study, study+".7")}
		for _, key := range keys {
			if _, err := e.b.Blobs.Put(ctx, key, strings.NewReader("patient headers")); err != nil {
				t.Fatal(err)
			}
		}
		if rep := e.run(t, e.svc.Retention); rep.Deleted != 1 {
			t.Fatalf("run: %+v; want the study deleted", rep)
		}
		for _, key := range keys {
			if _, err := e.b.Blobs.Stat(ctx, key); !errors.Is(err, gateway.ErrNotFound) {
				t.Errorf("%s after the study's delete: %v, want not found", key, err)
			}
		}
		dels := e.events(t, gateway.RetentionActor, gateway.ActionDelete)
		if len(dels) != 1 || fmt.Sprint(dels[0].Detail["metadata_objects"]) != "2" {
			t.Errorf("delete events = %+v, want one with metadata_objects 2", dels)
		}

		left := gateway.SeriesMetadataKey("1.2.826.15.2", "1.2.826.15.2.1")
		if _, err := e.b.Blobs.Put(ctx, left, strings.NewReader("patient headers")); err != nil {
			t.Fatal(err)
		}
		if _, _, err := e.svc.Delete.DeleteStudy(ctx, gateway.Caller{Principal: gateway.Principal{Name: "records-officer"}}, "1.2.826.15.2", time.Time{}, nil); err != nil {
			t.Fatalf("delete of a study holding only a metadata object: %v", err)
		}
		if _, err := e.b.Blobs.Stat(ctx, left); !errors.Is(err, gateway.ErrNotFound) {
			t.Errorf("the metadata object after its study's delete: %v, want not found", err)
		}
	})
}

// TestRetentionBytesCapReadAgainBeforeEachDelete: the plan deletes the two
// oldest of four 1,000-byte studies to get under a 2,500-byte cap; an admin
// deletes the newest while the run deletes the first, so the second is no
// longer needed and is kept (under_cap).
func TestRetentionBytesCapReadAgainBeforeEachDelete(t *testing.T) {
	forEachBackend(t, func(t *testing.T, kind string) {
		e := newRetentionEnv(t, kind, gateway.RetentionPolicy{MaxBytes: 2500})
		e.putStudies(t, "1.2.826.16.", 4)
		admin := gateway.Caller{Principal: gateway.Principal{Name: "records-officer"}}
		e.svc.Retention.Holds = &storeOnHoldCheck{HoldStore: e.b.Holds, study: "1.2.826.16.1", store: func() {
			if _, _, err := e.svc.Delete.DeleteStudy(t.Context(), admin, "1.2.826.16.4", time.Time{}, nil); err != nil {
				t.Fatal(err)
			}
		}}
		rep := e.run(t, e.svc.Retention)
		if rep.Deleted != 1 || len(rep.Plan.Delete) != 2 || rep.Plan.Delete[1].Skipped != gateway.RetentionSkipUnderCap {
			t.Fatalf("run: deleted %d of %d planned, the second skipped %q; want 1 of 2, the second %s",
				rep.Deleted, len(rep.Plan.Delete), rep.Plan.Delete[len(rep.Plan.Delete)-1].Skipped, gateway.RetentionSkipUnderCap)
		}
		e.assertStored(t, "1.2.826.16.", false, true, true, false)
		if got := e.metric(t, "gateway_retention_skipped_studies_total", "reason", gateway.RetentionSkipUnderCap); got != 1 {
			t.Errorf("skipped{%s} = %v, want 1", gateway.RetentionSkipUnderCap, got)
		}
	})
}

// TestRetentionDryRunDeletesNothing: a dry-run policy plans and audits the
// deletions it would make and deletes nothing.
func TestRetentionDryRunDeletesNothing(t *testing.T) {
	e := newRetentionEnv(t, backendtest.Embedded, gateway.RetentionPolicy{MaxAge: 30 * day, DryRun: true})
	e.putStudy(t, "1.2.826.6.1", "CT", 1, 100, 90*day)
	rep := e.run(t, e.svc.Retention)
	if rep.Deleted != 0 || len(rep.Plan.Delete) != 1 || !e.stored(t, "1.2.826.6.1") {
		t.Fatalf("dry run: %+v; want one planned, nothing deleted", rep)
	}
	runs := e.events(t, gateway.RetentionActor, gateway.ActionRetentionRun)
	if len(runs) != 1 || fmt.Sprint(runs[0].Detail["dry_run"]) != "true" || !slices.Equal(runs[0].StudyUIDs, []string{"1.2.826.6.1"}) {
		t.Fatalf("run events = %+v, want one dry run naming the study", runs)
	}
}

// TestRetentionConcurrentRunnersDoNotDoubleDelete: two replicas' runners
// (on Redis, two connections) run at once over 12 due studies; each study
// is deleted, and audited as deleted, exactly once.
func TestRetentionConcurrentRunnersDoNotDoubleDelete(t *testing.T) {
	forEachBackend(t, func(t *testing.T, kind string) {
		policy := gateway.RetentionPolicy{MaxAge: 30 * day}
		e := newRetentionEnv(t, kind, policy)
		var want []string
		for i := range 12 {
			study := fmt.Sprintf("1.2.826.7.%d", i+1)
			e.putStudy(t, study, "CT", 2, 100, 60*day)
			want = append(want, study)
		}
		index := e.b.Index
		if kind == backendtest.Production {
			c, err := redis.Open(storagetest.RedisURL(t), e.b.Redis.Key(""))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			index = redis.NewIndex(c)
		}
		runners := []*gateway.Retention{e.svc.Retention, e.services(index, policy).Retention}
		reports := make([]*gateway.RetentionReport, len(runners))
		var wg sync.WaitGroup
		for i, r := range runners {
			wg.Go(func() {
				rep, err := r.RunOnce(t.Context())
				if err != nil {
					t.Error(err)
					return
				}
				reports[i] = rep
			})
		}
		wg.Wait()
		deleted := 0
		for _, rep := range reports {
			if rep != nil {
				deleted += rep.Deleted
			}
		}
		if deleted != 12 {
			t.Fatalf("runners deleted %d studies in all, want 12 (reports %+v %+v)", deleted, reports[0], reports[1])
		}
		var audited []string
		for _, ev := range e.events(t, gateway.RetentionActor, gateway.ActionDelete) {
			if ev.Outcome == gateway.OutcomeSuccess {
				audited = append(audited, ev.StudyUIDs...)
			}
		}
		slices.Sort(audited)
		slices.Sort(want)
		if !slices.Equal(audited, want) {
			t.Fatalf("audited deletions %v, want each of %v once", audited, want)
		}
	})
}

// TestRetentionAdminAPIAuth: every hold and retention route answers 403 to
// a principal without role admin (and records the refusal), 401 without
// credentials.
func TestRetentionAdminAPIAuth(t *testing.T) {
	e := newRetentionEnv(t, backendtest.Embedded, gateway.RetentionPolicy{MaxAge: 30 * day})
	e.putStudy(t, "1.2.826.8.1", "CT", 1, 100, 90*day)
	viewer := retentionTokens["viewer"].token
	for _, rt := range []struct {
		method, path string
		body         any
	}{
		{http.MethodPut, "/api/v1/studies/1.2.826.8.1/hold", map[string]string{"reason": "x"}},
		{http.MethodGet, "/api/v1/studies/1.2.826.8.1/hold", nil},
		{http.MethodDelete, "/api/v1/studies/1.2.826.8.1/hold", nil},
		{http.MethodGet, "/api/v1/holds", nil},
		{http.MethodGet, "/api/v1/retention/plan", nil},
		{http.MethodPost, "/api/v1/retention/run", nil},
	} {
		if status, body := e.api(t, rt.method, rt.path, viewer, rt.body); status != http.StatusForbidden {
			t.Errorf("%s %s as viewer = %d %s, want 403", rt.method, rt.path, status, body)
		}
		if status, _ := e.api(t, rt.method, rt.path, "not-a-token", rt.body); status != http.StatusUnauthorized {
			t.Errorf("%s %s with a bad token = %d, want 401", rt.method, rt.path, status)
		}
	}
	if !e.stored(t, "1.2.826.8.1") {
		t.Fatal("a refused run deleted the study")
	}
	if _, err := e.b.Holds.GetHold(t.Context(), "1.2.826.8.1"); !errors.Is(err, gateway.ErrNotFound) {
		t.Fatalf("a refused PUT hold left a hold: %v", err)
	}
	if denied := e.events(t, "viewer", gateway.ActionAccessDenied); len(denied) != 6 {
		t.Errorf("access denied events = %d, want 6", len(denied))
	}
	admin := retentionTokens["records-officer"].token
	for _, bad := range []struct {
		path string
		body any
		want int
	}{
		{"/api/v1/studies/1.2.826.8.1/hold", map[string]string{"reason": ""}, http.StatusBadRequest},
		{"/api/v1/studies/1.2..3/hold", map[string]string{"reason": "x"}, http.StatusBadRequest},
		{"/api/v1/studies/1.2.826.8.1/hold", map[string]string{"reason": strings.Repeat("x", gateway.MaxHoldReason+1)}, http.StatusBadRequest},
		{"/api/v1/studies/1.2.826.8.1/hold", map[string]string{"why": "x"}, http.StatusBadRequest},
	} {
		if status, body := e.api(t, http.MethodPut, bad.path, admin, bad.body); status != bad.want {
			t.Errorf("PUT %s %v = %d %s, want %d", bad.path, bad.body, status, body, bad.want)
		}
	}
}

// TestRetentionPendingTransferRules: which transfers keep a study, on each
// queue backend: a failed one (an admin may retry it) and a completed one
// whose verification failed do; a cancelled one does not; an older failed
// transfer to a destination that a newer verified one reached does not; a
// failed one behind a thousand newer ones does; an incoming one not
// complete does while its peer sent within a day.
func TestRetentionPendingTransferRules(t *testing.T) {
	forEachBackend(t, func(t *testing.T, kind string) {
		e := newRetentionEnv(t, kind, gateway.RetentionPolicy{})
		q, ctx := e.b.Queue, t.Context()
		n := 0
		// finish enqueues a transfer of study to dest and ends it in state.
		finish := func(study, dest string, state gateway.TransferState, verified *bool) {
			t.Helper()
			n++
			tr := &gateway.Transfer{ID: fmt.Sprintf("tr-rules-%d", n), StudyUID: study, Destination: dest,
				Priority: gateway.PriorityNormal, State: gateway.StateQueued, Direction: gateway.DirectionOutgoing,
				Source: "hampshire", CreatedAt: retentionNow.Add(time.Duration(n) * time.Minute)}
			if _, _, err := q.Enqueue(ctx, tr, time.Time{}); err != nil {
				t.Fatal(err)
			}
			if state == gateway.StateCancelled {
				if _, err := q.Cancel(ctx, tr.ID); err != nil {
					t.Fatal(err)
				}
				return
			}
			l, err := q.Claim(ctx, "worker-rules", time.Second)
			if err != nil || l == nil || l.TransferID != tr.ID {
				t.Fatalf("claim = %+v, %v; want %s", l, err, tr.ID)
			}
			done := *tr
			done.State, done.Verified = state, verified
			if err := q.Finish(ctx, l, &done); err != nil {
				t.Fatal(err)
			}
		}
		yes, no := true, false
		finish("1.2.826.9.1", "surrey", gateway.StateFailed, nil)
		finish("1.2.826.9.2", "surrey", gateway.StateCompleted, &no)
		finish("1.2.826.9.3", "surrey", gateway.StateCancelled, nil)
		finish("1.2.826.9.4", "surrey", gateway.StateFailed, nil)
		finish("1.2.826.9.4", "surrey", gateway.StateCompleted, &yes)
		finish("1.2.826.9.5", "surrey", gateway.StateCompleted, &yes)
		finish("1.2.826.9.5", "dorset", gateway.StateFailed, nil)
		// One failed transfer behind more than a thousand newer ones to
		// another destination, all cancelled: every transfer of the study
		// is read, not the newest thousand.
		finish("1.2.826.9.7", "london", gateway.StateFailed, nil)
		for range 1001 {
			finish("1.2.826.9.7", "surrey", gateway.StateCancelled, nil)
		}
		// Incoming transfers not complete: one whose peer sent its last
		// instance 25 hours ago (the sender gave up) no longer keeps its
		// study; one an hour ago does.
		for study, ago := range map[string]time.Duration{"1.2.826.9.8": 25 * time.Hour, "1.2.826.9.9": time.Hour} {
			if _, err := q.RecordIncoming(ctx, []gateway.IncomingInstance{{TransferID: "tr-in-" + study, Source: "surrey",
				Destination: "hampshire", StudyUID: study, SOPInstanceUID: study + ".1.1", OK: true, Bytes: 100, Total: 5, At: retentionNow.Add(-ago)}}); err != nil {
				t.Fatal(err)
			}
		}
		for study, want := range map[string]bool{
			"1.2.826.9.1": true, "1.2.826.9.2": true, "1.2.826.9.3": false, "1.2.826.9.4": false, "1.2.826.9.5": true, "1.2.826.9.6": false,
			"1.2.826.9.7": true, "1.2.826.9.8": false, "1.2.826.9.9": true,
		} {
			got, err := gateway.PendingTransfer(ctx, q, study, retentionNow)
			if err != nil {
				t.Fatal(err)
			}
			if (got != nil) != want {
				t.Errorf("study %s: pending transfer %+v, want pending=%v", study, got, want)
			}
		}
	})
}

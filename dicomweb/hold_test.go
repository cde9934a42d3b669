package dicomweb_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
)

// TestHoldRefusesDelete: a DELETE of a held study, of one of its series or
// of one of its instances is refused with 409 and removes nothing; each
// refusal is audited as a failed delete of the study naming who set the
// hold. Once the
// hold is cleared the same DELETE removes the study.
func TestHoldRefusesDelete(t *testing.T) {
	forEachBackend(t, func(t *testing.T, kind string) {
		e := newRetentionEnv(t, kind, gateway.RetentionPolicy{})
		const study = "1.2.826.4.7"
		e.putStudy(t, study, "CT", 2, 100, day)
		admin := retentionTokens["records-officer"].token
		if status, body := e.api(t, http.MethodPut, "/api/v1/studies/"+study+"/hold", admin, map[string]string{"reason": "litigation 2026/17"}); status != http.StatusOK {
			t.Fatalf("PUT hold = %d %s", status, body)
		}
		for _, path := range []string{
			"/dicomweb/studies/" + study,
			"/dicomweb/studies/" + study + "/series/" + study + ".1",
			"/dicomweb/studies/" + study + "/series/" + study + ".1/instances/" + study + ".1.1",
		} {
			status, body := e.api(t, http.MethodDelete, path, admin, nil)
			if status != http.StatusConflict || !strings.Contains(string(body), "legal hold set by records-officer") {
				t.Errorf("DELETE %s of a held study = %d %s, want 409 naming the hold", path, status, body)
			}
		}
		if !e.stored(t, study) {
			t.Fatal("a refused DELETE removed the held study")
		}
		if n := len(e.instances(t, study)); n != 2 {
			t.Fatalf("%d instances left, want 2", n)
		}
		var refused int
		for _, ev := range e.events(t, "records-officer", gateway.ActionDelete) {
			if ev.Outcome == gateway.OutcomeFailure && ev.Detail["hold_set_by"] == "records-officer" && slices.Contains(ev.StudyUIDs, study) {
				refused++
			}
		}
		if refused != 3 {
			t.Errorf("%d refused deletes audited with the hold and the study, want 3", refused)
		}

		if status, body := e.api(t, http.MethodDelete, "/api/v1/studies/"+study+"/hold", admin, nil); status != http.StatusNoContent {
			t.Fatalf("DELETE hold = %d %s", status, body)
		}
		if status, body := e.api(t, http.MethodDelete, "/dicomweb/studies/"+study, admin, nil); status != http.StatusOK {
			t.Fatalf("DELETE after the hold was cleared = %d %s", status, body)
		}
		if e.stored(t, study) {
			t.Fatal("study still stored after the hold was cleared and it was deleted")
		}
	})
}

// instances lists study's index records.
func (e *retentionEnv) instances(t *testing.T, study string) []*gateway.InstanceRecord {
	t.Helper()
	recs, err := e.b.Index.ListInstances(t.Context(), study, "")
	if err != nil && !errors.Is(err, gateway.ErrNotFound) {
		t.Fatal(err)
	}
	return recs
}

// recordsOfficer is the admin caller of the hold tests that call the
// services directly.
var recordsOfficer = gateway.Caller{Principal: gateway.Principal{Name: "records-officer", Roles: []gateway.Role{gateway.RoleAdmin}}, Route: "test"}

// servicesWith builds the services on e's backends with blobs and holds in
// place of e's own (stores that hold a deletion or a hold check back).
func (e *retentionEnv) servicesWith(blobs gateway.BlobStore, holds gateway.HoldStore) *gateway.Services {
	return gateway.NewServices(gateway.ServiceDeps{
		Name: "hampshire", Blobs: blobs, Index: e.b.Index, Auditor: e.b.AuditLog, AuditLog: e.b.AuditLog,
		Holds: holds, Now: func() time.Time { return retentionNow },
	})
}

// deleteInBackground deletes study as the records officer, outliving the
// test's own waits, and gives its error.
func deleteInBackground(t *testing.T, svc *gateway.Services, study string) <-chan error {
	deleted := make(chan error, 1)
	go func() {
		_, _, err := svc.Delete.Delete(context.WithoutCancel(t.Context()), recordsOfficer, study, "", "")
		deleted <- err
	}()
	return deleted
}

// deletesHeldBack is a blob store whose Delete waits for release once
// started is closed: a deletion caught half way, which a real store does not
// stop at on request.
type deletesHeldBack struct {
	gateway.BlobStore
	once    sync.Once
	started chan struct{}
	release chan struct{}
}

func (d *deletesHeldBack) Delete(ctx context.Context, key string) error {
	d.once.Do(func() { close(d.started) })
	select {
	case <-d.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return d.BlobStore.Delete(ctx, key)
}

// TestHoldWaitsForADeleteUnderWay: a hold asked for while the study is
// being deleted is stored only once the deletion has ended, so an answer
// "hold set" never comes while the study it protects is going; and a
// deletion under way keeps a hold waiting no longer than its bound.
func TestHoldWaitsForADeleteUnderWay(t *testing.T) {
	forEachBackend(t, func(t *testing.T, kind string) {
		e := newRetentionEnv(t, kind, gateway.RetentionPolicy{})
		const study = "1.2.826.4.8"
		e.putStudy(t, study, "CT", 3, 100, day)
		blobs := &deletesHeldBack{BlobStore: e.b.Blobs, started: make(chan struct{}), release: make(chan struct{})}
		svc := e.servicesWith(blobs, e.b.Holds)
		deleted := deleteInBackground(t, svc, study)
		<-blobs.started

		// While the delete is held back, a hold with a short deadline is
		// not set: it waits for the study's lease and gives up.
		short, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		_, err := svc.Retention.SetHold(short, recordsOfficer, study, "litigation 2026/18")
		cancel()
		if err == nil {
			t.Fatal("a hold was set while the study was being deleted")
		}
		if _, err := e.b.Holds.GetHold(t.Context(), study); !errors.Is(err, gateway.ErrNotFound) {
			t.Fatalf("hold stored while the study was being deleted: %v", err)
		}

		held := make(chan error, 1)
		go func() {
			_, err := svc.Retention.SetHold(t.Context(), recordsOfficer, study, "litigation 2026/18")
			held <- err
		}()
		close(blobs.release)
		if err := <-held; err != nil {
			t.Fatalf("hold after the delete: %v", err)
		}
		// The hold got the lease only after the delete's last removal.
		if n := len(e.instances(t, study)); n != 0 {
			t.Errorf("hold answered while %d instances of the study were still being deleted", n)
		}
		if err := <-deleted; err != nil {
			t.Fatalf("delete: %v", err)
		}
		if _, err := e.b.Holds.GetHold(t.Context(), study); err != nil {
			t.Fatalf("hold not stored after the delete ended: %v", err)
		}
	})
}

// holdSetAfterCheck is a hold store in which an admin sets a hold on study
// right after retention's last check before the deletion found none: the
// window a real run leaves between its check and its delete.
type holdSetAfterCheck struct {
	gateway.HoldStore
	study  string
	checks int
}

func (h *holdSetAfterCheck) GetHold(ctx context.Context, study string) (*gateway.Hold, error) {
	got, err := h.HoldStore.GetHold(ctx, study)
	if study == h.study {
		// The plan's check, then the run's: the hold lands after that.
		if h.checks++; h.checks == 2 {
			if perr := h.PutHold(ctx, gateway.Hold{StudyInstanceUID: study, Reason: "litigation 2026/19", SetBy: "records-officer", SetAt: retentionNow}); perr != nil {
				return nil, perr
			}
		}
	}
	return got, err
}

// TestRetentionRefusesAHoldSetDuringItsRun: a hold set after the run's own
// check of a study but before its deletion keeps the study: the deletion
// checks again under the study's lease and the run counts it as held.
func TestRetentionRefusesAHoldSetDuringItsRun(t *testing.T) {
	forEachBackend(t, func(t *testing.T, kind string) {
		e := newRetentionEnv(t, kind, gateway.RetentionPolicy{MaxAge: 30 * day})
		const study = "1.2.826.4.9"
		e.putStudy(t, study, "CT", 2, 100, 60*day)
		holds := &holdSetAfterCheck{HoldStore: e.b.Holds, study: study}
		svc := gateway.NewServices(gateway.ServiceDeps{
			Name: "hampshire", Blobs: e.b.Blobs, Index: e.b.Index, Auditor: e.b.AuditLog, AuditLog: e.b.AuditLog,
			Holds: holds, Retention: gateway.RetentionPolicy{MaxAge: 30 * day}, Now: func() time.Time { return retentionNow },
		})
		rep := e.run(t, svc.Retention)
		if rep.Deleted != 0 || !e.stored(t, study) {
			t.Fatalf("run %+v deleted a study held before its deletion", rep)
		}
		if holds.checks != 3 {
			t.Errorf("%d hold checks, want 3 (plan, run, delete)", holds.checks)
		}
		if len(rep.Plan.Delete) != 1 || rep.Plan.Delete[0].Skipped != gateway.RetentionSkipHeld {
			t.Errorf("plan after the run: %+v, want the study skipped as held", rep.Plan.Delete)
		}
		var refused int
		for _, ev := range e.events(t, gateway.RetentionActor, gateway.ActionDelete) {
			if ev.Outcome == gateway.OutcomeFailure && ev.Detail["hold_set_by"] == "records-officer" {
				refused++
			}
		}
		if refused != 1 {
			t.Errorf("%d refused deletes by retention audited, want 1", refused)
		}
	})
}

// holdsCheckedSlowly is a hold store whose first GetHold of study waits
// for release after reading: a delete caught between its hold check and
// its removals.
type holdsCheckedSlowly struct {
	gateway.HoldStore
	study   string
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func (h *holdsCheckedSlowly) GetHold(ctx context.Context, study string) (*gateway.Hold, error) {
	got, err := h.HoldStore.GetHold(ctx, study)
	if study == h.study {
		h.once.Do(func() {
			close(h.entered)
			<-h.release
		})
	}
	return got, err
}

// TestHoldCheckedUnderTheLease: the delete checks for a hold under the
// study's lease, so a hold asked for while the delete is checking waits
// (here, past its deadline) instead of being answered while the delete,
// having found none, goes on to remove the study.
func TestHoldCheckedUnderTheLease(t *testing.T) {
	forEachBackend(t, func(t *testing.T, kind string) {
		e := newRetentionEnv(t, kind, gateway.RetentionPolicy{})
		const study = "1.2.826.4.10"
		e.putStudy(t, study, "CT", 2, 100, day)
		holds := &holdsCheckedSlowly{HoldStore: e.b.Holds, study: study, entered: make(chan struct{}), release: make(chan struct{})}
		svc := e.servicesWith(e.b.Blobs, holds)
		deleted := deleteInBackground(t, svc, study)
		<-holds.entered
		short, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		_, herr := svc.Retention.SetHold(short, recordsOfficer, study, "litigation 2026/20")
		cancel()
		close(holds.release)
		if err := <-deleted; err != nil {
			t.Fatalf("delete: %v", err)
		}
		if herr == nil {
			t.Fatalf("hold answered while the delete was checking for one; the study is then stored = %v", e.stored(t, study))
		}
		if e.stored(t, study) {
			t.Error("the delete that found no hold left the study")
		}
	})
}

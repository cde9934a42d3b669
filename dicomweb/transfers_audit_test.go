package dicomweb_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// startedAuditDown refuses transfer.started events while down is set: a
// fault (an audit log that fails for one kind of write) a real log cannot
// produce on demand. Other events go to the centre's recorder.
type startedAuditDown struct {
	next    gateway.Auditor
	down    atomic.Bool
	refused atomic.Int64
}

func (a *startedAuditDown) Record(ctx context.Context, ev *gateway.AuditEvent) error {
	if a.down.Load() && ev.Action == gateway.ActionTransferStarted {
		a.refused.Add(1)
		return errors.New("audit log unavailable")
	}
	return a.next.Record(ctx, ev)
}

// TestTransferNotSentWithoutStartedAudit checks that a transfer whose
// transfer.started event cannot be written sends nothing (fail closed, as a
// retrieve is refused when its read cannot be audited), keeps retrying, and
// runs once the audit log is back, with exactly one transfer.started.
func TestTransferNotSentWithoutStartedAudit(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			hampshire, surrey := newCentre(t, "hampshire", backend), newCentre(t, "surrey", backend)
			hampshire.transfers.Peers = []gateway.Peer{peerOf(surrey)}
			gate := &startedAuditDown{next: hampshire.audit}
			gate.down.Store(true)
			hampshire.transfers.Auditor = gate
			hampshire.start(t)
			ins := hampshire.store(t, synth.StudySpec{Seed: 1601, Series: 1, InstancesPerSeries: 3})

			created := hampshire.create(t, ins[0].StudyInstanceUID, "surrey", gateway.PriorityNormal)
			deadline := time.Now().Add(30 * time.Second)
			for gate.refused.Load() < 3 {
				if time.Now().After(deadline) {
					t.Fatalf("transfer.started tried %d times in 30 s, want 3 attempts", gate.refused.Load())
				}
				time.Sleep(10 * time.Millisecond)
			}
			var tr gateway.Transfer
			if code := hampshire.api(t, http.MethodGet, "/api/v1/transfers/"+created.ID, nil, &tr); code != http.StatusOK {
				t.Fatalf("GET transfer = %d", code)
			}
			if tr.State.Terminal() || tr.InstancesSent != 0 || !strings.Contains(tr.LastError, "could not be audited") {
				t.Errorf("transfer while its start cannot be audited: state %s, sent %d, last_error %q; want waiting, nothing sent, the reason", tr.State, tr.InstancesSent, tr.LastError)
			}
			assertNothingStored(t, surrey, ins)

			gate.down.Store(false)
			done := hampshire.wait(t, created.ID, 30*time.Second)
			if done.State != gateway.StateCompleted {
				t.Fatalf("state %s (%s) after the audit log came back, want completed", done.State, done.LastError)
			}
			assertArrived(t, surrey, ins)
			if got := len(hampshire.audit.find(gateway.ActionTransferStarted)); got != 1 {
				t.Errorf("transfer.started events: %d, want 1", got)
			}
		})
	}
}

// TestTransferStartedNamesEveryPatientSent: an instance of another patient
// that arrives in the study after its transfer was created (a mis-filed
// instance: the gateway stores it and flags the conflict) is sent with the
// study, and transfer.started names both patients, so "who was sent
// patient B's images" finds it.
func TestTransferStartedNamesEveryPatientSent(t *testing.T) {
	hampshire, surrey := newCentre(t, "hampshire", "embedded"), newCentre(t, "surrey", "embedded")
	hampshire.transfers.Peers = []gateway.Peer{peerOf(surrey)}
	ins := hampshire.store(t, synth.StudySpec{Seed: 1602, Series: 1, InstancesPerSeries: 2})
	created := hampshire.create(t, ins[0].StudyInstanceUID, "surrey", gateway.PriorityNormal)
	other := ins[0]
	other.SOPInstanceUID += ".99"
	other.PatientID = "OTHER-PATIENT-B"
	if _, err := hampshire.ingester.Store(t.Context(), bytes.NewReader(encoded(t, other)), gateway.StoreOptions{}); err != nil {
		t.Fatal(err)
	}
	hampshire.start(t)
	if tr := hampshire.wait(t, created.ID, 30*time.Second); tr.State != gateway.StateCompleted || tr.InstancesSent != 3 {
		t.Fatalf("transfer: state %s, sent %d; want completed with 3", tr.State, tr.InstancesSent)
	}
	started := hampshire.audit.await(gateway.ActionTransferStarted, 1)
	if len(started) != 1 || !slices.Contains(started[0].PatientIDs, ins[0].PatientID) || !slices.Contains(started[0].PatientIDs, "OTHER-PATIENT-B") {
		t.Fatalf("transfer.started events %+v; want one naming %s and OTHER-PATIENT-B", started, ins[0].PatientID)
	}
	for _, action := range []string{gateway.ActionTransferComplete, gateway.ActionTransferVerified} {
		evs := hampshire.audit.await(action, 1)
		if len(evs) != 1 || !slices.Contains(evs[0].PatientIDs, "OTHER-PATIENT-B") {
			t.Errorf("%s events %+v; want one naming OTHER-PATIENT-B", action, evs)
		}
	}
}

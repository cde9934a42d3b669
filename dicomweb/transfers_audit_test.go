package dicomweb_test

import (
	"context"
	"errors"
	"net/http"
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

package dicomweb_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// gathered returns the value of the series name{label=value} on reg, and
// whether it exists.
func gathered(t *testing.T, reg *prometheus.Registry, name, label, value string) (float64, bool) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					if g := m.GetGauge(); g != nil {
						return g.GetValue(), true
					}
					return m.GetCounter().GetValue(), true
				}
			}
		}
	}
	return 0, false
}

// TestTransferMetricsCountStateChanges: the transfer counters follow the
// state changes as they happen (create, cancel, retry, run, complete),
// every state's series exists from the start, and bytes sent per peer add
// up to what the transfers report.
func TestTransferMetricsCountStateChanges(t *testing.T) {
	hampshire, surrey := newCentre(t, "hampshire", "embedded"), newCentre(t, "surrey", "embedded")
	hampshire.transfers.Peers = []gateway.Peer{peerOf(surrey)}
	reg := prometheus.NewRegistry()
	reg.MustRegister(dicomweb.NewTransferCollector(hampshire.transfers))
	for _, st := range gateway.TransferStates() {
		if v, ok := gathered(t, reg, "gateway_transfer_state_changes_total", "state", string(st)); !ok || v != 0 {
			t.Errorf("before any transfer: state_changes{%s} = %v (present %v), want 0", st, v, ok)
		}
	}

	ins := hampshire.store(t, synth.StudySpec{Seed: 611, Series: 1, InstancesPerSeries: 3, Rows: 32, Columns: 32})
	study := ins[0].StudyInstanceUID
	first := hampshire.create(t, study, "surrey", gateway.PriorityNormal)
	second := hampshire.create(t, study, "surrey", gateway.PriorityUrgent)
	if status := hampshire.api(t, http.MethodPost, "/api/v1/transfers/"+second.ID+"/cancel", nil, nil); status != http.StatusOK {
		t.Fatalf("cancel = %d", status)
	}
	if v, _ := gathered(t, reg, "gateway_transfer_state_changes_total", "state", "cancelled"); v != 1 {
		t.Errorf("after a cancel: state_changes{cancelled} = %v, want 1", v)
	}
	if v, _ := gathered(t, reg, "gateway_transfer_queue_depth", "priority", "normal"); v != 1 {
		t.Errorf("queue depth normal = %v, want 1 (the second transfer was cancelled)", v)
	}
	if status := hampshire.api(t, http.MethodPost, "/api/v1/transfers/"+second.ID+"/retry", nil, nil); status != http.StatusAccepted {
		t.Fatalf("retry = %d", status)
	}
	hampshire.start(t)
	var sent int64
	for _, id := range []string{first.ID, second.ID} {
		tr := hampshire.wait(t, id, 30*time.Second)
		if tr.State != gateway.StateCompleted {
			t.Fatalf("transfer %s: %s (%s)", id, tr.State, tr.LastError)
		}
		sent += tr.BytesSent
	}

	count := func(st gateway.TransferState) float64 {
		v, _ := gathered(t, reg, "gateway_transfer_state_changes_total", "state", string(st))
		return v
	}
	// The worker counts a completion after its record is written, so the
	// poll above can see the record a moment before the counter moves.
	if !eventually(func() bool { return count(gateway.StateCompleted) >= 2 }) || count(gateway.StateCompleted) != 2 {
		t.Errorf("state_changes{completed} = %v, want 2", count(gateway.StateCompleted))
	}
	if got := count(gateway.StateFailed); got != 0 {
		t.Errorf("state_changes{failed} = %v, want 0", got)
	}
	if got := count(gateway.StateCancelled); got != 1 {
		t.Errorf("state_changes{cancelled} = %v, want 1", got)
	}
	// Every start takes a queued transfer, every queued one is started or
	// cancelled: two creates and a retry (plus one per automatic retry).
	if queued, running := count(gateway.StateQueued), count(gateway.StateRunning); queued < 3 || queued != running+1 {
		t.Errorf("state_changes queued = %v, running = %v; want at least 3 and running+1", queued, running)
	}
	if got, _ := gathered(t, reg, "gateway_transfer_sent_bytes_total", "peer", "surrey"); got != float64(sent) {
		t.Errorf("sent_bytes{surrey} = %v, want %d", got, sent)
	}
}

package dicomweb_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// centre is one gateway built in-process on real backends: blob store,
// index and transfer queue, the HTTP server on loopback, and its transfer
// workers (not started until start is called).
type centre struct {
	name      string
	blobs     gateway.BlobStore
	index     gateway.Index
	queue     gateway.Queue
	ingester  *gateway.Ingester
	transfers *gateway.Transfers
	handler   http.Handler
	http      *httptest.Server
	audit     *transferAudit
}

// transferAudit keeps the audit events a centre's transfers record.
type transferAudit struct {
	mu     sync.Mutex
	events []gateway.AuditEvent
}

func (a *transferAudit) Record(_ context.Context, ev *gateway.AuditEvent) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events = append(a.events, *ev)
	return nil
}

func (a *transferAudit) find(action string) []gateway.AuditEvent {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []gateway.AuditEvent
	for _, ev := range a.events {
		if ev.Action == action {
			out = append(out, ev)
		}
	}
	return out
}

// await is find for events the worker writes just after the state change a
// test waited for (the queue records completion first, then the audit
// follows): it waits up to five seconds for want events of action.
func (a *transferAudit) await(action string, want int) []gateway.AuditEvent {
	deadline := time.Now().Add(5 * time.Second)
	for {
		evs := a.find(action)
		if len(evs) >= want || time.Now().After(deadline) {
			return evs
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// backends names the two backend families every transfer test runs on.
var backends = []string{"embedded", "production"}

// newCentre builds a centre on the given backend family. Its transfer
// workers retry fast (tens of milliseconds) and heartbeat often.
func newCentre(t testing.TB, name, backend string, configure ...func(*testWiring)) *centre {
	t.Helper()
	c := &centre{name: name}
	b := backendtest.Open(t, backend, backendtest.Options{GatewayName: name, Queue: gateway.QueueOptions{VisibilityTimeout: 2 * time.Second}})
	c.blobs, c.index, c.queue = b.Blobs, b.Index, b.Queue
	c.audit = &transferAudit{}
	c.transfers = &gateway.Transfers{
		Name: name, Queue: c.queue, Index: c.index, Sender: dicomweb.NewClient(c.blobs), Auditor: c.audit,
		Workers: 2, Heartbeat: 200 * time.Millisecond,
		RetryPolicy: gateway.RetryPolicy{Base: 20 * time.Millisecond, Max: 200 * time.Millisecond, MaxAttempts: 100},
	}
	w := testWiring{ServiceDeps: gateway.ServiceDeps{Name: name, Blobs: c.blobs, Index: c.index, Ingester: &gateway.Ingester{Blobs: c.blobs, Index: c.index}, Transfers: c.transfers}}
	for _, f := range configure {
		f(&w)
	}
	c.ingester = w.Ingester
	c.handler = w.server().Handler()
	c.http = httptest.NewServer(c.handler)
	t.Cleanup(c.http.Close)
	return c
}

// encoded returns the bytes of a synthetic instance.
func encoded(t testing.TB, in synth.Instance) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := in.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// peerOf is the peer entry that points at c's DICOMweb root.
func peerOf(c *centre) gateway.Peer {
	return gateway.Peer{Name: c.name, URL: c.http.URL + "/dicomweb", Gateway: true, MaxParallel: 2, MaxRequestBytes: 20 << 10}
}

// start runs c's transfer workers until the test ends.
func (c *centre) start(t testing.TB) {
	t.Helper()
	if err := c.transfers.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.transfers.Close(ctx); err != nil {
			t.Error(err)
		}
	})
}

// store ingests a synthetic study directly and returns its instances.
func (c *centre) store(t testing.TB, spec synth.StudySpec) []synth.Instance {
	t.Helper()
	ins := synth.Study(spec)
	for _, in := range ins {
		if _, err := c.ingester.Store(t.Context(), bytes.NewReader(encoded(t, in)), gateway.StoreOptions{}); err != nil {
			t.Fatalf("store %s: %v", in.SOPInstanceUID, err)
		}
	}
	return ins
}

// api calls c's admin API and decodes the JSON answer into out.
func (c *centre) api(t testing.TB, method, path string, in, out any) int {
	t.Helper()
	var body io.Reader
	if in != nil {
		data, _ := json.Marshal(in)
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, c.http.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, data)
		}
	}
	return resp.StatusCode
}

// create asks c's API for a transfer of study to peer.
func (c *centre) create(t testing.TB, study, peer string, p gateway.Priority) *gateway.Transfer {
	t.Helper()
	var tr gateway.Transfer
	if status := c.api(t, http.MethodPost, "/api/v1/transfers", map[string]any{"study_uid": study, "destination": peer, "priority": p}, &tr); status != http.StatusAccepted {
		t.Fatalf("POST /api/v1/transfers = %d, want 202", status)
	}
	if tr.State != gateway.StateQueued || tr.ID == "" || tr.StudyUID != study || tr.Destination != peer {
		t.Fatalf("created transfer %+v", tr)
	}
	return &tr
}

// wait polls the transfer until it reaches a terminal state.
func (c *centre) wait(t testing.TB, id string, within time.Duration) *gateway.Transfer {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var tr gateway.Transfer
		if status := c.api(t, http.MethodGet, "/api/v1/transfers/"+id, nil, &tr); status != http.StatusOK {
			t.Fatalf("GET transfer = %d", status)
		}
		if tr.State.Terminal() {
			return &tr
		}
		if time.Now().After(deadline) {
			t.Fatalf("transfer %s still %s after %v: %+v", id, tr.State, within, tr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// assertArrived checks that every instance is stored at dst byte for byte.
func assertArrived(t testing.TB, dst *centre, ins []synth.Instance) {
	t.Helper()
	for _, in := range ins {
		rec, err := dst.index.GetInstance(t.Context(), in.SOPInstanceUID)
		if err != nil {
			t.Fatalf("%s at %s: %v", in.SOPInstanceUID, dst.name, err)
		}
		rc, err := dst.blobs.Get(t.Context(), rec.Key(), 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, encoded(t, in)) {
			t.Errorf("%s at %s differs from the original (%d bytes, want %d)", in.SOPInstanceUID, dst.name, len(got), len(encoded(t, in)))
		}
	}
}

// TestTransferArrivesByteIdentical sends a two-series study from hampshire
// to surrey over STOW-RS in several batches and checks that it completes,
// verified by QIDO-RS and SHA-256, with every instance byte-identical.
func TestTransferArrivesByteIdentical(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			hampshire, surrey := newCentre(t, "hampshire", backend), newCentre(t, "surrey", backend)
			hampshire.transfers.Peers = []gateway.Peer{peerOf(surrey)}
			hampshire.start(t)
			ins := hampshire.store(t, synth.StudySpec{Seed: 601, Series: 2, InstancesPerSeries: 4, Rows: 64, Columns: 64, Frames: 2})
			var total int64
			for _, in := range ins {
				total += in.Size()
			}

			created := hampshire.create(t, ins[0].StudyInstanceUID, "surrey", gateway.PriorityNormal)
			tr := hampshire.wait(t, created.ID, 30*time.Second)
			if tr.State != gateway.StateCompleted {
				t.Fatalf("state %s (%s), want completed", tr.State, tr.LastError)
			}
			if got, want := tr.InstancesSent, len(ins); got != want {
				t.Errorf("instances_sent=%d, want %d", got, want)
			}
			if got, want := tr.InstancesTotal, len(ins); got != want {
				t.Errorf("instances_total=%d, want %d", got, want)
			}
			if got, want := tr.BytesSent, total; got != want {
				t.Errorf("bytes_sent=%d, want %d", got, want)
			}
			if tr.Verified == nil || !*tr.Verified {
				t.Errorf("verified=%v, want true", tr.Verified)
			}
			if want := fmt.Sprintf("sha256: %d/%d identical", len(ins), len(ins)); !strings.Contains(tr.Verification, want) {
				t.Errorf("verification %q, want it to contain %q", tr.Verification, want)
			}
			if tr.CompletedAt == nil || tr.Attempts != 1 {
				t.Errorf("completed_at=%v attempts=%d, want a time and 1", tr.CompletedAt, tr.Attempts)
			}
			if got, want := len(tr.Instances), len(ins); got != want {
				t.Errorf("%d per-instance entries, want %d", got, want)
			}
			assertArrived(t, surrey, ins)
			for _, action := range []string{gateway.ActionTransferCreated, gateway.ActionTransferStarted, gateway.ActionTransferComplete, gateway.ActionTransferVerified} {
				evs := hampshire.audit.await(action, 1)
				if len(evs) != 1 {
					t.Errorf("%d %s audit events, want 1", len(evs), action)
					continue
				}
				if got := evs[0].PatientIDs; len(got) != 1 || got[0] != ins[0].PatientID {
					t.Errorf("%s audit event patient IDs = %v, want [%s]: who sent this patient's images must be answerable", action, got, ins[0].PatientID)
				}
			}

			var list struct {
				Transfers []gateway.Transfer `json:"transfers"`
			}
			hampshire.api(t, http.MethodGet, "/api/v1/transfers?state=completed&destination=surrey", nil, &list)
			if len(list.Transfers) != 1 || list.Transfers[0].ID != tr.ID {
				t.Errorf("list completed = %+v, want %s", list.Transfers, tr.ID)
			}
		})
	}
}

// TestTransferDestinationDownThenUp starts a transfer while surrey does not
// listen; it retries with backoff and completes once surrey is up.
func TestTransferDestinationDownThenUp(t *testing.T) {
	hampshire := newCentre(t, "hampshire", "embedded")
	surrey := newCentre(t, "surrey", "embedded")
	// Take surrey's address and stop listening on it.
	addr := surrey.http.Listener.Addr().String()
	surrey.http.Close()
	peer := peerOf(surrey)
	peer.URL = "http://" + addr + "/dicomweb"
	hampshire.transfers.Peers = []gateway.Peer{peer}
	hampshire.start(t)
	ins := hampshire.store(t, synth.StudySpec{Seed: 602, Series: 2, InstancesPerSeries: 2})
	created := hampshire.create(t, ins[0].StudyInstanceUID, "surrey", gateway.PriorityUrgent)

	deadline := time.Now().Add(10 * time.Second)
	for {
		tr, err := hampshire.transfers.Get(t.Context(), created.ID)
		if err != nil {
			t.Fatal(err)
		}
		if tr.Attempts >= 3 {
			if tr.State.Terminal() {
				t.Fatalf("transfer ended %s while the destination was down: %s", tr.State, tr.LastError)
			}
			if !strings.Contains(tr.LastError, "surrey") {
				t.Errorf("last_error %q does not name the peer", tr.LastError)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no retries seen: %+v", tr)
		}
		time.Sleep(10 * time.Millisecond)
	}

	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen again on %s: %v", addr, err)
	}
	up := &httptest.Server{Listener: l, Config: &http.Server{Handler: surrey.handler}}
	up.Start()
	t.Cleanup(up.Close)

	tr := hampshire.wait(t, created.ID, 30*time.Second)
	if tr.State != gateway.StateCompleted {
		t.Fatalf("state %s (%s), want completed", tr.State, tr.LastError)
	}
	if tr.Attempts < 3 {
		t.Errorf("attempts=%d, want at least 3", tr.Attempts)
	}
	assertArrived(t, surrey, ins)
	if got := hampshire.transfers.Stats().Retries["surrey"]; got < 2 {
		t.Errorf("retries counted for surrey = %d, want at least 2", got)
	}
}

// leaseLostOnSave is a queue on which every Save after the first (the one
// that marks the transfer running) finds the lease gone, as after the
// lease ran out and another replica took the transfer over (Extend still
// succeeds: the heartbeat does not notice first).
type leaseLostOnSave struct {
	gateway.Queue
	saves atomic.Int32
}

func (q *leaseLostOnSave) Save(ctx context.Context, l *gateway.Lease, t *gateway.Transfer) error {
	if q.saves.Add(1) == 1 {
		return q.Queue.Save(ctx, l, t)
	}
	return fmt.Errorf("lease no longer held: %w", gateway.ErrConflict)
}

// stallingSender confirms the first instance of a send and then waits for
// the send to be stopped, up to ten seconds, recording whether it was.
type stallingSender struct {
	gateway.Sender
	stopped chan error
}

func (s stallingSender) Send(ctx context.Context, _ gateway.Peer, _ gateway.SendHeader, ins []*gateway.InstanceRecord, report func([]gateway.SendResult)) error {
	report([]gateway.SendResult{{SOPInstanceUID: ins[0].SOPInstanceUID, OK: true, Bytes: ins[0].Size}})
	select {
	case <-ctx.Done():
		s.stopped <- context.Cause(ctx)
	case <-time.After(10 * time.Second):
		s.stopped <- nil
	}
	return ctx.Err()
}

// TestTransferStopsSendingWhenASaveFindsTheLeaseLost: a worker whose Save
// finds that another replica took its transfer over stops sending at once,
// not when the send ends.
func TestTransferStopsSendingWhenASaveFindsTheLeaseLost(t *testing.T) {
	hampshire := newCentre(t, "hampshire", "embedded")
	stalled := stallingSender{Sender: hampshire.transfers.Sender, stopped: make(chan error, 1)}
	hampshire.transfers.Sender = stalled
	hampshire.transfers.Queue = &leaseLostOnSave{Queue: hampshire.queue}
	hampshire.transfers.Peers = []gateway.Peer{{Name: "surrey", URL: "http://127.0.0.1:9/dicomweb"}}
	hampshire.start(t)
	ins := hampshire.store(t, synth.StudySpec{Seed: 606, Series: 1, InstancesPerSeries: 2})
	hampshire.create(t, ins[0].StudyInstanceUID, "surrey", gateway.PriorityNormal)
	select {
	case cause := <-stalled.stopped:
		if !errors.Is(cause, gateway.ErrConflict) {
			t.Fatalf("the send ended with cause %v; want it stopped because the lease was lost", cause)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no send was made")
	}
}

// TestTransferRetriesForTimeNotCount: by default the retry limit is time
// (RetryPolicy.MaxAge, --transfer-retry-for), not a count of attempts: a
// transfer to a peer that is down keeps trying past the 50 attempts that
// once ended it, and fails only when its time is up, saying so.
func TestTransferRetriesForTimeNotCount(t *testing.T) {
	hampshire := newCentre(t, "hampshire", "embedded")
	hampshire.transfers.RetryPolicy = gateway.RetryPolicy{Base: time.Millisecond, Max: 2 * time.Millisecond, MaxAge: 3 * time.Second}
	down := newCentre(t, "surrey", "embedded")
	peer := peerOf(down)
	down.http.Close()
	hampshire.transfers.Peers = []gateway.Peer{peer}
	hampshire.start(t)
	ins := hampshire.store(t, synth.StudySpec{Seed: 605, Series: 1, InstancesPerSeries: 1})
	created := hampshire.create(t, ins[0].StudyInstanceUID, "surrey", gateway.PriorityNormal)
	tr := hampshire.wait(t, created.ID, 30*time.Second)
	if tr.State != gateway.StateFailed || tr.Attempts <= 50 || !strings.Contains(tr.LastError, "gave up after trying for") {
		t.Fatalf("transfer to a peer down: state %s after %d attempts (%s); want failed after more than 50, for its time",
			tr.State, tr.Attempts, tr.LastError)
	}
}

// TestTransferRefusedInstances: surrey already holds two of the study's SOP
// Instance UIDs with other bytes, so it refuses them (0x0111); the transfer
// ends failed with the refusals listed, and the other instances arrive.
func TestTransferRefusedInstances(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			hampshire, surrey := newCentre(t, "hampshire", backend), newCentre(t, "surrey", backend)
			hampshire.transfers.Peers = []gateway.Peer{peerOf(surrey)}
			hampshire.start(t)
			spec := synth.StudySpec{Seed: 603, Series: 2, InstancesPerSeries: 3}
			ins := hampshire.store(t, spec)
			clash := []synth.Instance{ins[1], ins[4]}
			for _, in := range clash {
				in.PixelSeed++ // same UIDs, other pixels
				if _, err := surrey.ingester.Store(t.Context(), bytes.NewReader(encoded(t, in)), gateway.StoreOptions{}); err != nil {
					t.Fatal(err)
				}
			}

			created := hampshire.create(t, ins[0].StudyInstanceUID, "surrey", gateway.PriorityNormal)
			tr := hampshire.wait(t, created.ID, 30*time.Second)
			if tr.State != gateway.StateFailed {
				t.Fatalf("state %s, want failed", tr.State)
			}
			if got, want := tr.InstancesSent, len(ins)-2; got != want {
				t.Errorf("instances_sent=%d, want %d", got, want)
			}
			if got, want := tr.InstancesFailed, 2; got != want {
				t.Errorf("instances_failed=%d, want %d", got, want)
			}
			if !strings.Contains(tr.LastError, "surrey refused 2 of 6 instances") || !strings.Contains(tr.LastError, "already stored") {
				t.Errorf("last_error %q does not explain the refusal", tr.LastError)
			}
			got := map[string]gateway.InstanceProgress{}
			for _, f := range tr.Failures {
				got[f.SOPInstanceUID] = f
			}
			for _, in := range clash {
				f, ok := got[in.SOPInstanceUID]
				if !ok {
					t.Errorf("failures do not list %s: %+v", in.SOPInstanceUID, tr.Failures)
					continue
				}
				if f.ReasonCode != gateway.ReasonDuplicateRejected {
					t.Errorf("%s reason 0x%04X, want 0x%04X", in.SOPInstanceUID, f.ReasonCode, gateway.ReasonDuplicateRejected)
				}
			}
			assertArrived(t, surrey, []synth.Instance{ins[0], ins[2], ins[3], ins[5]})

			// An admin retry sends only the refused instances, which are
			// refused again.
			var retried gateway.Transfer
			if status := hampshire.api(t, http.MethodPost, "/api/v1/transfers/"+tr.ID+"/retry", nil, &retried); status != http.StatusAccepted {
				t.Fatalf("retry = %d, want 202", status)
			}
			again := hampshire.wait(t, tr.ID, 30*time.Second)
			if again.State != gateway.StateFailed || again.Attempts != 1 || again.InstancesFailed != 2 || again.InstancesSent != 4 {
				t.Errorf("after retry: state %s attempts %d failed %d sent %d", again.State, again.Attempts, again.InstancesFailed, again.InstancesSent)
			}
		})
	}
}

// refusalNotRecordedOnce is a queue whose first write of progress that
// holds a refusal fails, as a Redis blip would (a fault a real server is
// not made to produce on cue).
type refusalNotRecordedOnce struct {
	gateway.Queue
	mu     sync.Mutex
	failed bool
}

func (q *refusalNotRecordedOnce) SetInstances(ctx context.Context, id string, ps []gateway.InstanceProgress) error {
	q.mu.Lock()
	fail := !q.failed && slices.ContainsFunc(ps, func(p gateway.InstanceProgress) bool { return p.State == gateway.InstanceRefused })
	q.failed = q.failed || fail
	q.mu.Unlock()
	if fail {
		return fmt.Errorf("progress write lost: %w", gateway.ErrUnavailable)
	}
	return q.Queue.SetInstances(ctx, id, ps)
}

// TestTransferRefusalSurvivesALostProgressWrite: when the progress write
// of a batch holding a refusal fails, the attempt does not go on to verify
// and complete (the peer lists the refused UID, with other bytes): it is
// repeated, the refusal is recorded, and the transfer fails.
func TestTransferRefusalSurvivesALostProgressWrite(t *testing.T) {
	hampshire, surrey := newCentre(t, "hampshire", "embedded"), newCentre(t, "surrey", "embedded")
	hampshire.transfers.Peers = []gateway.Peer{peerOf(surrey)}
	hampshire.transfers.Queue = &refusalNotRecordedOnce{Queue: hampshire.queue}
	hampshire.start(t)
	ins := hampshire.store(t, synth.StudySpec{Seed: 604, Series: 1, InstancesPerSeries: 3})
	clash := ins[1]
	clash.PixelSeed++ // same UIDs, other pixels
	if _, err := surrey.ingester.Store(t.Context(), bytes.NewReader(encoded(t, clash)), gateway.StoreOptions{}); err != nil {
		t.Fatal(err)
	}
	created := hampshire.create(t, ins[0].StudyInstanceUID, "surrey", gateway.PriorityNormal)
	tr := hampshire.wait(t, created.ID, 30*time.Second)
	if tr.State != gateway.StateFailed || tr.InstancesFailed != 1 || (tr.Verified != nil && *tr.Verified) {
		t.Fatalf("transfer %s: state %s, failed %d, verified %v; want failed with the refusal recorded, not verified",
			tr.ID, tr.State, tr.InstancesFailed, tr.Verified)
	}
}

// TestTransferAPI checks the admin API's answers for bad requests and
// state conflicts.
func TestTransferAPI(t *testing.T) {
	hampshire, surrey := newCentre(t, "hampshire", "embedded"), newCentre(t, "surrey", "embedded")
	peer := peerOf(surrey)
	peer.Token = "s3cret-token"
	hampshire.transfers.Peers = []gateway.Peer{peer}
	ins := hampshire.store(t, synth.StudySpec{Seed: 604})
	study := ins[0].StudyInstanceUID

	for _, tt := range []struct {
		body map[string]any
		want int
	}{
		{map[string]any{"study_uid": study, "destination": "nowhere"}, http.StatusBadRequest},
		{map[string]any{"study_uid": "1.2.x", "destination": "surrey"}, http.StatusBadRequest},
		{map[string]any{"study_uid": study, "destination": "surrey", "priority": "asap"}, http.StatusBadRequest},
		{map[string]any{"study_uid": study, "destination": "surrey", "colour": "red"}, http.StatusBadRequest},
		{map[string]any{"study_uid": "1.2.3.4.5", "destination": "surrey"}, http.StatusNotFound},
	} {
		if got := hampshire.api(t, http.MethodPost, "/api/v1/transfers", tt.body, nil); got != tt.want {
			t.Errorf("POST %v = %d, want %d", tt.body, got, tt.want)
		}
	}
	for _, path := range []string{"/api/v1/transfers/tr-unknown", "/api/v1/transfers/tr-unknown/cancel"} {
		method := http.MethodGet
		if strings.HasSuffix(path, "cancel") {
			method = http.MethodPost
		}
		if got := hampshire.api(t, method, path, nil, nil); got != http.StatusNotFound {
			t.Errorf("%s %s = %d, want 404", method, path, got)
		}
	}
	if got := hampshire.api(t, http.MethodGet, "/api/v1/transfers?state=done", nil, nil); got != http.StatusBadRequest {
		t.Errorf("list with a bad state = %d, want 400", got)
	}

	// Workers are not running: the transfer stays queued until cancelled.
	tr := hampshire.create(t, study, "surrey", gateway.PriorityNormal)
	if got := hampshire.api(t, http.MethodPost, "/api/v1/transfers/"+tr.ID+"/retry", nil, nil); got != http.StatusConflict {
		t.Errorf("retry of a queued transfer = %d, want 409", got)
	}
	var cancelled gateway.Transfer
	if got := hampshire.api(t, http.MethodPost, "/api/v1/transfers/"+tr.ID+"/cancel", nil, &cancelled); got != http.StatusOK || cancelled.State != gateway.StateCancelled {
		t.Errorf("cancel = %d %s, want 200 cancelled", got, cancelled.State)
	}
	if got := hampshire.api(t, http.MethodPost, "/api/v1/transfers/"+tr.ID+"/cancel", nil, nil); got != http.StatusConflict {
		t.Errorf("second cancel = %d, want 409", got)
	}

	var peers struct {
		Peers []map[string]any `json:"peers"`
	}
	hampshire.api(t, http.MethodGet, "/api/v1/peers", nil, &peers)
	if len(peers.Peers) != 1 || peers.Peers[0]["name"] != "surrey" || peers.Peers[0]["auth"] != "token" {
		t.Errorf("peers = %v", peers.Peers)
	}
	raw, _ := json.Marshal(peers)
	if strings.Contains(string(raw), "s3cret") {
		t.Errorf("GET /peers shows a peer's token: %s", raw)
	}

	// The cancelled transfer can be retried and then runs to completion.
	hampshire.start(t)
	if got := hampshire.api(t, http.MethodPost, "/api/v1/transfers/"+tr.ID+"/retry", nil, nil); got != http.StatusAccepted {
		t.Fatalf("retry of a cancelled transfer = %d, want 202", got)
	}
	// surrey has no auth, so the bearer token is simply ignored there.
	if done := hampshire.wait(t, tr.ID, 30*time.Second); done.State != gateway.StateCompleted {
		t.Fatalf("state %s (%s), want completed", done.State, done.LastError)
	}
}

// gate holds requests until opened, to freeze a transfer mid-way: a slow
// destination is a fault a real server does not produce on demand.
type gate struct {
	next    http.Handler
	once    sync.Once
	entered chan struct{}
	open    chan struct{}
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		g.once.Do(func() { close(g.entered) })
		select {
		case <-g.open:
		case <-r.Context().Done():
			return
		}
	}
	g.next.ServeHTTP(w, r)
}

// TestTransferResumedAfterWorkerStops: a worker is shut down mid-transfer;
// the transfer is left running and unacknowledged, and another replica's
// worker reclaims it after the visibility timeout and completes it.
func TestTransferResumedAfterWorkerStops(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			hampshire, surrey := newCentre(t, "hampshire", backend), newCentre(t, "surrey", backend)
			g := &gate{next: surrey.handler, entered: make(chan struct{}), open: make(chan struct{})}
			slow := httptest.NewServer(g)
			t.Cleanup(slow.Close)
			peer := peerOf(surrey)
			peer.URL = slow.URL + "/dicomweb"
			hampshire.transfers.Peers = []gateway.Peer{peer}
			if err := hampshire.transfers.Run(t.Context()); err != nil {
				t.Fatal(err)
			}
			ins := hampshire.store(t, synth.StudySpec{Seed: 605, Series: 2, InstancesPerSeries: 2})
			created := hampshire.create(t, ins[0].StudyInstanceUID, "surrey", gateway.PriorityNormal)
			select {
			case <-g.entered:
			case <-time.After(10 * time.Second):
				t.Fatal("the transfer never reached the destination")
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if err := hampshire.transfers.Close(ctx); err != nil {
				t.Fatal(err)
			}
			tr, err := hampshire.transfers.Get(t.Context(), created.ID)
			if err != nil {
				t.Fatal(err)
			}
			if tr.State != gateway.StateRunning {
				t.Fatalf("after shutdown state %s, want running (left for another worker)", tr.State)
			}
			close(g.open)

			// A second replica on the same queue picks it up.
			replica := &gateway.Transfers{
				Name: "hampshire", Queue: hampshire.queue, Index: hampshire.index, Sender: dicomweb.NewClient(hampshire.blobs),
				Peers: hampshire.transfers.Peers, Consumer: "hampshire-replica-2", Workers: 1, Heartbeat: 200 * time.Millisecond,
			}
			if err := replica.Run(t.Context()); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { replica.Close(context.Background()) })
			done := hampshire.wait(t, created.ID, 30*time.Second)
			if done.State != gateway.StateCompleted {
				t.Fatalf("state %s (%s), want completed", done.State, done.LastError)
			}
			if done.Attempts != 2 {
				t.Errorf("attempts=%d, want 2", done.Attempts)
			}
			assertArrived(t, surrey, ins)
		})
	}
}

// TestTransferHonoursRetryAfter: surrey answers 503 with Retry-After: 5
// (it has no storage), so the next attempt waits at least 5 s although the
// backoff policy alone would retry within 200 ms.
func TestTransferHonoursRetryAfter(t *testing.T) {
	hampshire := newCentre(t, "hampshire", "embedded")
	surrey := newCentre(t, "surrey", "embedded", func(w *testWiring) { w.Ingester = nil })
	hampshire.transfers.Peers = []gateway.Peer{peerOf(surrey)}
	hampshire.start(t)
	ins := hampshire.store(t, synth.StudySpec{Seed: 606})
	created := hampshire.create(t, ins[0].StudyInstanceUID, "surrey", gateway.PriorityNormal)
	deadline := time.Now().Add(10 * time.Second)
	for {
		tr, err := hampshire.transfers.Get(t.Context(), created.ID)
		if err != nil {
			t.Fatal(err)
		}
		if tr.NextAttemptAt != nil {
			if got := tr.NextAttemptAt.Sub(tr.UpdatedAt); got < 5*time.Second {
				t.Errorf("next attempt %v after the failure, want at least the peer's Retry-After of 5s", got)
			}
			if tr.State != gateway.StateQueued || !strings.Contains(tr.LastError, "503") {
				t.Errorf("state %s, last_error %q; want queued and the 503 named", tr.State, tr.LastError)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no retry scheduled: %+v", tr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := hampshire.transfers.Cancel(t.Context(), created.ID); err != nil {
		t.Fatal(err)
	}
}

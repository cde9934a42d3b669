package dicomweb_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// failSecond answers the second STOW-RS request with 503 once and passes
// everything else to next.
type failSecond struct {
	next  http.Handler
	mu    sync.Mutex
	posts int
}

func (f *failSecond) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		f.mu.Lock()
		f.posts++
		n := f.posts
		f.mu.Unlock()
		if n == 2 {
			w.Header().Set("Retry-After", "0")
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
	}
	f.next.ServeHTTP(w, r)
}

// TestDeidentifiedTransferResumes: a de-identified transfer whose second
// request fails resumes with only what the destination did not confirm:
// progress is recorded under this gateway's UIDs although the destination
// answered with the mapped ones, so the retry sends each instance once
// (the bytes sent add up to one copy of each) and completes verified
// against the mapped study.
func TestDeidentifiedTransferResumes(t *testing.T) {
	hampshire, surrey := newCentre(t, "hampshire", "embedded"), newCentre(t, "surrey", "embedded")
	flaky := httptest.NewServer(&failSecond{next: surrey.handler})
	t.Cleanup(flaky.Close)
	peer := peerOf(surrey)
	peer.URL, peer.MaxParallel = flaky.URL+"/dicomweb", 1
	peer.Deidentify = &gateway.DeidentifyRule{Profile: gateway.ProfileBasic, RetainLongitudinalTemporal: true}
	d, err := gateway.NewDeidentifier([]gateway.Peer{peer}, bytes.Repeat([]byte{0x42}, 32), hampshire.blobs)
	if err != nil {
		t.Fatal(err)
	}
	client := dicomweb.NewClient(hampshire.blobs)
	client.MaxBatchInstances = 1
	hampshire.transfers.Sender, hampshire.transfers.Deidentifier = client, d
	hampshire.transfers.Peers = []gateway.Peer{peer}
	hampshire.start(t)
	ins := hampshire.store(t, synth.StudySpec{Seed: 707, Series: 2, InstancesPerSeries: 2})
	created := hampshire.create(t, ins[0].StudyInstanceUID, "surrey", gateway.PriorityNormal)
	done := hampshire.wait(t, created.ID, 30*time.Second)
	if done.State != gateway.StateCompleted || done.Attempts != 2 {
		t.Fatalf("state %s after %d attempts (%s), want completed after 2", done.State, done.Attempts, done.LastError)
	}
	if done.Verified == nil || !*done.Verified {
		t.Errorf("verification %q", done.Verification)
	}
	var once int64
	for _, in := range ins {
		rec, err := surrey.index.GetInstance(t.Context(), d.MapUID("surrey", in.SOPInstanceUID))
		if err != nil {
			t.Fatalf("%s not at surrey under its mapped UID: %v", in.SOPInstanceUID, err)
		}
		if rec.StudyInstanceUID != d.MapUID("surrey", in.StudyInstanceUID) {
			t.Errorf("%s filed under study %s", in.SOPInstanceUID, rec.StudyInstanceUID)
		}
		once += rec.Size
	}
	if done.BytesSent != once {
		t.Errorf("bytes sent %d, want %d (each de-identified instance once)", done.BytesSent, once)
	}
}

// TestDeidentifiedTransferWithholdsBurnedIn: an instance whose pixels carry
// burned-in text (Burned In Annotation YES) cannot be de-identified; it is
// withheld, the rest of the study reaches the peer under its mapped UIDs,
// and the transfer fails naming the withheld instance and why. Before, the
// whole study stayed behind.
func TestDeidentifiedTransferWithholdsBurnedIn(t *testing.T) {
	hampshire, surrey := newCentre(t, "hampshire", "embedded"), newCentre(t, "surrey", "embedded")
	// The second request fails once, so a second attempt follows the one
	// that withheld the instance: it must not count it again.
	flaky := httptest.NewServer(&failSecond{next: surrey.handler})
	t.Cleanup(flaky.Close)
	peer := peerOf(surrey)
	peer.URL, peer.MaxParallel = flaky.URL+"/dicomweb", 1
	peer.Deidentify = &gateway.DeidentifyRule{Profile: gateway.ProfileBasic}
	d, err := gateway.NewDeidentifier([]gateway.Peer{peer}, bytes.Repeat([]byte{0x42}, 32), hampshire.blobs)
	if err != nil {
		t.Fatal(err)
	}
	client := dicomweb.NewClient(hampshire.blobs)
	client.MaxBatchInstances = 1
	hampshire.transfers.Sender, hampshire.transfers.Deidentifier, hampshire.transfers.Peers = client, d, []gateway.Peer{peer}
	ins := hampshire.store(t, synth.StudySpec{Seed: 708, Series: 1, InstancesPerSeries: 2})
	screen := ins[0]
	screen.SOPInstanceUID += ".99"
	screen.Extra = append(screen.Extra, synth.Element{Tag: 0x00280301, VR: "CS", Value: []byte("YES ")})
	if _, err := hampshire.ingester.Store(t.Context(), bytes.NewReader(encoded(t, screen)), gateway.StoreOptions{}); err != nil {
		t.Fatal(err)
	}
	hampshire.start(t)
	created := hampshire.create(t, ins[0].StudyInstanceUID, "surrey", gateway.PriorityNormal)
	done := hampshire.wait(t, created.ID, 30*time.Second)
	if done.State != gateway.StateFailed || !strings.Contains(done.LastError, "1 of 3 instances withheld from surrey by this gateway") ||
		!strings.Contains(done.LastError, screen.SOPInstanceUID) || !strings.Contains(done.LastError, "Burned In Annotation") {
		t.Fatalf("transfer %s: %q; want failed, naming the withheld instance and why", done.State, done.LastError)
	}
	if done.InstancesSent != 2 || done.InstancesFailed != 1 || done.Attempts != 2 {
		t.Errorf("sent %d, failed %d, attempts %d; want 2, 1 and 2", done.InstancesSent, done.InstancesFailed, done.Attempts)
	}
	for _, in := range ins {
		if _, err := surrey.index.GetInstance(t.Context(), d.MapUID("surrey", in.SOPInstanceUID)); err != nil {
			t.Errorf("%s not at surrey under its mapped UID: %v", in.SOPInstanceUID, err)
		}
	}
	if _, err := surrey.index.GetInstance(t.Context(), d.MapUID("surrey", screen.SOPInstanceUID)); err == nil {
		t.Errorf("the burned-in instance reached surrey")
	}
	// An admin's retry (which queues it at once and starts attempts
	// afresh) withholds it again, counted once.
	if status := hampshire.api(t, http.MethodPost, "/api/v1/transfers/"+created.ID+"/retry", nil, nil); status != http.StatusAccepted {
		t.Fatalf("retry = %d", status)
	}
	again := hampshire.wait(t, created.ID, 30*time.Second)
	if again.State != gateway.StateFailed || again.InstancesSent != 2 || again.InstancesFailed != 1 || again.Attempts != 1 || !strings.Contains(again.LastError, screen.SOPInstanceUID) {
		t.Errorf("after a retry: %s, sent %d, failed %d, attempts %d; want failed, 2, 1, 1", again.State, again.InstancesSent, again.InstancesFailed, again.Attempts)
	}
}

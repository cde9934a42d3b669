package dicomweb_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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

// nthPost answers the nth POST (a STOW-RS request) with answer and passes
// every other request to next.
type nthPost struct {
	next   http.Handler
	n      int
	answer http.HandlerFunc
	mu     sync.Mutex
	posts  int
}

func (p *nthPost) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		p.mu.Lock()
		p.posts++
		hit := p.posts == p.n
		p.mu.Unlock()
		if hit {
			p.answer(w, r)
			return
		}
	}
	p.next.ServeHTTP(w, r)
}

// failSecond answers the second STOW-RS request 503 (retry at once).
func failSecond(next http.Handler) http.Handler {
	return &nthPost{next: next, n: 2, answer: func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "0")
		http.Error(w, "busy", http.StatusServiceUnavailable)
	}}
}

// unconfirmedFirst answers the first STOW-RS request 202 with an answer
// that names no instance: a failure the sender retries.
func unconfirmedFirst(next http.Handler) http.Handler {
	return &nthPost{next: next, n: 1, answer: func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/dicom+json")
		w.WriteHeader(http.StatusAccepted)
		w.Write([]byte(`{}`))
	}}
}

// TestDeidentifiedTransferResumes: a de-identified transfer whose second
// request fails resumes with only what the destination did not confirm:
// progress is recorded under this gateway's UIDs although the destination
// answered with the mapped ones, so the retry sends each instance once
// (the bytes sent add up to one copy of each) and completes verified
// against the mapped study.
func TestDeidentifiedTransferResumes(t *testing.T) {
	hampshire, surrey := newCentre(t, "hampshire", "embedded"), newCentre(t, "surrey", "embedded")
	flaky := httptest.NewServer(failSecond(surrey.handler))
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

// deidCentres returns hampshire sending to a de-identifying surrey, one
// instance per request, through wrap (nil: directly); the Deidentifier
// reads hampshire's blobs through blobs (nil: as they are).
func deidCentres(t *testing.T, wrap func(http.Handler) http.Handler, blobs func(gateway.BlobStore) gateway.BlobStore) (hampshire, surrey *centre, d *gateway.Deidentifier) {
	t.Helper()
	hampshire, surrey = newCentre(t, "hampshire", "embedded"), newCentre(t, "surrey", "embedded")
	h := surrey.handler
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	peer := peerOf(surrey)
	peer.URL, peer.MaxParallel = srv.URL+"/dicomweb", 1
	peer.Deidentify = &gateway.DeidentifyRule{Profile: gateway.ProfileBasic}
	var b gateway.BlobStore = hampshire.blobs
	if blobs != nil {
		b = blobs(b)
	}
	d, err := gateway.NewDeidentifier([]gateway.Peer{peer}, bytes.Repeat([]byte{0x42}, 32), b)
	if err != nil {
		t.Fatal(err)
	}
	client := dicomweb.NewClient(hampshire.blobs)
	client.MaxBatchInstances = 1
	hampshire.transfers.Sender, hampshire.transfers.Deidentifier, hampshire.transfers.Peers = client, d, []gateway.Peer{peer}
	return hampshire, surrey, d
}

// storeBurnedIn stores a copy of in, under SOP Instance UID + ".99", with
// Burned In Annotation YES, and returns it.
func storeBurnedIn(t *testing.T, c *centre, in synth.Instance) synth.Instance {
	t.Helper()
	in.SOPInstanceUID += ".99"
	in.Extra = append(in.Extra, synth.Element{Tag: 0x00280301, VR: "CS", Value: []byte("YES ")})
	if _, err := c.ingester.Store(t.Context(), bytes.NewReader(encoded(t, in)), gateway.StoreOptions{}); err != nil {
		t.Fatal(err)
	}
	return in
}

// assertAtSurrey checks that each of ins is at surrey under its mapped UID
// (present true) or absent under both.
func assertAtSurrey(t *testing.T, surrey *centre, d *gateway.Deidentifier, present bool, ins ...synth.Instance) {
	t.Helper()
	for _, in := range ins {
		_, err := surrey.index.GetInstance(t.Context(), d.MapUID("surrey", in.SOPInstanceUID))
		if (err == nil) != present {
			t.Errorf("%s at surrey under its mapped UID: %v, want present %v", in.SOPInstanceUID, err, present)
		}
		if _, err := surrey.index.GetInstance(t.Context(), in.SOPInstanceUID); err == nil {
			t.Errorf("%s at surrey under its original UID", in.SOPInstanceUID)
		}
	}
}

// storeAndSend stores ins at hampshire, then sends their study to surrey
// and requires the transfer completed, each instance at surrey under its
// mapped UID.
func storeAndSend(t *testing.T, hampshire, surrey *centre, d *gateway.Deidentifier, ins []synth.Instance) {
	t.Helper()
	for _, in := range ins {
		if _, err := hampshire.ingester.Store(t.Context(), bytes.NewReader(encoded(t, in)), gateway.StoreOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	hampshire.start(t)
	created := hampshire.create(t, ins[0].StudyInstanceUID, "surrey", gateway.PriorityNormal)
	if done := hampshire.wait(t, created.ID, 30*time.Second); done.State != gateway.StateCompleted {
		t.Fatalf("transfer %s: %q; want completed", done.State, done.LastError)
	}
	assertAtSurrey(t, surrey, d, true, ins...)
}

// TestDeidentifiedTransferWithholdsBurnedIn: an instance whose pixels carry
// burned-in text (Burned In Annotation YES) cannot be de-identified; it is
// withheld, the rest of the study reaches the peer under its mapped UIDs,
// and the transfer fails naming the withheld instance and why. Before, the
// whole study stayed behind.
func TestDeidentifiedTransferWithholdsBurnedIn(t *testing.T) {
	// The second request fails once, so a second attempt follows the one
	// that withheld the instance: it must not count it again.
	hampshire, surrey, _ := deidCentres(t, failSecond, nil)
	d := hampshire.transfers.Deidentifier
	ins := hampshire.store(t, synth.StudySpec{Seed: 708, Series: 1, InstancesPerSeries: 2})
	screen := storeBurnedIn(t, hampshire, ins[0])
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
	assertAtSurrey(t, surrey, d, true, ins...)
	assertAtSurrey(t, surrey, d, false, screen)
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

// TestDeidentifiedTransferResendsBeforeFailing: an instance the peer did
// not confirm is sent again although another was withheld; only then does
// the transfer fail, naming the withheld one. Before, the withheld
// instance ended the transfer at once and the unconfirmed one never
// arrived.
func TestDeidentifiedTransferResendsBeforeFailing(t *testing.T) {
	hampshire, surrey, d := deidCentres(t, unconfirmedFirst, nil)
	ins := hampshire.store(t, synth.StudySpec{Seed: 709, Series: 1, InstancesPerSeries: 2})
	screen := storeBurnedIn(t, hampshire, ins[0])
	hampshire.start(t)
	created := hampshire.create(t, ins[0].StudyInstanceUID, "surrey", gateway.PriorityNormal)
	done := hampshire.wait(t, created.ID, 30*time.Second)
	if done.State != gateway.StateFailed || !strings.Contains(done.LastError, screen.SOPInstanceUID) || done.InstancesSent != 2 || done.Attempts != 2 {
		t.Errorf("transfer %s after %d attempts, sent %d: %q; want failed after 2, 2 sent, naming the withheld instance", done.State, done.Attempts, done.InstancesSent, done.LastError)
	}
	assertAtSurrey(t, surrey, d, true, ins...)
}

// resetOnce breaks the first blob read after 200 bytes, as a storage
// connection reset midway would.
type resetOnce struct {
	gateway.BlobStore
	mu   sync.Mutex
	done bool
}

type resetReader struct {
	io.ReadCloser
	left int
}

func (r *resetReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, errors.New("read tcp: connection reset by peer")
	}
	n, err := r.ReadCloser.Read(p[:min(len(p), r.left)])
	r.left -= n
	return n, err
}

func (r *resetOnce) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	rc, err := r.BlobStore.Get(ctx, key, off, n)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil || r.done {
		return rc, err
	}
	r.done = true
	return &resetReader{ReadCloser: rc, left: 200}, nil
}

// TestDeidentifiedTransferRetriesAReadError: a storage read that fails
// while the study is de-identified is retried, not taken for a malformed
// instance and withheld for good; the transfer completes.
func TestDeidentifiedTransferRetriesAReadError(t *testing.T) {
	hampshire, surrey, d := deidCentres(t, nil, func(b gateway.BlobStore) gateway.BlobStore { return &resetOnce{BlobStore: b} })
	ins := hampshire.store(t, synth.StudySpec{Seed: 710, Series: 1, InstancesPerSeries: 2})
	hampshire.start(t)
	created := hampshire.create(t, ins[0].StudyInstanceUID, "surrey", gateway.PriorityNormal)
	if done := hampshire.wait(t, created.ID, 30*time.Second); done.State != gateway.StateCompleted || done.Attempts != 2 {
		t.Errorf("transfer %s after %d attempts: %q; want completed after 2", done.State, done.Attempts, done.LastError)
	}
	assertAtSurrey(t, surrey, d, true, ins...)
}

// TestDeidentifiedTransferCorruptCopy: a local copy cut short (it differs
// from its index entry) fails the transfer as corrupt, not as an instance
// to withhold while the rest is sent.
func TestDeidentifiedTransferCorruptCopy(t *testing.T) {
	hampshire, surrey, d := deidCentres(t, nil, nil)
	ins := hampshire.store(t, synth.StudySpec{Seed: 711, Series: 1, InstancesPerSeries: 2})
	rec, err := hampshire.index.GetInstance(t.Context(), ins[0].SOPInstanceUID)
	if err != nil {
		t.Fatal(err)
	}
	if err := hampshire.blobs.Delete(t.Context(), rec.Key()); err != nil {
		t.Fatal(err)
	}
	if _, err := hampshire.blobs.Put(t.Context(), rec.Key(), bytes.NewReader(encoded(t, ins[0])[:400])); err != nil {
		t.Fatal(err)
	}
	hampshire.start(t)
	created := hampshire.create(t, ins[0].StudyInstanceUID, "surrey", gateway.PriorityNormal)
	if done := hampshire.wait(t, created.ID, 30*time.Second); done.State != gateway.StateFailed || !strings.Contains(done.LastError, "corrupt") {
		t.Errorf("transfer %s: %q; want failed as a corrupt local copy", done.State, done.LastError)
	}
	assertAtSurrey(t, surrey, d, false, ins...)
}

// TestDeidentifiedTransferDeviceUIDsUnderTheStandardRoot: a device that
// made its UIDs under the standard's root 1.2.840.10008 without
// registering them has them mapped like any other; before, the dataset kept
// them while the file meta and the request were mapped, and the peer
// refused every instance.
func TestDeidentifiedTransferDeviceUIDsUnderTheStandardRoot(t *testing.T) {
	hampshire, surrey, d := deidCentres(t, nil, nil)
	ins := synth.Study(synth.StudySpec{Seed: 712, Series: 1, InstancesPerSeries: 2})
	for i := range ins {
		ins[i].StudyInstanceUID, ins[i].SeriesInstanceUID = "1.2.840.10008.999.5.1", "1.2.840.10008.999.5.1.1"
		ins[i].SOPInstanceUID = fmt.Sprintf("1.2.840.10008.999.5.1.1.%d", i+1)
	}
	storeAndSend(t, hampshire, surrey, d, ins)
	for _, in := range ins {
		rc, err := surrey.blobs.Get(t.Context(), gateway.InstanceKey(d.MapUID("surrey", in.StudyInstanceUID), d.MapUID("surrey", in.SeriesInstanceUID), d.MapUID("surrey", in.SOPInstanceUID)), 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		if bytes.Contains(b, []byte("1.2.840.10008.999.5")) {
			t.Errorf("%s: an original UID reached surrey", in.SOPInstanceUID)
		}
	}
}

// TestDeidentifiedTransferAuditsUnknownAttributes: a standard attribute
// the dictionary does not know (a made-up (0040,F0F0)) is removed, and
// transfer.deidentified names its tag, never its value, so an admin learns
// that an instance of a newer IOD lost it.
func TestDeidentifiedTransferAuditsUnknownAttributes(t *testing.T) {
	hampshire, surrey, d := deidCentres(t, nil, nil)
	ins := synth.Study(synth.StudySpec{Seed: 713, Series: 1, InstancesPerSeries: 1})
	ins[0].Extra = append(ins[0].Extra, synth.Element{Tag: 0x0040F0F0, VR: "LO", Value: []byte("PHI-UNKNOWN ")})
	storeAndSend(t, hampshire, surrey, d, ins)
	evs := hampshire.audit.await(gateway.ActionTransferDeidentified, 1)
	if len(evs) != 1 {
		t.Fatalf("%d transfer.deidentified events, want 1", len(evs))
	}
	got := fmt.Sprint(evs[0].Detail["unknown_attributes_removed"])
	if got != "[(0040,F0F0)]" || strings.Contains(fmt.Sprint(evs[0].Detail), "PHI-UNKNOWN") {
		t.Errorf("unknown_attributes_removed %s (detail %v); want [(0040,F0F0)] and no value", got, evs[0].Detail)
	}
}

// outOfResourcesFor answers one SOP Instance UID 0xA700 (retryable) on
// every attempt, and sends the rest through the real sender.
type outOfResourcesFor struct {
	gateway.Sender
	uid string
}

func (s outOfResourcesFor) Send(ctx context.Context, peer gateway.Peer, h gateway.SendHeader, recs []*gateway.InstanceRecord, report func([]gateway.SendResult)) error {
	var rest []*gateway.InstanceRecord
	for _, r := range recs {
		if r.SOPInstanceUID == s.uid {
			report([]gateway.SendResult{{SOPInstanceUID: r.SOPInstanceUID, Reason: "out of resources", ReasonCode: 0xA700, Retryable: true}})
			continue
		}
		rest = append(rest, r)
	}
	if len(rest) == 0 {
		return nil
	}
	return s.Sender.Send(ctx, peer, h, rest, report)
}

// TestRefusalEndsATransferTheRestCannotComplete: the peer refuses one
// instance for good and keeps answering another "out of resources". The
// transfer resends while the peer takes instances, then fails as soon as
// an attempt took nothing, naming the refusal (listed in failures) and the
// instance not confirmed, rather than retrying for the whole retry window
// under a message that no longer names the refusal.
func TestRefusalEndsATransferTheRestCannotComplete(t *testing.T) {
	hampshire, surrey := newCentre(t, "hampshire", "embedded"), newCentre(t, "surrey", "embedded")
	hampshire.transfers.Peers = []gateway.Peer{peerOf(surrey)}
	ins := hampshire.store(t, synth.StudySpec{Seed: 714, Series: 1, InstancesPerSeries: 3})
	clash := ins[1]
	clash.PixelSeed++
	if _, err := surrey.ingester.Store(t.Context(), bytes.NewReader(encoded(t, clash)), gateway.StoreOptions{}); err != nil {
		t.Fatal(err)
	}
	hampshire.transfers.Sender = outOfResourcesFor{Sender: hampshire.transfers.Sender, uid: ins[2].SOPInstanceUID}
	hampshire.start(t)
	created := hampshire.create(t, ins[0].StudyInstanceUID, "surrey", gateway.PriorityNormal)
	tr := hampshire.wait(t, created.ID, 30*time.Second)
	if tr.State != gateway.StateFailed || tr.Attempts != 2 || len(tr.Failures) != 1 || tr.Failures[0].SOPInstanceUID != clash.SOPInstanceUID ||
		!strings.Contains(tr.LastError, "surrey refused 1 of 3 instances") || !strings.Contains(tr.LastError, "did not confirm 1 of 3") {
		t.Errorf("transfer %s after %d attempts, failures %+v: %q; want failed after 2, naming the refusal and the instance not confirmed",
			tr.State, tr.Attempts, tr.Failures, tr.LastError)
	}
}

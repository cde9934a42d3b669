package dicomweb_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// TestVerifyRecordedOrReread: by default a gateway peer's verification
// compares the SHA-256 it recorded while the bytes streamed into its
// storage, without reading them again; with verify_reread it computes them
// again from storage. An instance overwritten in the peer's storage behind
// its index (what only a re-read can see) shows the difference: the
// recorded digests still match what was sent, the re-read finds the
// altered instance. On both backend families.
func TestVerifyRecordedOrReread(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			_, surrey, ins, peer, c, recs := sentStudy(t, backend, 933, 3)

			v, err := c.Verify(t.Context(), peer, ins[0].StudyInstanceUID, recs)
			if want := fmt.Sprintf("sha256: %d/%d identical (recorded at ingest)", len(ins), len(ins)); err != nil || !v.OK || !strings.Contains(v.Checked, want) {
				t.Fatalf("default verification %+v, %v; want OK and %q", v, err, want)
			}

			// Overwrite one instance's bytes in surrey's storage, behind its index.
			altered := recs[1]
			var orig bytes.Buffer
			rc, err := surrey.blobs.Get(t.Context(), altered.Key(), 0, -1)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := orig.ReadFrom(rc); err != nil {
				t.Fatal(err)
			}
			rc.Close()
			b := orig.Bytes()
			b[len(b)-1] ^= 0xff
			if _, err := surrey.blobs.Put(t.Context(), altered.Key(), bytes.NewReader(b)); err != nil {
				t.Fatal(err)
			}

			v, err = c.Verify(t.Context(), peer, ins[0].StudyInstanceUID, recs)
			if err != nil || !v.OK {
				t.Errorf("recorded digests after the storage was altered: %+v, %v; want OK (they describe what was stored)", v, err)
			}
			peer.VerifyReread = true
			v, err = c.Verify(t.Context(), peer, ins[0].StudyInstanceUID, recs)
			if err != nil {
				t.Fatal(err)
			}
			if v.OK || len(v.Mismatched) != 1 || v.Mismatched[0] != altered.SOPInstanceUID || !strings.Contains(v.Checked, "re-read from storage") {
				t.Errorf("re-read verification %+v; want the altered instance %s mismatched", v, altered.SOPInstanceUID)
			}
		})
	}
}

// TestVerifyNeedsTheDigests: a gateway peer whose QIDO-RS lists the study
// but whose admin API knows nothing of it (admin_url leads to a server
// that answers 404, as a proxy forwarding /dicomweb only would) is not
// verified: Verify errs, temporarily, naming admin_url, instead of
// reporting 0/N digests identical as OK.
func TestVerifyNeedsTheDigests(t *testing.T) {
	_, _, ins, peer, c, recs := sentStudy(t, backends[0], 934, 2)
	elsewhere := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(elsewhere.Close)
	peer.AdminURL = elsewhere.URL + "/api/v1"
	v, err := c.Verify(t.Context(), peer, ins[0].StudyInstanceUID, recs)
	var se *gateway.SendError
	if err == nil || !errors.As(err, &se) || !se.Temporary || !strings.Contains(err.Error(), "admin_url") {
		t.Fatalf("Verify with an admin URL that knows nothing = %+v, %v; want a temporary error naming admin_url", v, err)
	}
}

// TestSendLocalErrorsClassified: a local instance whose bytes differ from
// its index entry fails the send for good (sending again cannot help); a
// local instance that cannot be read (here its blob is gone, as after a
// delete since the study was read) is a temporary failure, retried by the
// next attempt, which reads the study again.
func TestSendLocalErrorsClassified(t *testing.T) {
	hampshire := newCentre(t, "hampshire", backends[0])
	surrey := newCentre(t, "surrey", backends[0])
	ins := hampshire.store(t, synth.StudySpec{Seed: 935, Series: 1, InstancesPerSeries: 2})
	peer := peerOf(surrey)
	peer.Gateway = false // the sender checks each instance's digest itself
	recs, err := hampshire.index.ListInstances(t.Context(), ins[0].StudyInstanceUID, "")
	if err != nil {
		t.Fatal(err)
	}
	key := recs[0].Key()
	if _, err := hampshire.blobs.Put(t.Context(), key, strings.NewReader("other bytes")); err != nil {
		t.Fatal(err)
	}
	_, err = sendStudy(t, dicomweb.NewClient(hampshire.blobs), hampshire, peer, ins)
	var se *gateway.SendError
	if !errors.As(err, &se) || se.Temporary || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("sending a corrupt local copy = %v; want a permanent SendError naming the corruption", err)
	}
	if err := hampshire.blobs.Delete(t.Context(), key); err != nil {
		t.Fatal(err)
	}
	_, err = sendStudy(t, dicomweb.NewClient(hampshire.blobs), hampshire, peer, ins)
	if !errors.As(err, &se) || !se.Temporary {
		t.Errorf("sending an instance whose blob is gone = %v; want a temporary SendError", err)
	}
}

// sentStudy stores a study of n instances at a new hampshire, sends it to
// a new surrey (a gateway peer) and returns the two centres, the study,
// surrey as a peer, the client that sent it and hampshire's records.
func sentStudy(t *testing.T, backend string, seed uint64, n int) (hampshire, surrey *centre, ins []synth.Instance, peer gateway.Peer, c *dicomweb.Client, recs []*gateway.InstanceRecord) {
	t.Helper()
	hampshire = newCentre(t, "hampshire", backend)
	surrey = newCentre(t, "surrey", backend)
	ins = hampshire.store(t, synth.StudySpec{Seed: seed, Series: 1, InstancesPerSeries: n})
	peer = peerOf(surrey)
	c = dicomweb.NewClient(hampshire.blobs)
	results, err := sendStudy(t, c, hampshire, peer, ins)
	if err != nil {
		t.Fatal(err)
	}
	assertAllSent(t, results, ins)
	recs, err = hampshire.index.ListInstances(t.Context(), ins[0].StudyInstanceUID, "")
	if err != nil {
		t.Fatal(err)
	}
	return hampshire, surrey, ins, peer, c, recs
}

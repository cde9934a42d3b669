package dicomweb_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/client"
	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// digestPart is a DICOM part that declares Content-Digest v.
func digestPart(data []byte, v string) stowPart {
	return stowPart{contentType: "application/dicom", data: data, header: textproto.MIMEHeader{client.HeaderContentDigest: {v}}}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestStowContentDigest: a part's declared SHA-256 (Content-Digest, RFC
// 9530) is compared with the bytes received. A match is stored and the
// answer says digests were checked; a mismatch is refused with 0x0110 and
// an Error Comment, and leaves nothing stored and nothing already stored
// altered; a malformed sha-256 member is refused; other algorithms are
// ignored.
func TestStowContentDigest(t *testing.T) {
	for _, b := range stowBackends {
		t.Run(b.name, func(t *testing.T) {
			s := newStowServer(t, b, func(w *testWiring) { w.Ingester.DuplicatePolicy = gateway.DuplicateReplace })
			good := makeInstance(testStudy, testSeries, testSOP(1), 8, 8, 1)
			res := s.stow(t, "/dicomweb/studies", digestPart(good, client.ContentDigestSHA256(sha256Hex(good))))
			if res.status != http.StatusOK || res.referenced() != 1 {
				t.Fatalf("matching digest: %d %s", res.status, res.body)
			}
			if got := res.header.Get(client.HeaderDigestsChecked); got != client.DigestSHA256 {
				t.Errorf("%s = %q, want %q", client.HeaderDigestsChecked, got, client.DigestSHA256)
			}

			// Other bytes than declared: refused, nothing stored.
			other := makeInstance(testStudy, testSeries, testSOP(2), 8, 8, 2)
			res = s.stow(t, "/dicomweb/studies", digestPart(other, client.ContentDigestSHA256(sha256Hex(good))))
			if res.status != http.StatusConflict || len(res.failureReasons()) != 1 || res.failureReasons()[0] != int64(gateway.ReasonProcessingFailure) {
				t.Fatalf("mismatching digest: %d %s, want 409 with 0x0110", res.status, res.body)
			}
			if c := failedComment(res); !strings.Contains(c, "Content-Digest") {
				t.Errorf("error comment %q does not name the digest", c)
			}
			if res.header.Get(client.HeaderDigestsChecked) == "" {
				t.Errorf("a refused mismatch was checked too, but the answer does not say so")
			}
			if _, err := s.index.GetInstance(t.Context(), testSOP(2)); !errors.Is(err, gateway.ErrNotFound) {
				t.Errorf("refused instance indexed: %v", err)
			}
			if _, err := s.blobs.Stat(t.Context(), gateway.InstanceKey(testStudy, testSeries, testSOP(2))); !errors.Is(err, gateway.ErrNotFound) {
				t.Errorf("refused instance's bytes stored: %v", err)
			}

			// A damaged resend of a stored instance (replace policy) leaves
			// the stored one as it was.
			damaged := bytes.Clone(good)
			damaged[len(damaged)-1] ^= 0xFF
			res = s.stow(t, "/dicomweb/studies", digestPart(damaged, client.ContentDigestSHA256(sha256Hex(good))))
			if res.status != http.StatusConflict {
				t.Fatalf("damaged resend: %d %s, want 409", res.status, res.body)
			}
			if got, rec := s.storedBytes(t, testSOP(1)); !bytes.Equal(got, good) || rec.SHA256 != sha256Hex(good) {
				t.Errorf("a refused resend altered the stored instance")
			}

			// A sha-256 member that is not 32 bytes of base64: refused.
			third := makeInstance(testStudy, testSeries, testSOP(3), 8, 8, 3)
			for _, v := range []string{"sha-256=:AAAA:", "sha-256=" + sha256Hex(third), "sha-256=:!!:"} {
				res = s.stow(t, "/dicomweb/studies", digestPart(third, v))
				if res.status != http.StatusConflict || len(res.failureReasons()) != 1 || res.failureReasons()[0] != int64(gateway.ReasonCannotUnderstand) {
					t.Errorf("Content-Digest %q: %d %s, want 409 with 0xC000", v, res.status, res.body)
				}
			}
			// Only other algorithms, or none: stored unchecked, and the
			// answer does not claim a check.
			for i, p := range []stowPart{digestPart(third, "sha-512=:"+strings.Repeat("A", 88)+":"), dicomPart(makeInstance(testStudy, testSeries, testSOP(4), 8, 8, 4))} {
				res = s.stow(t, "/dicomweb/studies", p)
				if res.status != http.StatusOK {
					t.Fatalf("part %d without a sha-256 digest: %d %s", i, res.status, res.body)
				}
				if got := res.header.Get(client.HeaderDigestsChecked); got != "" {
					t.Errorf("part %d: %s = %q for a request without sha-256 digests", i, client.HeaderDigestsChecked, got)
				}
			}
		})
	}
}

// failedComment is the Error Comment of the first FailedSOPSequence item.
func failedComment(r stowResult) string {
	if a, ok := r.ds["00081198"]; ok && len(a.Value) > 0 {
		if c, ok := a.Value[0].(dicomcodec.Dataset)["00000902"]; ok && len(c.Value) == 1 {
			s, _ := c.Value[0].(string)
			return s
		}
	}
	return ""
}

// TestTransferCorruptLocalCopyRefusedAtPeer: once a gateway peer has said
// it checks Content-Digest, the sender stops hashing what it sends; a local
// copy that no longer matches its recorded SHA-256 is then refused by the
// peer, before it is stored there, and the transfer fails saying why.
func TestTransferCorruptLocalCopyRefusedAtPeer(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			hampshire, surrey := newCentre(t, "hampshire", backend), newCentre(t, "surrey", backend)
			hampshire.transfers.Peers = []gateway.Peer{peerOf(surrey)}
			hampshire.start(t)

			// A first study: the peer's answers say it checks digests.
			first := hampshire.store(t, synth.StudySpec{Seed: 611, Series: 1, InstancesPerSeries: 3, Rows: 16, Columns: 16})
			tr := hampshire.wait(t, hampshire.create(t, first[0].StudyInstanceUID, "surrey", gateway.PriorityNormal).ID, 30*time.Second)
			if tr.State != gateway.StateCompleted {
				t.Fatalf("first study: state %s (%s), want completed", tr.State, tr.LastError)
			}

			// A second study, one of whose local copies rots.
			second := hampshire.store(t, synth.StudySpec{Seed: 612, Series: 1, InstancesPerSeries: 3, Rows: 16, Columns: 16})
			rotten := second[1]
			data := encoded(t, rotten)
			data[len(data)-1] ^= 0xFF
			key := gateway.InstanceKey(rotten.StudyInstanceUID, rotten.SeriesInstanceUID, rotten.SOPInstanceUID)
			if _, err := hampshire.blobs.Put(t.Context(), key, bytes.NewReader(data)); err != nil {
				t.Fatal(err)
			}
			tr = hampshire.wait(t, hampshire.create(t, second[0].StudyInstanceUID, "surrey", gateway.PriorityNormal).ID, 30*time.Second)
			if tr.State != gateway.StateFailed {
				t.Fatalf("second study: state %s, want failed", tr.State)
			}
			if !strings.Contains(tr.LastError, "Content-Digest mismatch") || !strings.Contains(tr.LastError, rotten.SOPInstanceUID) {
				t.Errorf("last_error %q does not say the peer found the bytes differ from the recorded digest", tr.LastError)
			}
			if _, err := surrey.index.GetInstance(t.Context(), rotten.SOPInstanceUID); !errors.Is(err, gateway.ErrNotFound) {
				t.Errorf("the rotten copy is indexed at the peer: %v", err)
			}
			if _, err := surrey.blobs.Stat(t.Context(), key); !errors.Is(err, gateway.ErrNotFound) {
				t.Errorf("the rotten copy's bytes are stored at the peer: %v", err)
			}
			assertArrived(t, surrey, []synth.Instance{second[0], second[2]})
		})
	}
}

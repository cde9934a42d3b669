package gateway_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// lostLock is an index whose instance lock always succeeds at once: the
// state after a Redis failover lost the lock's key, or after renewals
// failed for longer than its TTL, which a real server cannot be made to
// reach on cue.
type lostLock struct{ gateway.Index }

func (lostLock) Lock(context.Context, string, time.Duration) (func(), error) { return func() {}, nil }

// sameUIDOtherBytes returns one synthetic instance twice: the second has
// the same UIDs and other pixel data, so other bytes.
func sameUIDOtherBytes(seed uint64) (synth.Instance, synth.Instance) {
	ins := synth.Study(synth.StudySpec{Seed: seed})[0]
	other := ins
	other.PixelSeed++
	return ins, other
}

// blobSHA256 is the SHA-256 of the object under key.
func blobSHA256(t *testing.T, blobs gateway.BlobStore, key string) string {
	t.Helper()
	rc, err := blobs.Get(t.Context(), key, 0, -1)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func wantReason(t *testing.T, err error, reason uint16, what string) {
	t.Helper()
	var ie *gateway.InstanceError
	if !errors.As(err, &ie) || ie.Reason != reason {
		t.Fatalf("%s: err = %v, want an InstanceError with reason %s", what, err, gateway.ReasonText(reason))
	}
}

// TestLostLockNeverOverwritesAnAcknowledgedInstance: two uploads of one
// SOP Instance UID with other bytes both pass the lock (lost) and both find
// the instance new. The first is stored and acknowledged; the second must
// fail as a duplicate and leave the first one's bytes under the key, the
// bytes its index entry's digest names. Before create-only commits
// (StagedBlob.CommitNew) the second replaced the blob, and the index kept
// the first one's digest over the second one's bytes.
func TestLostLockNeverOverwritesAnAcknowledgedInstance(t *testing.T) {
	for _, kind := range backendtest.Kinds {
		t.Run(kind, func(t *testing.T) {
			b := backendtest.Open(t, kind, backendtest.Options{})
			in := &gateway.Ingester{Blobs: b.Blobs, Index: lostLock{b.Index}}
			first, second := sameUIDOtherBytes(7101)
			ctx := t.Context()

			p1, err := in.Begin(ctx, first.Reader(), gateway.StoreOptions{})
			if err != nil {
				t.Fatal(err)
			}
			p2, err := in.Begin(ctx, second.Reader(), gateway.StoreOptions{})
			if err != nil {
				t.Fatal(err)
			}
			acked, err := p1.Finish(ctx)
			if err != nil {
				t.Fatal(err)
			}
			_, err = p2.Finish(ctx)
			wantReason(t, err, gateway.ReasonDuplicateRejected, "the second upload")
			if !errors.Is(err, gateway.ErrConflict) {
				t.Errorf("the second upload: %v, want ErrConflict", err)
			}

			rec, err := b.Index.GetInstance(ctx, first.SOPInstanceUID)
			if err != nil || rec.SHA256 != acked.SHA256 {
				t.Fatalf("index entry %+v (%v), want the acknowledged one's digest %s", rec, err, acked.SHA256)
			}
			if got := blobSHA256(t, b.Blobs, acked.Key()); got != acked.SHA256 {
				t.Errorf("blob under the acknowledged instance's key has SHA-256 %s, want %s (its index entry's)", got, acked.SHA256)
			}
		})
	}
}

// TestUnindexedBlobOfAFailedStore: an object under an instance's key that
// no index entry names (a store whose index write failed) is indexed when
// the same bytes come again; other bytes replace it only once it is older
// than the lock's TTL, and before that the upload is refused as temporary
// (it may be another upload between its commit and its index write) and
// the object stays.
func TestUnindexedBlobOfAFailedStore(t *testing.T) {
	for _, kind := range backendtest.Kinds {
		t.Run(kind, func(t *testing.T) {
			b := backendtest.Open(t, kind, backendtest.Options{})
			const ttl = 2 * time.Second
			in := &gateway.Ingester{Blobs: b.Blobs, Index: b.Index, LockTTL: ttl}
			ctx := t.Context()
			leftover := func(ins synth.Instance) string {
				t.Helper()
				key := gateway.InstanceKey(ins.StudyInstanceUID, ins.SeriesInstanceUID, ins.SOPInstanceUID)
				if _, err := b.Blobs.Put(ctx, key, ins.Reader()); err != nil {
					t.Fatal(err)
				}
				return key
			}

			same, _ := sameUIDOtherBytes(7201)
			key := leftover(same)
			rec, err := in.Store(ctx, same.Reader(), gateway.StoreOptions{})
			if err != nil {
				t.Fatalf("store over an unindexed copy of the same bytes: %v", err)
			}
			if got := blobSHA256(t, b.Blobs, key); got != rec.SHA256 {
				t.Errorf("blob SHA-256 %s, index %s", got, rec.SHA256)
			}

			mine, old := sameUIDOtherBytes(7202)
			key = leftover(old)
			oldSum := blobSHA256(t, b.Blobs, key)
			start := time.Now()
			_, err = in.Store(ctx, mine.Reader(), gateway.StoreOptions{})
			wantReason(t, err, gateway.ReasonOutOfResources, "a store over a young unindexed object with other bytes")
			if !errors.Is(err, gateway.ErrUnavailable) {
				t.Errorf("a store over a young unindexed object: %v, want ErrUnavailable", err)
			}
			if got := blobSHA256(t, b.Blobs, key); got != oldSum {
				t.Errorf("the refused store changed the object: SHA-256 %s, want %s", got, oldSum)
			}
			if _, err := b.Index.GetInstance(ctx, mine.SOPInstanceUID); !errors.Is(err, gateway.ErrNotFound) {
				t.Errorf("the refused store indexed the instance: %v", err)
			}

			time.Sleep(ttl - time.Since(start) + 1500*time.Millisecond) // S3 times are whole seconds
			rec, err = in.Store(ctx, mine.Reader(), gateway.StoreOptions{})
			if err != nil {
				t.Fatalf("store over an unindexed object older than the lock's TTL: %v", err)
			}
			if got := blobSHA256(t, b.Blobs, key); got != rec.SHA256 || got == oldSum {
				t.Errorf("blob SHA-256 %s, index %s, leftover %s: want the new bytes", got, rec.SHA256, oldSum)
			}
		})
	}
}

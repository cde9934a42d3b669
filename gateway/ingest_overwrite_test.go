package gateway_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// lostLock is an index whose instance lock always succeeds at once: the
// state after a Redis failover lost the lock's key, or after renewals
// failed for longer than its TTL, which a real server cannot be made to
// reach on cue. put and get, when set, stand in for the index's
// PutInstance and GetInstance, to interleave two uploads at exact points.
type lostLock struct {
	gateway.Index
	put func(ctx context.Context, rec *gateway.InstanceRecord) (*gateway.InstanceRecord, bool, error)
	get func(ctx context.Context, uid string) (*gateway.InstanceRecord, error)
}

func (*lostLock) Lock(context.Context, string, time.Duration) (func(), error) { return func() {}, nil }

func (l *lostLock) PutInstance(ctx context.Context, rec *gateway.InstanceRecord) (*gateway.InstanceRecord, bool, error) {
	if l.put != nil {
		return l.put(ctx, rec)
	}
	return l.Index.PutInstance(ctx, rec)
}

func (l *lostLock) GetInstance(ctx context.Context, uid string) (*gateway.InstanceRecord, error) {
	if l.get != nil {
		return l.get(ctx, uid)
	}
	return l.Index.GetInstance(ctx, uid)
}

// sameUIDOtherBytes returns one synthetic instance twice: the second has
// the same UIDs and other pixel data, so other bytes.
func sameUIDOtherBytes(seed uint64) (synth.Instance, synth.Instance) {
	ins := synth.Study(synth.StudySpec{Seed: seed})[0]
	other := ins
	other.PixelSeed++
	return ins, other
}

// beginBoth begins the uploads of a and b, both before either finishes:
// both find the instance new.
func beginBoth(t *testing.T, in *gateway.Ingester, a, b synth.Instance) (*gateway.PendingInstance, *gateway.PendingInstance) {
	t.Helper()
	pa, err := in.Begin(t.Context(), a.Reader(), gateway.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pb, err := in.Begin(t.Context(), b.Reader(), gateway.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pa, pb
}

// blobSHA256 is the SHA-256 of the object under key.
func blobSHA256(t *testing.T, blobs gateway.BlobStore, key string) string {
	t.Helper()
	sum, _, err := gateway.BlobSHA256(t.Context(), blobs, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return sum
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
			in := &gateway.Ingester{Blobs: b.Blobs, Index: &lostLock{Index: b.Index}}
			first, second := sameUIDOtherBytes(7101)
			ctx := t.Context()

			p1, p2 := beginBoth(t, in, first, second)
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
// no index entry names (a store whose index write failed, or another
// upload between its commit and its index write) is indexed when the same
// bytes come again; other bytes are refused as a duplicate (0x0111) and
// the object stays as it was, unindexed: nothing can tell an upload about
// to be acknowledged from a failed one.
func TestUnindexedBlobOfAFailedStore(t *testing.T) {
	for _, kind := range backendtest.Kinds {
		t.Run(kind, func(t *testing.T) {
			b := backendtest.Open(t, kind, backendtest.Options{})
			in := &gateway.Ingester{Blobs: b.Blobs, Index: b.Index}
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

			mine, other := sameUIDOtherBytes(7202)
			key = leftover(other)
			otherSum := blobSHA256(t, b.Blobs, key)
			_, err = in.Store(ctx, mine.Reader(), gateway.StoreOptions{})
			wantReason(t, err, gateway.ReasonDuplicateRejected, "a store over an unindexed object with other bytes")
			if got := blobSHA256(t, b.Blobs, key); got != otherSum {
				t.Errorf("the refused store changed the object: SHA-256 %s, want %s", got, otherSum)
			}
			if _, err := b.Index.GetInstance(ctx, mine.SOPInstanceUID); !errors.Is(err, gateway.ErrNotFound) {
				t.Errorf("the refused store indexed the instance: %v", err)
			}
		})
	}
}

// TestIndexFailureKeepsTheBlob: upload A's index write fails and its
// re-read finds nothing; meanwhile upload B of the same bytes (past a lost
// lock) finds A's object, indexes it and is acknowledged. A must not then
// delete the object under B's index entry. Before, A deleted "its" blob
// once the re-read said the instance was not indexed.
func TestIndexFailureKeepsTheBlob(t *testing.T) {
	for _, kind := range backendtest.Kinds {
		t.Run(kind, func(t *testing.T) {
			b := backendtest.Open(t, kind, backendtest.Options{})
			idx := &lostLock{Index: b.Index}
			in := &gateway.Ingester{Blobs: b.Blobs, Index: idx}
			ins, _ := sameUIDOtherBytes(7401)
			ctx := t.Context()
			pA, pB := beginBoth(t, in, ins, ins)
			var puts, gets atomic.Int32
			var (
				recB *gateway.InstanceRecord
				errB error
			)
			idx.put = func(ctx context.Context, rec *gateway.InstanceRecord) (*gateway.InstanceRecord, bool, error) {
				if puts.Add(1) == 1 { // A's index write: its reply lost
					return nil, false, fmt.Errorf("%w: connection reset", gateway.ErrUnavailable)
				}
				return idx.Index.PutInstance(ctx, rec)
			}
			idx.get = func(ctx context.Context, uid string) (*gateway.InstanceRecord, error) {
				r, err := idx.Index.GetInstance(ctx, uid)
				if puts.Load() == 1 && gets.Add(1) == 1 { // A's re-read: B runs now
					recB, errB = pB.Finish(ctx)
				}
				return r, err
			}
			if _, err := pA.Finish(ctx); err == nil {
				t.Fatal("A's store succeeded although its index write failed")
			}
			if errB != nil {
				t.Fatalf("B: %v", errB)
			}
			if got := blobSHA256(t, b.Blobs, recB.Key()); got != recB.SHA256 {
				t.Errorf("acknowledged B's blob has SHA-256 %s, want %s", got, recB.SHA256)
			}
		})
	}
}

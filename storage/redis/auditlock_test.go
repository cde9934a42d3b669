package redis

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/blobwrap"
	"github.com/dicom-gateway/gateway/storage/s3"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// TestAuditSegmentsUnderObjectLock seals audit records into a MinIO bucket
// created with Object Lock, through the decorators every store runs
// behind, and shows that the sealed segment version can be neither deleted
// nor overwritten before its retention date: a delete only hides it behind
// a marker and a put only adds a version, both of which verification
// reports, while the locked version stays readable.
func TestAuditSegmentsUnderObjectLock(t *testing.T) {
	m := storagetest.MinIO(t)
	bucket := m.LockedBucket(t)
	store, err := s3.New(s3.Config{Endpoint: m.Endpoint, Bucket: bucket, AccessKey: m.AccessKey, SecretKey: gateway.Secret(m.SecretKey)})
	if err != nil {
		t.Fatal(err)
	}
	blobs := blobwrap.Wrap(store, prometheus.NewRegistry(), "s3")
	if err := blobs.(gateway.RetentionLocker).CanRetain(t.Context()); err != nil {
		t.Fatalf("CanRetain on a bucket with Object Lock = %v", err)
	}
	live := newTestAuditLog(t)
	old := time.Now().Add(-72 * time.Hour)
	for range 3 {
		ev := &gateway.AuditEvent{Actor: gateway.Principal{Name: "pacs-1"}, Action: gateway.ActionStore, Outcome: gateway.OutcomeSuccess, Time: old}
		if err := live.Record(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := live.Record(t.Context(), &gateway.AuditEvent{Actor: gateway.Principal{Name: "viewer"}, Action: gateway.ActionQuery, Outcome: gateway.OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}
	archive := &gateway.AuditArchive{Live: live.(gateway.AuditArchiveBackend), Blobs: blobs, Age: 24 * time.Hour, RetentionMode: gateway.ObjectLockGovernance, RetentionDays: 1}
	rep, err := archive.Seal(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	key := gateway.AuditSegmentKey(1, 3)
	if len(rep.Segments) != 1 || rep.Segments[0] != key || !rep.Locked {
		t.Fatalf("Seal = %+v, want one locked segment %s", rep, key)
	}

	client, err := minio.New(m.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	info, err := client.StatObject(t.Context(), bucket, key, minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if info.VersionID == "" {
		t.Fatal("the segment has no version ID: the bucket is not versioned")
	}
	mode, until, err := client.GetObjectRetention(t.Context(), bucket, key, info.VersionID)
	if err != nil || mode == nil || *mode != minio.Governance || until == nil || !until.After(time.Now().Add(23*time.Hour)) {
		t.Fatalf("retention of the segment = %v until %v, %v; want GOVERNANCE for a day", mode, until, err)
	}
	// Deleting the locked version is refused.
	err = client.RemoveObject(t.Context(), bucket, key, minio.RemoveObjectOptions{VersionID: info.VersionID})
	if err == nil {
		t.Fatal("deleting the locked segment version succeeded")
	}
	// Overwriting adds a version; verification sees the replacement.
	if _, err := blobs.Put(t.Context(), key, strings.NewReader("{}\n")); err != nil {
		t.Fatal(err)
	}
	if res, err := archive.Verify(t.Context()); err != nil || res.OK {
		t.Errorf("Verify after overwriting the segment = %+v, %v; want broken", res, err)
	}
	// Deleting through the store hides it behind a delete marker, which
	// verification reports as a removed segment.
	if err := blobs.Delete(t.Context(), key); err != nil {
		t.Fatal(err)
	}
	res, err := archive.Verify(t.Context())
	if err != nil || res.OK || !strings.Contains(res.Reason, "segment was removed") {
		t.Errorf("Verify after deleting the segment = %+v, %v; want a removed segment", res, err)
	}
	// The locked version is still there, byte for byte what was sealed.
	obj, err := client.GetObject(t.Context(), bucket, key, minio.GetObjectOptions{VersionID: info.VersionID})
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	st, err := obj.Stat()
	if err != nil || st.Size != info.Size {
		t.Errorf("locked version after delete and overwrite: %+v, %v; want %d bytes", st, err, info.Size)
	}
	// A COMPLIANCE or GOVERNANCE lock without a bucket that supports it is
	// refused before anything is written.
	plain, err := s3.New(s3.Config{Endpoint: m.Endpoint, Bucket: m.Bucket(t), AccessKey: m.AccessKey, SecretKey: gateway.Secret(m.SecretKey)})
	if err != nil {
		t.Fatal(err)
	}
	if err := blobwrap.Wrap(plain, prometheus.NewRegistry(), "s3").(gateway.RetentionLocker).CanRetain(t.Context()); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("CanRetain on a bucket without Object Lock = %v, want ErrUnsupported", err)
	}
}

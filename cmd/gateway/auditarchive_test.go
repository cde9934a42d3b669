package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/blobwrap"
	"github.com/dicom-gateway/gateway/storage/bolt"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/s3"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// recordOld appends n store events for study, timed days ago.
func recordOld(t *testing.T, log gateway.Auditor, n int, study string, days int) {
	t.Helper()
	for i := range n {
		ev := &gateway.AuditEvent{
			Actor: gateway.Principal{Name: "pacs-1"}, Action: gateway.ActionStore, Outcome: gateway.OutcomeSuccess,
			StudyUIDs: []string{study}, PatientIDs: []string{"PAT-OLD"},
			Time: time.Now().Add(-time.Duration(days)*24*time.Hour + time.Duration(i)*time.Second),
		}
		if err := log.Record(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAuditArchiveServeEmbedded runs gateway serve with
// --audit-archive-after over an embedded state file holding old records:
// they are sealed into the filesystem blob store and trimmed, the admin
// API's verify and query (JSON and FHIR) span segments and live log, and
// gateway audit verify checks both once serve has stopped, reporting a
// removed segment.
func TestAuditArchiveServeEmbedded(t *testing.T) {
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	log, err := bolt.NewAuditLog(db, "hampshire")
	if err != nil {
		t.Fatal(err)
	}
	recordOld(t, log, 4, "1.2.826.0.1.3680043.10.1", 3)
	recordOld(t, log, 3, "1.2.826.0.1.3680043.10.2", 2)
	// A record of today closes the last old day's segment (a day is sealed
	// once a record of a later day follows it), so that the Seal below does
	// not depend on serve's own first records having been written yet.
	if err := log.Record(t.Context(), &gateway.AuditEvent{Actor: gateway.Principal{Name: "pacs-1"}, Action: gateway.ActionQuery,
		Outcome: gateway.OutcomeSuccess, Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	cfg, err := parseServeConfig([]string{"--listen", "127.0.0.1:0", "--data-dir", dir, "--name", "hampshire", "--audit-archive-after", "24h"},
		func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	m := MustRunMain(t, cfg, nil)
	if _, err := m.Backends.AuditArchive.Seal(t.Context()); err != nil { // the loop's first run may have done it already
		t.Fatal(err)
	}
	base := "http://" + m.Addr + "/api/v1/audit"
	code, body := get(t, base+"/verify")
	var res gateway.VerifyResult
	if err := json.Unmarshal([]byte(body), &res); code != 200 || err != nil || !res.OK || res.Segments < 2 || res.Sealed != 7 {
		t.Fatalf("GET /audit/verify = %d %s, want ok with the 7 old records sealed in at least 2 segments", code, body)
	}
	code, body = get(t, base+"?study_uid=1.2.826.0.1.3680043.10.1")
	var page gateway.AuditPage
	if err := json.Unmarshal([]byte(body), &page); code != 200 || err != nil || len(page.Events) != 4 || page.Events[0].Seq != 1 {
		t.Fatalf("GET /audit?study_uid= = %d %s, want the 4 sealed records from seq 1", code, body)
	}
	code, body = get(t, base+"?patient_id=PAT-OLD&format=fhir")
	if code != 200 || strings.Count(body, `"resourceType":"AuditEvent"`) != 7 {
		t.Errorf("GET /audit?format=fhir = %d, %d AuditEvents, want 7: %.300s", code, strings.Count(body, `"resourceType":"AuditEvent"`), body)
	}
	if code, body = get(t, "http://"+m.Addr+"/metrics"); code != 200 || !strings.Contains(body, "gateway_audit_sealed_records_total 7") || !strings.Contains(body, "gateway_audit_seal_failures_total 0") {
		t.Errorf("GET /metrics = %d, want 7 records sealed and no failure", code)
	}
	if err := m.Close(t.Context()); err != nil {
		t.Fatal(err)
	}

	var stdout, stderr bytes.Buffer
	if err := runAudit(t.Context(), []string{"verify", "--data-dir", dir}, &stdout, &stderr); err != nil {
		t.Fatalf("verify: %v (%s)", err, stderr.String())
	}
	if got := stdout.String(); !strings.Contains(got, "intact") || !strings.Contains(got, "7 sealed in") {
		t.Errorf("verify printed %q", got)
	}
	segs, err := filepath.Glob(filepath.Join(dir, "blobs", "audit", "*.jsonl"))
	if err != nil || len(segs) < 2 {
		t.Fatalf("segment files %v, %v", segs, err)
	}
	if err := os.Remove(segs[0]); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	err = runAudit(t.Context(), []string{"verify", "--data-dir", dir}, &stdout, &stderr)
	if !errors.Is(err, errAuditBroken) || !strings.Contains(stdout.String(), "segment was removed") {
		t.Errorf("verify after removing the first segment = %v, %q; want broken", err, stdout.String())
	}
}

// TestAuditArchiveVerifyRedisS3 seals a Redis audit log into MinIO and
// checks it with gateway audit verify, which needs the S3 flags to find
// the segments.
func TestAuditArchiveVerifyRedisS3(t *testing.T) {
	url, prefix := storagetest.RedisURL(t), storagetest.RedisPrefix(t)
	mn := storagetest.MinIO(t)
	bucket := mn.Bucket(t)
	c, err := redis.Open(url, prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	log := redis.NewAuditLog(c, "surrey")
	recordOld(t, log, 3, "1.2.826.0.1.3680043.10.3", 2)
	recordN(t, log, 2)
	store, err := s3.New(s3.Config{Endpoint: mn.Endpoint, Bucket: bucket, AccessKey: mn.AccessKey, SecretKey: gateway.Secret(mn.SecretKey)})
	if err != nil {
		t.Fatal(err)
	}
	archive := &gateway.AuditArchive{Live: log, Blobs: blobwrap.CheckKeys(store), Age: 24 * time.Hour}
	if rep, err := archive.Seal(t.Context()); err != nil || rep.Sealed != 3 {
		t.Fatalf("Seal = %+v, %v; want 3 records sealed", rep, err)
	}
	var stdout, stderr bytes.Buffer
	args := []string{"verify", "--redis-url", url, "--redis-prefix", prefix,
		"--s3-endpoint", mn.Endpoint, "--s3-bucket", bucket, "--s3-access-key", mn.AccessKey, "--s3-secret-key", mn.SecretKey, "--json"}
	if err := runAudit(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("verify: %v (%s)", err, stderr.String())
	}
	var res gateway.VerifyResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil || !res.OK || res.Records != 6 || res.Sealed != 3 || res.Segments != 1 {
		t.Errorf("verify --json printed %s, want ok, 6 records, 3 sealed in 1 segment", stdout.String())
	}
	// Without the blob store the sealed part cannot be checked: said so.
	err = runAudit(t.Context(), []string{"verify", "--redis-url", url, "--redis-prefix", prefix, "--data-dir", t.TempDir()}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "sealed into segments") {
		t.Errorf("verify without the segments' store = %v, want it asked for", err)
	}
}

func TestAuditArchiveFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--audit-archive-after", "10m"}, "at least 1h"},
		{[]string{"--audit-archive-after", "720h", "--audit-retention-days", "365"}, "needs --s3-endpoint"},
		{[]string{"--audit-retention-days", "365", "--s3-endpoint", "127.0.0.1:9000"}, "without --audit-archive-after"},
		{[]string{"--audit-archive-after", "720h", "--audit-retention-mode", "forever"}, "compliance or governance"},
		{[]string{"--audit-archive-bucket", "audit"}, "needs --s3-endpoint"},
	} {
		args := append([]string{"--listen", "127.0.0.1:0", "--data-dir", t.TempDir()}, tt.args...)
		if _, err := parseServeConfig(args, func(string) string { return "" }, io.Discard); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: %v, want an error mentioning %q", tt.args, err, tt.want)
		}
	}
	cfg, err := parseServeConfig([]string{"--listen", "127.0.0.1:0", "--audit-archive-after", "720h", "--s3-endpoint", "127.0.0.1:9000",
		"--audit-retention-days", "2555", "--audit-retention-mode", "GOVERNANCE"}, func(string) string { return "" }, io.Discard)
	if err != nil || cfg.AuditArchiveAfter != 720*time.Hour || cfg.AuditRetentionDays != 2555 {
		t.Errorf("valid archive flags: %+v, %v", cfg, err)
	}
}

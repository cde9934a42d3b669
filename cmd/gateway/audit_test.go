package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bbolt "go.etcd.io/bbolt"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/bolt"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

func recordN(t *testing.T, log gateway.AuditLog, n int) {
	t.Helper()
	for range n {
		ev := &gateway.AuditEvent{Actor: gateway.Principal{Name: "pacs-1"}, Action: gateway.ActionStore, Outcome: gateway.OutcomeSuccess}
		if err := log.Record(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
}

func TestAuditVerifyEmbedded(t *testing.T) {
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	log, err := bolt.NewAuditLog(db, "hampshire")
	if err != nil {
		t.Fatal(err)
	}
	recordN(t, log, 4)

	// While the state file is held (gateway serve running), verify says so.
	var stdout, stderr bytes.Buffer
	if err := runAudit(t.Context(), []string{"verify", "--data-dir", dir}, &stdout, &stderr); err == nil || !strings.Contains(err.Error(), "/api/v1/audit/verify") {
		t.Errorf("verify on a held state file = %v, want advice", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	stdout.Reset()
	if err := runAudit(t.Context(), []string{"verify", "--data-dir", dir}, &stdout, &stderr); err != nil {
		t.Fatalf("verify: %v (%s)", err, stderr.String())
	}
	if got := stdout.String(); !strings.Contains(got, "intact: 4 records") {
		t.Errorf("verify printed %q", got)
	}

	raw, err := bbolt.Open(filepath.Join(dir, "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = raw.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte("audit")).Bucket([]byte("records")).Delete([]byte{0, 0, 0, 0, 0, 0, 0, 3})
	})
	if cerr := raw.Close(); err != nil || cerr != nil {
		t.Fatal(err, cerr)
	}
	stdout.Reset()
	err = runAudit(t.Context(), []string{"verify", "--data-dir", dir}, &stdout, &stderr)
	if !errors.Is(err, errAuditBroken) {
		t.Fatalf("verify after deleting record 3 = %v, want errAuditBroken", err)
	}
	if got, want := stdout.String(), "first broken record "+gateway.AuditRecordID(3); !strings.Contains(got, want) {
		t.Errorf("verify printed %q, want it to contain %q", got, want)
	}
	stdout.Reset()
	_ = runAudit(t.Context(), []string{"verify", "--data-dir", dir, "--json"}, &stdout, &stderr)
	if got := stdout.String(); !strings.Contains(got, `"first_broken": "`+gateway.AuditRecordID(3)+`"`) {
		t.Errorf("verify --json printed %s", got)
	}
}

func TestAuditVerifyRedis(t *testing.T) {
	url, prefix := storagetest.RedisURL(t), storagetest.RedisPrefix(t)
	c, err := redis.Open(url, prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	recordN(t, redis.NewAuditLog(c, "surrey"), 3)
	var stdout, stderr bytes.Buffer
	if err := runAudit(t.Context(), []string{"verify", "--redis-url", url, "--redis-prefix", prefix}, &stdout, &stderr); err != nil {
		t.Fatalf("verify: %v (%s)", err, stderr.String())
	}
	if got := stdout.String(); !strings.Contains(got, "intact: 3 records") {
		t.Errorf("verify printed %q", got)
	}
}

func TestAuditUsage(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if err := runAudit(t.Context(), nil, &stdout, &stderr); err != nil || !strings.Contains(stdout.String(), "gateway audit verify") {
		t.Errorf("audit without arguments = %v, %q", err, stdout.String())
	}
	if err := runAudit(t.Context(), []string{"erase"}, &stdout, &stderr); err == nil {
		t.Error("audit erase succeeded")
	}
}

func TestAuditVerifyMissingDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "typo")
	var stdout, stderr bytes.Buffer
	if err := runAudit(t.Context(), []string{"verify", "--data-dir", dir}, &stdout, &stderr); err == nil {
		t.Fatal("verify of a missing data directory succeeded")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("verify created %s: %v", dir, err)
	}
}

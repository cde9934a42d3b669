package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// TestRetentionConfig reads the retention: part of --config: days and Go
// durations, sizes with units, rules; and names the key of each mistake.
func TestRetentionConfig(t *testing.T) {
	fc, err := parseFileConfig(strings.NewReader(`
retention:
  max_age: 2555d
  max_bytes: 20TiB
  interval: 30m
  batch_size: 50
  dry_run: true
  rules:
    - {name: ct-screening, modality: ct, max_age: 365d}
`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := fc.Retention.Policy()
	if err != nil {
		t.Fatal(err)
	}
	if p.MaxAge != 2555*24*time.Hour || p.MaxBytes != 20<<40 || p.Interval != 30*time.Minute || p.BatchSize != 50 || !p.DryRun ||
		len(p.Rules) != 1 || p.Rules[0] != (gateway.RetentionRule{Name: "ct-screening", Modality: "CT", MaxAge: 365 * 24 * time.Hour}) {
		t.Fatalf("policy = %+v", p)
	}
	for _, tt := range []struct{ yaml, want string }{
		{"retention: {max_age: 7y}", "retention.max_age"},
		{"retention: {max_bytes: 5 pints}", "retention.max_bytes"},
		{"retention: {max_bytes: -1}", "retention.max_bytes"},
		{"retention: {rules: [{name: a, max_age: 1d}]}", "retention.rules[0]"},
		{"retention: {rules: [{name: a, modality: CT, max_age: soon}]}", "retention.rules[0].max_age"},
		{"retention: {rules: [{name: a, modality: CT}, {name: a, modality: MR}]}", "used twice"},
		{"retention: {max_agee: 1d}", "max_agee"},
	} {
		fc, err := parseFileConfig(strings.NewReader(tt.yaml))
		if err == nil {
			_, err = fc.Retention.Policy()
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one naming %s", tt.yaml, err, tt.want)
		}
	}
}

// TestRetentionRunnerInServe: gateway serve with a retention policy runs it
// on its interval: a stored study over the byte cap is deleted, the
// deletion shows in the audit log with the retention actor and in
// /metrics.
func TestRetentionRunnerInServe(t *testing.T) {
	cfg := testConfig(t)
	cfg.File.Retention = RetentionConfig{MaxBytes: "1B", Interval: "20ms"}
	m := MustRunMain(t, cfg, nil)
	insts := synth.Study(synth.StudySpec{Seed: 1801, Rows: 8, Columns: 8})
	body, ct := stowBody(t, insts)
	resp, err := http.Post("http://"+m.Addr+"/dicomweb/studies", ct, body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("STOW = %d", resp.StatusCode)
	}
	study := insts[0].StudyInstanceUID
	// The counters move when a run has finished its deletions.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, metrics := get(t, "http://"+m.Addr+"/metrics")
		if strings.Contains(metrics, "gateway_retention_deleted_studies_total 1") {
			if !strings.Contains(metrics, "gateway_retention_held_bytes 0") {
				t.Errorf("/metrics after the deletion lacks gateway_retention_held_bytes 0")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the runner deleted nothing within 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	page, err := m.Backends.AuditLog.Query(t.Context(), gateway.AuditFilter{Actor: gateway.RetentionActor, Action: gateway.ActionDelete})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Events) != 1 || len(page.Events[0].StudyUIDs) != 1 || page.Events[0].StudyUIDs[0] != study ||
		page.Events[0].Detail["retention_rule"] != gateway.RetentionRuleMaxBytes {
		t.Fatalf("retention delete events = %+v, want one for %s with rule max_bytes", page.Events, study)
	}
	if status, _ := get(t, "http://"+m.Addr+"/dicomweb/studies/"+study+"/metadata"); status != http.StatusNotFound {
		t.Errorf("metadata of the deleted study = %d, want 404", status)
	}
}

// TestRetentionPlanCommand: gateway retention plan, on the state a stopped
// gateway left, prints the study the policy would delete and deletes
// nothing.
func TestRetentionPlanCommand(t *testing.T) {
	cfg := testConfig(t)
	m := NewMain(cfg, newLogger(io.Discard, "error"))
	if err := m.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	insts := synth.Study(synth.StudySpec{Seed: 1802, Rows: 8, Columns: 8})
	body, ct := stowBody(t, insts)
	resp, err := http.Post("http://"+m.Addr+"/dicomweb/studies", ct, body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("STOW = %d", resp.StatusCode)
	}
	if err := m.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(t.TempDir(), "gateway.yaml")
	if err := os.WriteFile(conf, []byte("retention: {max_bytes: 1B}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"plan", "--data-dir", cfg.DataDir, "--config", conf}
	for range 2 { // a plan deletes nothing: the second finds the same study
		var stdout bytes.Buffer
		if err := runRetention(t.Context(), args, &stdout, io.Discard); err != nil {
			t.Fatal(err)
		}
		var plan gateway.RetentionPlan
		if err := json.Unmarshal(stdout.Bytes(), &plan); err != nil {
			t.Fatalf("%v: %s", err, stdout.String())
		}
		if len(plan.Delete) != 1 || plan.Delete[0].StudyInstanceUID != insts[0].StudyInstanceUID || plan.Delete[0].Rule != gateway.RetentionRuleMaxBytes {
			t.Fatalf("plan = %s", stdout.String())
		}
	}
}

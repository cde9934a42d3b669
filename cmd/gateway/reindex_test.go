package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// searchAll runs the queries against a gateway and returns each answer with
// the host-dependent RetrieveURLs removed, so two gateways on different
// ports can be compared.
func searchAll(t *testing.T, addr string, queries []string) map[string]any {
	t.Helper()
	out := map[string]any{}
	for _, q := range queries {
		code, body := get(t, "http://"+addr+"/dicomweb/"+q)
		if code != http.StatusOK {
			t.Fatalf("%s = %d %s", q, code, body)
		}
		body = strings.ReplaceAll(body, addr, "HOST")
		var v any
		if err := json.Unmarshal([]byte(body), &v); err != nil {
			t.Fatal(err)
		}
		out[q] = v
	}
	return out
}

// TestReindexRebuildsTheSameIndex stores studies, throws the index away,
// runs gateway reindex, and checks that QIDO answers exactly as before. On
// Redis: a single server, a cluster, and the migration from a single
// server's layout to a cluster's (the index rebuilt on the cluster from
// object storage answers as the single server did).
func TestReindexRebuildsTheSameIndex(t *testing.T) {
	for _, backend := range []string{"embedded", "redis+s3", "rediscluster+s3", "redis+s3 to rediscluster"} {
		t.Run(backend, func(t *testing.T) {
			cfg := testConfig(t)
			args := []string{"--data-dir", cfg.DataDir}
			if backend != "embedded" {
				s := storagetest.MinIO(t)
				cfg.RedisURL = storagetest.RedisURL(t)
				if backend == "rediscluster+s3" {
					cfg.RedisURL = storagetest.RedisClusterURL(t)
				}
				cfg.RedisPrefix = storagetest.RedisPrefixIn(t, cfg.RedisURL)
				cfg.S3Endpoint, cfg.S3AccessKey, cfg.S3SecretKey, cfg.S3Bucket = s.Endpoint, s.AccessKey, gateway.Secret(s.SecretKey), s.Bucket(t)
			}
			m := NewMain(cfg, newLogger(io.Discard, "error"))
			if err := m.Run(t.Context()); err != nil {
				t.Fatal(err)
			}
			var insts []synth.Instance
			for i := range 3 {
				insts = append(insts, synth.Study(synth.StudySpec{Seed: uint64(500 + i), Patient: i, Series: 2, InstancesPerSeries: 2, Rows: 8, Columns: 8, Frames: 2})...)
			}
			body, ct := stowBody(t, insts)
			resp, err := http.Post("http://"+m.Addr+"/dicomweb/studies", ct, body)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("STOW = %d", resp.StatusCode)
			}
			queries := []string{
				"studies?includefield=all",
				"series?includefield=all",
				"instances?includefield=all",
				"studies/" + insts[0].StudyInstanceUID + "/series/" + insts[0].SeriesInstanceUID + "/metadata",
			}
			before := searchAll(t, m.Addr, queries)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := m.Close(ctx); err != nil {
				t.Fatal(err)
			}

			// Lose the index: the state file, or a fresh Redis key prefix.
			if backend == "embedded" {
				if err := os.Remove(filepath.Join(cfg.DataDir, "state.db")); err != nil {
					t.Fatal(err)
				}
			} else {
				if backend == "redis+s3 to rediscluster" {
					cfg.RedisURL = storagetest.RedisClusterURL(t)
				}
				cfg.RedisPrefix = storagetest.RedisPrefixIn(t, cfg.RedisURL)
				args = []string{"--redis-url", cfg.RedisURL, "--redis-prefix", cfg.RedisPrefix,
					"--s3-endpoint", cfg.S3Endpoint, "--s3-bucket", cfg.S3Bucket,
					"--s3-access-key", cfg.S3AccessKey, "--s3-secret-key", cfg.S3SecretKey.Reveal()}
			}
			var stdout strings.Builder
			if err := runReindex(t.Context(), args, &stdout, io.Discard); err != nil {
				t.Fatalf("reindex: %v", err)
			}
			if !strings.Contains(stdout.String(), "reindexed 12 instances") {
				t.Errorf("reindex said %q, want 12 instances", stdout.String())
			}
			after := searchAll(t, MustRunMain(t, cfg, nil).Addr, queries)
			for _, q := range queries {
				if !reflect.DeepEqual(before[q], after[q]) {
					b1, _ := json.Marshal(before[q])
					b2, _ := json.Marshal(after[q])
					t.Errorf("%s differs after reindex:\nbefore %.600s\nafter  %.600s", q, b1, b2)
				}
			}
		})
	}
}

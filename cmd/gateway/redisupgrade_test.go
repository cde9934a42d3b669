package main

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// TestServeListsFlaggedStudiesOnRedis: a Redis index written before
// 2026-12-06 lists a study flagged for an identity conflict under its
// latest instance's Patient ID only (here rebuilt by hand on a single
// server, whose layout puts a study's hash at {idx}:s:<uid>); gateway serve
// lists it under the other patient's ID too, in the background, and QIDO
// by that ID then finds it.
func TestServeListsFlaggedStudiesOnRedis(t *testing.T) {
	cfg := testConfig(t)
	cfg.RedisURL, cfg.RedisPrefix = storagetest.RedisURL(t), storagetest.RedisPrefix(t)
	client, err := redis.Open(cfg.RedisURL, cfg.RedisPrefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	index := redis.NewIndex(client)
	study := "1.2.11"
	for _, rec := range []*gateway.InstanceRecord{
		storagetest.Record(study, study+".1", study+".1.1", map[string]any{dicomcodec.TagPatientID: "S100"}),
		storagetest.Flagged(storagetest.Record(study, study+".2", study+".2.1", map[string]any{dicomcodec.TagPatientID: "H200"}), gateway.PatientIdentity{ID: "S100"}),
	} {
		if _, _, err := index.PutInstance(t.Context(), rec); err != nil {
			t.Fatal(err)
		}
	}
	rdb := client.Redis()
	if err := rdb.HSet(t.Context(), client.Key("{idx}:s:"+study), "pid", "H200").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ZRem(t.Context(), client.Key("{idx}:x:pid:S100"), study).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(t.Context(), client.Key("{idx}:x:idok")).Err(); err != nil {
		t.Fatal(err)
	}
	q, err := gateway.ParseQuery(gateway.LevelStudy, "", "", map[string][]string{"PatientID": {"S100"}}, gateway.QueryLimits{Default: 10, Max: 10})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := index.Search(t.Context(), q); err != nil || len(res.Items) != 0 {
		t.Fatalf("PatientID=S100 on the hand-made old layout: %v, %v; want no study (the layout was not rebuilt)", res, err)
	}
	m := MustRunMain(t, cfg, nil)
	deadline := time.Now().Add(15 * time.Second) // the listing runs in the background
	for {
		code, body := get(t, "http://"+m.Addr+"/dicomweb/studies?PatientID=S100")
		if code == http.StatusOK && strings.Contains(body, study) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("QIDO PatientID=S100 = %d %.300s: the flagged study was not listed under the other patient", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestStagesFromMetrics: the stages column is the mean of each stage between
// two scrapes of a gateway's /metrics, in the stages' order, leaving out a
// stage that did not run.
func TestStagesFromMetrics(t *testing.T) {
	page := ""
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(page))
	}))
	defer srv.Close()
	page = `# HELP gateway_store_stage_duration_seconds x
gateway_store_stage_duration_seconds_bucket{stage="audit",le="+Inf"} 1
gateway_store_stage_duration_seconds_sum{stage="audit"} 0.002
gateway_store_stage_duration_seconds_count{stage="audit"} 1
gateway_store_stage_duration_seconds_sum{stage="index"} 0.5
gateway_store_stage_duration_seconds_count{stage="index"} 100
gateway_store_stage_duration_seconds_sum{stage="receive"} 0
gateway_store_stage_duration_seconds_count{stage="receive"} 0
gateway_store_stage_duration_seconds_sum{stage="durable"} 1
gateway_store_stage_duration_seconds_count{stage="durable"} 100
`
	before, err := scrapeStages(t.Context(), srv.Client(), srv.URL+"/dicomweb")
	if err != nil {
		t.Fatal(err)
	}
	page = `gateway_store_stage_duration_seconds_sum{stage="audit"} 0.012
gateway_store_stage_duration_seconds_count{stage="audit"} 6
gateway_store_stage_duration_seconds_sum{stage="index"} 0.8
gateway_store_stage_duration_seconds_count{stage="index"} 200
gateway_store_stage_duration_seconds_sum{stage="receive"} 0.1
gateway_store_stage_duration_seconds_count{stage="receive"} 100
gateway_store_stage_duration_seconds_sum{stage="durable"} 1
gateway_store_stage_duration_seconds_count{stage="durable"} 100
`
	after, err := scrapeStages(t.Context(), srv.Client(), srv.URL+"/dicomweb")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := describeStages(before, after), "receive 1.00 · index 3.00 · audit 2.00"; got != want {
		t.Errorf("stages %q, want %q", got, want)
	}
	page = "go_goroutines 7\n"
	if _, err := scrapeStages(t.Context(), srv.Client(), srv.URL+"/dicomweb"); err == nil {
		t.Error("a /metrics without the stage histograms gave no error")
	}
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/dicom-gateway/gateway/gateway"
)

// stageSums is what a gateway's /metrics says of its store stages
// (gateway_store_stage_duration_seconds): seconds and count per stage.
type stageSums map[string][2]float64

// stagesNote explains the stages column of the STOW tables.
const stagesNote = "Stages: the gateway's `gateway_store_stage_duration_seconds` over the part (its /metrics before and after), mean milliseconds: " +
	"receive (read one instance from the request and write it), durable (its sync, name and directory sync), index (its study's entry read for the identity check, and its own written), " +
	"per instance; audit (the request's audit record), per request. Under concurrent requests each stage includes waiting for the disk or for a shared commit."

// scrapeStages reads the store stage histograms of the gateway whose
// DICOMweb root is root (its /metrics is beside /dicomweb).
func scrapeStages(ctx context.Context, c *http.Client, root string) (stageSums, error) {
	base := strings.TrimSuffix(root, "/dicomweb")
	_, body, _, err := get(ctx, c, base+"/metrics", "text/plain", true)
	if err != nil {
		return nil, fmt.Errorf("read /metrics: %w", err)
	}
	out := stageSums{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for i, suffix := range []string{"_sum", "_count"} {
			prefix := "gateway_store_stage_duration_seconds" + suffix + `{stage="`
			rest, ok := strings.CutPrefix(line, prefix)
			if !ok {
				continue
			}
			stage, value, ok := strings.Cut(rest, `"} `)
			if !ok {
				continue
			}
			v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
			if err != nil {
				return nil, fmt.Errorf("/metrics line %q: %w", line, err)
			}
			cur := out[stage]
			cur[i] = v
			out[stage] = cur
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("/metrics has no gateway_store_stage_duration_seconds")
	}
	return out, sc.Err()
}

// describeStages says how long each stage took on average between two
// scrapes, in milliseconds: per instance, and per request for the audit.
func describeStages(before, after stageSums) string {
	var parts []string
	for _, stage := range gateway.StoreStages { // in the order an instance goes through them
		s := string(stage)
		sum, n := after[s][0]-before[s][0], after[s][1]-before[s][1]
		if n <= 0 {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %.2f", s, 1000*sum/n))
	}
	if len(parts) == 0 {
		return "—"
	}
	return strings.Join(parts, " · ")
}

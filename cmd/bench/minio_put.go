package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/dicom-gateway/gateway/internal/synth"
)

// minioPutNote measures MinIO's own PUT rate (minio-go, size known) for the
// objects a STOW part stored, at the clients' concurrency and at 16 (what
// one request of many instances keeps in flight), into a fresh bucket of
// the GATEWAY_TEST_S3_* MinIO that is removed afterwards, and says it
// beside the gateway redis+minio row of tab: MinIO is the limit of that
// gateway when the ratio nears 1. "" when tab has no redis+minio row or no
// MinIO is configured.
func (b *bench) minioPutNote(ctx context.Context, instances []synth.Instance, tab *table) string {
	i := slices.IndexFunc(tab.rows, func(r row) bool { return strings.Contains(r.target, "minio") })
	if os.Getenv("GATEWAY_TEST_S3_ENDPOINT") == "" || i < 0 {
		return "" // no redis+minio gateway in this run: nothing to compare
	}
	mc, err := testMinIO()
	if err != nil {
		return "MinIO's own PUT rate: not measurable: " + err.Error()
	}
	gatewayRate := 0.0
	if tab.rows[i].m.err == nil {
		gatewayRate = tab.rows[i].m.v["ips"]
	}
	var figures []string
	for _, conc := range []int{b.cfg.conc, 16} {
		bucket := fmt.Sprintf("bench-put-%d-%d", time.Now().UnixNano(), conc)
		if err := mc.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
			return "MinIO's own PUT rate: not measurable: " + err.Error()
		}
		d, err := putAll(ctx, mc, bucket, "probe", instances, conc)
		removeBuckets(ctx, mc, bucket)
		if err != nil {
			return "MinIO's own PUT rate: not measurable: " + err.Error()
		}
		rate := float64(len(instances)) / d.Seconds()
		f := fmt.Sprintf("%d at once %.1f objects/s, %.1f MB/s", conc, rate, float64(sum(instances))/mb/d.Seconds())
		if gatewayRate > 0 {
			f += fmt.Sprintf(" (gateway redis+minio ÷ it: %.2f)", gatewayRate/rate)
		}
		figures = append(figures, f)
	}
	return "MinIO's own PUT of the same objects (minio-go, size known), measured after the targets in this run: " + strings.Join(figures, "; ") + "."
}

// putAll PUTs instances into bucket under prefix, conc at once, and says
// how long it took.
func putAll(ctx context.Context, mc *minio.Client, bucket, prefix string, instances []synth.Instance, conc int) (time.Duration, error) {
	start := time.Now()
	err := forEach(ctx, len(instances), conc, func(ctx context.Context, i int) error {
		body := instances[i].Reader()
		defer body.Close()
		_, err := mc.PutObject(ctx, bucket, fmt.Sprintf("%s/%06d", prefix, i), body, instances[i].Size(),
			minio.PutObjectOptions{ContentType: "application/dicom", PartSize: 16 << 20})
		return err
	})
	return time.Since(start), err
}

// minioWarmRounds is how many times warmMinIO PUTs its objects: a MinIO
// just started spends about twice the CPU per PUT on its first thousand
// or so (measured 2026-12-05: 3.5-4.7 ms of MinIO CPU per 52 KB PUT in the
// first thousand, also when it had been idle for 90 s, 1.5-2.3 in most
// later thousands), so
// the first target of a run would otherwise pay MinIO's warm-up.
const minioWarmRounds = 2

// warmMinIO PUTs instances minioWarmRounds times, 16 at once, into a
// bucket it then removes, before any target is timed, and says so with the
// rate of each round for the report's header ("" when no MinIO is
// configured).
func warmMinIO(ctx context.Context, instances []synth.Instance) string {
	if os.Getenv("GATEWAY_TEST_S3_ENDPOINT") == "" {
		return ""
	}
	mc, err := testMinIO()
	if err != nil {
		return "MinIO not warmed: " + err.Error()
	}
	bucket := fmt.Sprintf("bench-warm-%d", time.Now().UnixNano())
	if err := mc.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
		return "MinIO not warmed: " + err.Error()
	}
	defer removeBuckets(ctx, mc, bucket)
	var rates []string
	for round := range minioWarmRounds {
		d, err := putAll(ctx, mc, bucket, fmt.Sprintf("warm%d", round), instances, 16)
		if err != nil {
			return "MinIO not warmed: " + err.Error()
		}
		rates = append(rates, fmt.Sprintf("%.0f", float64(len(instances))/d.Seconds()))
	}
	return fmt.Sprintf("MinIO warmed before the first target (untimed): %d rounds of %d PUTs of the small instances, 16 at once, at %s objects/s "+
		"(a MinIO just started spends about twice the CPU per PUT on its first thousand)", minioWarmRounds, len(instances), strings.Join(rates, " then "))
}

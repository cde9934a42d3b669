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
		start := time.Now()
		err := forEach(ctx, len(instances), conc, func(ctx context.Context, i int) error {
			body := instances[i].Reader()
			defer body.Close()
			_, err := mc.PutObject(ctx, bucket, fmt.Sprintf("probe/%06d", i), body, instances[i].Size(),
				minio.PutObjectOptions{ContentType: "application/dicom", PartSize: 16 << 20})
			return err
		})
		d := time.Since(start)
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

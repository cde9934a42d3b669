package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// runReindex is `gateway reindex [serve flags]`: it rebuilds the index from
// object storage, the source of truth (disaster recovery: a lost Redis or
// state file). It takes the same storage flags and GATEWAY_* variables as
// serve, and may run while the gateway serves: entries are replaced, never
// removed.
func runReindex(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseServeConfig(args, os.Getenv, stderr)
	if err != nil {
		return err
	}
	logger := newLogger(io.Discard, "error")
	b, err := OpenBackends(ctx, cfg, logger, prometheus.NewRegistry()) // nothing scrapes a one-shot command
	if err != nil {
		return err
	}
	defer b.Close(context.Background())
	for name, p := range b.Ready {
		if err := p.Ping(ctx); err != nil {
			return fmt.Errorf("%s is not reachable: %w", name, err)
		}
	}
	start := time.Now()
	last := time.Time{}
	report := func(p gateway.ReindexProgress, final bool) {
		if !final && time.Since(last) < 200*time.Millisecond {
			return
		}
		last = time.Now()
		secs := max(time.Since(start).Seconds(), 1e-3)
		fmt.Fprintf(stderr, "\r%s %d instances indexed, %d failed, %.1f MB, %.0f instances/s   ",
			spinner(p.Seen), p.Indexed, p.Failed, float64(p.Bytes)/1e6, float64(p.Seen)/secs)
		if final {
			fmt.Fprintln(stderr)
		}
	}
	var failures []string
	p, err := gateway.Reindex(ctx, b.Blobs, b.Index, dicomcodec.HeaderLimits{MaxElements: cfg.MaxHeaderElements}, func(p gateway.ReindexProgress) {
		if p.Err != nil && len(failures) < 100 {
			failures = append(failures, p.Err.Error())
		}
		report(p, false)
	})
	report(p, true)
	for _, f := range failures {
		fmt.Fprintln(stderr, "  not indexed:", f)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "reindexed %d instances (%d blobs could not be read) from %s into %s in %s\n",
		p.Indexed, p.Failed, b.BlobKind, b.StateKind, time.Since(start).Round(time.Millisecond))
	if p.Failed > 0 {
		return fmt.Errorf("%d blobs could not be indexed", p.Failed)
	}
	return nil
}

func spinner(n int) string { return string(`|/-\`[n%4]) }

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dicom-gateway/gateway/gateway"
)

const retentionUsage = `Usage:
  gateway retention plan [serve flags: --config, --data-dir | --redis-url, --s3-…]

plan opens the backends as gateway serve does and prints, as JSON, what the
retention policy of --config would delete now and which due studies it
would keep (held, transfer pending), deleting nothing. The embedded state
file is held by one process at a time: stop gateway serve first, or ask the
running gateway (GET /api/v1/retention/plan).
`

// runRetention is the gateway retention subcommand.
func runRetention(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, retentionUsage)
		return nil
	}
	if args[0] != "plan" {
		fmt.Fprint(stderr, retentionUsage)
		return fmt.Errorf("unknown retention command %q", args[0])
	}
	cfg, err := parseServeConfig(args[1:], os.Getenv, stderr)
	if err != nil {
		return err
	}
	policy, err := cfg.File.Retention.Policy()
	if err != nil {
		return err
	}
	b, err := OpenBackends(ctx, cfg, newLogger(io.Discard, "error"), prometheus.NewRegistry()) // nothing scrapes a one-shot command
	if err != nil {
		return err
	}
	defer b.Close(context.Background())
	svc := gateway.NewServices(gateway.ServiceDeps{
		Name: cfg.Name, Blobs: b.Blobs, Index: b.Index, Holds: b.Holds, Retention: policy,
		Transfers: &gateway.Transfers{Name: cfg.Name, Queue: b.Queue, Index: b.Index},
	})
	plan, err := svc.Retention.Plan(ctx)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(plan)
}

// RetentionConfig is the retention: part of --config (README "Retention and
// legal hold"). Ages are Go durations or days ("2555d"); sizes are bytes
// with an optional unit (KB, MB, GB, TB, KiB, MiB, GiB, TiB).
type RetentionConfig struct {
	MaxAge    string                `yaml:"max_age"`
	MaxBytes  string                `yaml:"max_bytes"`
	Interval  string                `yaml:"interval"`
	BatchSize int                   `yaml:"batch_size"`
	ScanLimit int                   `yaml:"scan_limit"`
	DryRun    bool                  `yaml:"dry_run"`
	Rules     []RetentionRuleConfig `yaml:"rules"`
}

// RetentionRuleConfig is one rule of retention.rules.
type RetentionRuleConfig struct {
	Name     string `yaml:"name"`
	Modality string `yaml:"modality"`
	MaxAge   string `yaml:"max_age"`
}

// Policy parses the configuration into the policy gateway.Retention runs.
func (c RetentionConfig) Policy() (gateway.RetentionPolicy, error) {
	var p gateway.RetentionPolicy
	var errs []error
	var err error
	if p.MaxAge, err = parseAge(c.MaxAge); err != nil {
		errs = append(errs, fmt.Errorf("retention.max_age: %w", err))
	}
	if p.MaxBytes, err = parseBytes(c.MaxBytes); err != nil {
		errs = append(errs, fmt.Errorf("retention.max_bytes: %w", err))
	}
	if p.Interval, err = parseAge(c.Interval); err != nil {
		errs = append(errs, fmt.Errorf("retention.interval: %w", err))
	}
	p.BatchSize, p.ScanLimit, p.DryRun = c.BatchSize, c.ScanLimit, c.DryRun
	for i, r := range c.Rules {
		age, err := parseAge(r.MaxAge)
		if err != nil {
			errs = append(errs, fmt.Errorf("retention.rules[%d].max_age: %w", i, err))
		}
		p.Rules = append(p.Rules, gateway.RetentionRule{Name: r.Name, Modality: strings.ToUpper(r.Modality), MaxAge: age})
	}
	if err := errors.Join(errs...); err != nil {
		return p, err
	}
	return p, p.Validate()
}

// parseAge reads "" (none), a number of days ("2555d") or a Go duration
// ("36h", "90m").
func parseAge(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, nil
	}
	if d, ok := strings.CutSuffix(v, "d"); ok {
		n, err := strconv.ParseInt(d, 10, 64)
		if err != nil || n < 0 || n > 100*366 {
			return 0, fmt.Errorf("%q: want a number of days (2555d) or a duration (36h)", v)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q: want a number of days (2555d) or a duration (36h)", v)
	}
	return d, nil
}

// byteUnits are the size suffixes parseBytes accepts, longest first.
var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
}

// parseBytes reads "" (none) or a whole number of bytes with an optional
// unit ("500GiB", "20TB", "1048576").
func parseBytes(v string) (int64, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, nil
	}
	num, mult := v, int64(1)
	for _, u := range byteUnits {
		if n, ok := strings.CutSuffix(v, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || (n > 0 && mult > (1<<62)/n) {
		return 0, fmt.Errorf("%q: want bytes with an optional unit (500GiB, 20TB)", v)
	}
	return n * mult, nil
}

package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/blobwrap"
	"github.com/dicom-gateway/gateway/storage/bolt"
	"github.com/dicom-gateway/gateway/storage/filesystem"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/s3"
)

// Backends are the storage and state implementations chosen by the
// configuration, in one visible place: S3 when --s3-endpoint is set, else
// files under --data-dir; Redis when --redis-url is set, else the embedded
// state file under --data-dir. No other code knows which one it has.
type Backends struct {
	Blobs    gateway.BlobStore
	Index    gateway.Index
	AuditLog gateway.AuditLog
	// AuditArchive is AuditLog: the sealed segments in the blob store
	// followed by the state store's live log. Its sealing loop runs only
	// under gateway serve (RunAuditArchive).
	AuditArchive *gateway.AuditArchive
	Queue        gateway.Queue
	Holds        gateway.HoldStore
	Ready        map[string]gateway.Pinger
	BlobKind     string
	StateKind    string

	// instanceBucket is the S3 instance store, nil on files, and
	// redisIndex the Redis index, nil when embedded: gateway serve checks
	// and upgrades them in the background (StartBackgroundChecks).
	instanceBucket *s3.BlobStore
	redisIndex     *redis.Index

	closers []func() error
}

// OpenBackends opens the configured backends. An unreachable S3 or Redis does
// not stop start-up: /readyz reports it until it answers. The blob store runs
// behind blobwrap.Wrap: keys checked, operations metered on reg.
func OpenBackends(ctx context.Context, cfg *Config, logger *slog.Logger, reg prometheus.Registerer) (_ *Backends, err error) {
	b := &Backends{Ready: map[string]gateway.Pinger{}}
	queueOpts := gateway.QueueOptions{VisibilityTimeout: cfg.TransferLease}
	defer func() {
		if err != nil {
			_ = b.Close(context.Background())
		}
	}()

	if cfg.S3Endpoint != "" {
		store, err := s3.New(s3.Config{
			Endpoint: cfg.S3Endpoint, Bucket: cfg.S3Bucket, AccessKey: cfg.S3AccessKey,
			SecretKey: cfg.S3SecretKey, Region: cfg.S3Region, TLS: cfg.S3TLS, Logger: logger,
		})
		if err != nil {
			return nil, fmt.Errorf("--s3-endpoint: %w", err)
		}
		ensureCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := store.EnsureBucket(ensureCtx); err != nil {
			logger.Warn("s3 bucket not checked yet; retrying in the background, /readyz reports s3 until then", gateway.LogKeyBackend, "s3", gateway.LogKeyError, err.Error())
			b.retryInBackground(func(ctx context.Context) error { return store.EnsureBucket(ctx) })
		}
		cancel()
		b.instanceBucket = store
		b.Blobs, b.BlobKind = blobwrap.Wrap(store, reg, "s3"), "s3"
		b.Ready["s3"] = store
	} else {
		store, err := filesystem.New(filepath.Join(cfg.DataDir, "blobs"))
		if err != nil {
			return nil, fmt.Errorf("--data-dir: %w", err)
		}
		b.Blobs, b.BlobKind = blobwrap.Wrap(store, reg, "filesystem"), "filesystem"
		b.Ready["filesystem"] = store
	}

	if cfg.RedisURL != "" {
		client, err := redis.Open(cfg.RedisURL, cfg.RedisPrefix)
		if err != nil {
			return nil, fmt.Errorf("--redis-url: %w", err)
		}
		b.closers = append(b.closers, client.Close)
		b.Ready["redis"] = client
		b.StateKind = "redis"
		index := redis.NewIndex(client)
		b.Index, b.redisIndex = index, index
		b.AuditLog = redis.NewAuditLog(client, cfg.Name)
		b.Holds = redis.NewHolds(client)
		queue, err := redis.NewQueue(ctx, client, queueOpts)
		if err != nil {
			logger.Warn("transfer queue not prepared yet; the workers retry until redis answers", gateway.LogKeyBackend, "redis", gateway.LogKeyError, err.Error())
		}
		b.Queue = queue
	} else {
		db, err := bolt.Open(filepath.Join(cfg.DataDir, "state.db"))
		if err != nil {
			return nil, fmt.Errorf("--data-dir: %w", err)
		}
		b.closers = append(b.closers, db.Close)
		b.Ready["state"] = db
		b.StateKind = "embedded"
		if b.Index, err = bolt.NewIndex(db); err != nil {
			return nil, err
		}
		if b.AuditLog, err = bolt.NewAuditLog(db, cfg.Name); err != nil {
			return nil, err
		}
		if b.Queue, err = bolt.NewQueue(db, queueOpts); err != nil {
			return nil, err
		}
		if b.Holds, err = bolt.NewHolds(db); err != nil {
			return nil, err
		}
	}
	if cfg.AuditKeys != nil {
		b.AuditLog.(interface{ SetKeys(*gateway.AuditKeys) }).SetKeys(cfg.AuditKeys)
	}
	if err := b.openAuditArchive(ctx, cfg, logger, reg); err != nil {
		return nil, err
	}
	return b, nil
}

// openAuditArchive puts the audit archive in front of the live log: its
// segments go to --audit-archive-bucket when set (created with Object Lock
// when --audit-retention-days asks for it), else to the blob store.
func (b *Backends) openAuditArchive(ctx context.Context, cfg *Config, logger *slog.Logger, reg prometheus.Registerer) error {
	segments := b.Blobs
	if cfg.AuditArchiveBucket != "" {
		store, err := s3.New(s3.Config{
			Endpoint: cfg.S3Endpoint, Bucket: cfg.AuditArchiveBucket, AccessKey: cfg.S3AccessKey,
			SecretKey: cfg.S3SecretKey, Region: cfg.S3Region, TLS: cfg.S3TLS,
		})
		if err != nil {
			return fmt.Errorf("--audit-archive-bucket: %w", err)
		}
		ensure := store.EnsureBucket
		if cfg.AuditRetentionDays > 0 {
			ensure = store.EnsureLockedBucket
		}
		ensureCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := ensure(ensureCtx); err != nil {
			logger.Warn("audit archive bucket not checked yet; retrying in the background", gateway.LogKeyBackend, "s3", gateway.LogKeyError, err.Error())
			b.retryInBackground(ensure)
		}
		cancel()
		segments = blobwrap.Wrap(store, reg, "s3-audit")
		b.Ready["s3-audit"] = store
	}
	live, ok := b.AuditLog.(gateway.AuditArchiveBackend)
	if !ok {
		return fmt.Errorf("audit log %T cannot be archived", b.AuditLog)
	}
	mode, _ := auditRetentionMode(cfg.AuditRetentionMode)
	b.AuditArchive = &gateway.AuditArchive{
		Live: live, Blobs: segments, Keys: cfg.AuditKeys,
		Age: cfg.AuditArchiveAfter, RetentionMode: mode, RetentionDays: cfg.AuditRetentionDays,
		Gateway: cfg.Name, Logger: logger,
	}
	b.AuditLog = b.AuditArchive
	a := b.AuditArchive
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "gateway_audit_sealed_records_total",
			Help: "Audit records this replica sealed into segments in the blob store (--audit-archive-after)."},
			func() float64 { return float64(a.SealedRecords()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "gateway_audit_seal_failures_total",
			Help: "Audit sealing runs that failed (see the log); records stay in the live log until a run succeeds."},
			func() float64 { return float64(a.SealFailures()) }),
	)
	return nil
}

// auditSealInterval is how often gateway serve runs a sealing pass.
const auditSealInterval = time.Hour

// RunAuditArchive starts the sealing loop when --audit-archive-after is
// set; Close stops it (a run cut short leaves a state the next run
// completes).
func (b *Backends) RunAuditArchive() {
	if b.AuditArchive == nil || b.AuditArchive.Age <= 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.AuditArchive.Run(ctx, auditSealInterval)
	}()
	b.closers = append(b.closers, func() error { cancel(); <-done; return nil })
}

// retryInBackground runs fn every 2 s until it succeeds or the backends
// close: S3 may still be starting (or down) when the gateway starts.
func (b *Backends) retryInBackground(fn func(ctx context.Context) error) {
	b.retryInBackgroundFor(5*time.Second, fn)
}

// retryInBackgroundFor is retryInBackground with attempts of up to
// timeout each.
func (b *Backends) retryInBackgroundFor(timeout time.Duration, fn func(ctx context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				attempt, stop := context.WithTimeout(ctx, timeout)
				err := fn(attempt)
				stop()
				if err == nil {
					return
				}
			}
		}
	}()
	b.closers = append(b.closers, func() error { cancel(); <-done; return nil })
}

// StartBackgroundChecks runs, in the background, what gateway serve checks
// and upgrades once its backends answer; one-shot commands such as
// retention plan write nothing they do not need to, so only serve calls
// it. The Redis index lists studies flagged by earlier versions under
// every Patient ID (redis.Index.ListFlaggedStudies; retried until done).
// The S3 instance store's conditional writes are probed
// (s3.BlobStore.ProbeConditionalWrites) once its bucket answers; a probe
// that cannot run is logged, not retried.
func (b *Backends) StartBackgroundChecks(logger *slog.Logger) {
	if index := b.redisIndex; index != nil {
		// A walk of every study: minutes on a large index, each Redis
		// call bounded by the client's own timeouts. While Redis is down
		// the failure is logged once a minute, not at every attempt.
		var lastWarned time.Time
		b.retryInBackgroundFor(24*time.Hour, func(ctx context.Context) error {
			listed, unreadable, err := index.ListFlaggedStudies(ctx)
			switch {
			case err != nil && ctx.Err() == nil && time.Since(lastWarned) >= time.Minute:
				lastWarned = time.Now()
				logger.Warn("studies flagged by earlier versions not yet listed under every patient; retrying", gateway.LogKeyBackend, "redis", gateway.LogKeyError, err.Error())
			case err == nil && listed+unreadable > 0:
				logger.Info("studies flagged by earlier versions listed under every patient", gateway.LogKeyBackend, "redis", "listed", listed, "unreadable", unreadable)
			}
			return err
		})
	}
	store := b.instanceBucket
	if store == nil {
		return
	}
	b.retryInBackground(func(ctx context.Context) error {
		if err := store.Ping(ctx); err != nil {
			return err // the bucket is not there yet
		}
		if _, err := store.ProbeConditionalWrites(ctx); err != nil {
			logger.Warn("s3 conditional writes not checked", gateway.LogKeyBackend, "s3", gateway.LogKeyError, err.Error())
		}
		return nil
	})
}

// Close closes every backend, in reverse order of opening.
func (b *Backends) Close(ctx context.Context) error {
	var errs []error
	for i := len(b.closers) - 1; i >= 0; i-- {
		errs = append(errs, b.closers[i]())
	}
	b.closers = nil
	return errors.Join(errs...)
}

// wireServices builds the gateway's use cases over the backends, once:
// the HTTP server and every other front end are handed the same
// m.Services. It also sets m.Transfers.
func wireServices(m *Main, b *Backends, reg prometheus.Registerer) *gateway.Services {
	cfg := m.Config
	var auditor gateway.Auditor = b.AuditLog
	if e := m.AuditExporter; e != nil {
		auditor = gateway.ExportingAuditor{Log: b.AuditLog, Exporter: e}
		reg.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "gateway_audit_export_sent_total",
				Help: "Audit events sent to the syslog receiver."}, func() float64 { return float64(e.Sent()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "gateway_audit_export_dropped_total",
				Help: "Audit events dropped from the syslog export because its queue was full (the audit log keeps them)."},
				func() float64 { return float64(e.Dropped()) }),
		)
	}
	ingester := &gateway.Ingester{
		Blobs:            b.Blobs,
		Index:            b.Index,
		Auditor:          auditor,
		MaxInstanceBytes: cfg.MaxInstanceBytes,
		PreamblePolicy:   gateway.PreamblePolicy(cmp.Or(cfg.File.PreamblePolicy, string(gateway.PreambleRefuse))),
		HeaderLimits:     dicomcodec.HeaderLimits{MaxElements: cfg.MaxHeaderElements},
		Logger:           m.Logger,
	}
	if cfg.MaxHeaderMemory > 0 {
		ingester.HeaderMemory = dicomcodec.NewHeaderMemory(cfg.MaxHeaderMemory)
	}
	ingester.ObserveStage = storeStageMetric(reg)
	host, _ := os.Hostname()
	m.Transfers = &gateway.Transfers{
		Name:    cfg.Name,
		Queue:   b.Queue,
		Index:   b.Index,
		Sender:  dicomweb.NewClient(b.Blobs),
		Peers:   cfg.File.Peers,
		Auditor: auditor,
		Logger:  m.Logger,
		Workers: cfg.TransferWorkers,
		// The lease is renewed well before it runs out, or another
		// replica would take over a transfer that is still moving.
		Heartbeat:   cfg.TransferLease / 3,
		RetryPolicy: gateway.RetryPolicy{MaxAge: cfg.TransferRetryFor},
		// Unique per live replica: a restarted process must not inherit
		// its predecessor's pending entries as its own.
		Consumer: fmt.Sprintf("%s-%s-%d-%d", cfg.Name, host, os.Getpid(), time.Now().UnixNano()%1e6),
	}
	reg.MustRegister(dicomweb.NewTransferCollector(m.Transfers))
	var router *gateway.Router
	if len(cfg.File.Routes) > 0 {
		router = &gateway.Router{Rules: cfg.File.Routes, Transfers: m.Transfers, Logger: m.Logger}
	}
	// Validate has parsed it already.
	retention, _ := cfg.File.Retention.Policy()
	svc := gateway.NewServices(gateway.ServiceDeps{
		Name:      cfg.Name,
		Blobs:     b.Blobs,
		Index:     b.Index,
		Auditor:   auditor,
		AuditLog:  b.AuditLog,
		Ingester:  ingester,
		Transfers: m.Transfers,
		Router:    router,
		Holds:     b.Holds,
		Retention: retention,
		Logger:    m.Logger,
	})
	reg.MustRegister(dicomweb.NewRetentionCollector(svc.Retention))
	return svc
}

// storeStageMetric registers gateway_store_stage_duration_seconds{stage} on
// reg, every stage at zero from the start, and returns the observer the
// Ingester reports to: which of receiving, making durable, indexing and
// auditing bounds a slow ingest.
func storeStageMetric(reg prometheus.Registerer) func(gateway.StoreStage, time.Duration) {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "gateway_store_stage_duration_seconds",
		Help: "Duration of the stages of storing instances (STOW-RS, DIMSE C-STORE): receive (read and write one instance), " +
			"durable (its sync and name), index (its index entry), audit (the request's audit record).",
		Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
	}, []string{"stage"})
	reg.MustRegister(h)
	for _, s := range gateway.StoreStages {
		h.WithLabelValues(string(s))
	}
	return func(s gateway.StoreStage, d time.Duration) { h.WithLabelValues(string(s)).Observe(d.Seconds()) }
}

package blobwrap

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dicom-gateway/gateway/gateway"
)

// Operation label values of the blob metrics, one per BlobStore call;
// "commit" is StagedBlob.Commit and CommitNew.
const (
	OpPut    = "put"
	OpStage  = "stage"
	OpCommit = "commit"
	OpGet    = "get"
	OpStat   = "stat"
	OpDelete = "delete"
	OpWalk   = "walk"
)

var operations = []string{OpPut, OpStage, OpCommit, OpGet, OpStat, OpDelete, OpWalk}

// blobMetrics are the collectors shared by every store wrapped on one
// registry; the store label tells them apart.
type blobMetrics struct {
	ops      *prometheus.CounterVec
	failures *prometheus.CounterVec
	duration *prometheus.HistogramVec
	bytes    *prometheus.CounterVec
}

// WithMetrics returns b recording every operation on reg, labelled
// store=name and operation=put|stage|commit|get|stat|delete|walk:
// gateway_blob_operations_total (calls), gateway_blob_operation_failures_total
// (calls that failed other than with ErrNotFound, which is an answer, not a
// failure), gateway_blob_operation_duration_seconds (a Get lasts until its
// reader is closed, so that it covers the bytes streamed) and
// gateway_blob_transferred_bytes_total (bytes written by Put and Stage, read
// through Get). Every series exists from the start at zero. Stores wrapped
// on one registry share the collectors.
func WithMetrics(b gateway.BlobStore, reg prometheus.Registerer, name string) gateway.BlobStore {
	m := &blobMetrics{
		ops: registerOr(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gateway_blob_operations_total",
			Help: "Blob store operations, by store and operation.",
		}, []string{"store", "operation"})),
		failures: registerOr(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gateway_blob_operation_failures_total",
			Help: "Blob store operations that failed (a missing object is not a failure), by store and operation.",
		}, []string{"store", "operation"})),
		duration: registerOr(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gateway_blob_operation_duration_seconds",
			Help:    "Duration of blob store operations; a get lasts until its reader is closed.",
			Buckets: []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120},
		}, []string{"store", "operation"})),
		bytes: registerOr(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gateway_blob_transferred_bytes_total",
			Help: "Bytes written to (put, stage) and read from (get) the blob store.",
		}, []string{"store", "operation"})),
	}
	for _, op := range operations {
		m.ops.WithLabelValues(name, op)
		m.failures.WithLabelValues(name, op)
		m.duration.WithLabelValues(name, op)
		switch op {
		case OpPut, OpStage, OpGet:
			m.bytes.WithLabelValues(name, op)
		}
	}
	return wrap(b, &metered{BlobStore: b, m: m, store: name})
}

// registerOr registers c on reg, or returns the collector already
// registered under its name (a second store wrapped on the same registry).
func registerOr[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err) // a name clash with a different metric: a wiring bug
	}
	return c
}

type metered struct {
	gateway.BlobStore
	m     *blobMetrics
	store string
}

// done records one finished operation.
func (w *metered) done(op string, start time.Time, bytes int64, err error) {
	w.m.ops.WithLabelValues(w.store, op).Inc()
	// A missing object and a create-only commit that found one (ErrConflict)
	// are answers, not failures of the store.
	if err != nil && !errors.Is(err, gateway.ErrNotFound) && !errors.Is(err, gateway.ErrConflict) {
		w.m.failures.WithLabelValues(w.store, op).Inc()
	}
	w.m.duration.WithLabelValues(w.store, op).Observe(time.Since(start).Seconds())
	if bytes > 0 {
		w.m.bytes.WithLabelValues(w.store, op).Add(float64(bytes))
	}
}

func (w *metered) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	start := time.Now()
	n, err := w.BlobStore.Put(ctx, key, r)
	w.done(OpPut, start, n, err)
	return n, err
}

// PutRetained is counted as a put.
func (w *metered) PutRetained(ctx context.Context, key string, r io.Reader, ret gateway.ObjectLock) (int64, error) {
	start := time.Now()
	n, err := locker(w.BlobStore).PutRetained(ctx, key, r, ret)
	w.done(OpPut, start, n, err)
	return n, err
}

func (w *metered) Stage(ctx context.Context, key string, r io.Reader) (gateway.StagedBlob, error) {
	start := time.Now()
	b, err := stager(w.BlobStore).Stage(ctx, key, r)
	if err != nil {
		w.done(OpStage, start, 0, err)
		return nil, err
	}
	w.done(OpStage, start, b.Size(), nil)
	return &meteredStaged{StagedBlob: b, w: w}, nil
}

type meteredStaged struct {
	gateway.StagedBlob
	w *metered
}

func (b *meteredStaged) Commit(ctx context.Context, sha256Hex string) error {
	start := time.Now()
	err := b.StagedBlob.Commit(ctx, sha256Hex)
	b.w.done(OpCommit, start, 0, err)
	return err
}

func (b *meteredStaged) CommitNew(ctx context.Context, sha256Hex string) error {
	start := time.Now()
	err := b.StagedBlob.CommitNew(ctx, sha256Hex)
	b.w.done(OpCommit, start, 0, err)
	return err
}

func (w *metered) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	start := time.Now()
	rc, err := w.BlobStore.Get(ctx, key, offset, length)
	if err != nil {
		w.done(OpGet, start, 0, err)
		return nil, err
	}
	return &meteredReader{rc: rc, w: w, start: start}, nil
}

// meteredReader counts the bytes read and records the Get when closed, with
// the first read error other than io.EOF as its outcome.
type meteredReader struct {
	rc    io.ReadCloser
	w     *metered
	start time.Time
	n     int64
	err   error
	once  sync.Once
}

func (r *meteredReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.n += int64(n)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

func (r *meteredReader) Close() error {
	err := r.rc.Close()
	r.once.Do(func() { r.w.done(OpGet, r.start, r.n, r.err) })
	return err
}

func (w *metered) Stat(ctx context.Context, key string) (gateway.BlobInfo, error) {
	start := time.Now()
	info, err := w.BlobStore.Stat(ctx, key)
	w.done(OpStat, start, 0, err)
	return info, err
}

func (w *metered) Delete(ctx context.Context, key string) error {
	start := time.Now()
	err := w.BlobStore.Delete(ctx, key)
	w.done(OpDelete, start, 0, err)
	return err
}

func (w *metered) Walk(ctx context.Context, prefix string, fn func(gateway.BlobInfo) error) error {
	start := time.Now()
	err := w.BlobStore.Walk(ctx, prefix, fn)
	w.done(OpWalk, start, 0, err)
	return err
}

package blobwrap_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/blobwrap"
	"github.com/dicom-gateway/gateway/storage/filesystem"
)

func newFilesystem(t *testing.T) *filesystem.BlobStore {
	t.Helper()
	s, err := filesystem.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// value returns the value of the series name{store, operation} on reg (a
// counter's value, a histogram's sample count), and whether it exists.
func value(t *testing.T, reg *prometheus.Registry, name, store, op string) (float64, bool) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["store"] != store || labels["operation"] != op {
				continue
			}
			if h := m.GetHistogram(); h != nil {
				return float64(h.GetSampleCount()), true
			}
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

// TestMetricsCountOperations drives each operation through Wrap over a real
// filesystem store and reads the registry: calls, failures (a missing key
// is an answer, not a failure; a refused key never reaches the store),
// durations and bytes.
func TestMetricsCountOperations(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := blobwrap.Wrap(newFilesystem(t), reg, "fs")
	ctx := t.Context()

	for _, op := range []string{blobwrap.OpPut, blobwrap.OpStage, blobwrap.OpCommit, blobwrap.OpGet, blobwrap.OpStat, blobwrap.OpDelete, blobwrap.OpWalk} {
		if v, ok := value(t, reg, "gateway_blob_operations_total", "fs", op); !ok || v != 0 {
			t.Errorf("before any call: operations{%s} = %v (present %v), want 0", op, v, ok)
		}
	}

	key := gateway.InstanceKey("1.2.3", "1.2.3.4", "1.2.3.4.5")
	if _, err := s.Put(ctx, key, strings.NewReader(strings.Repeat("x", 1000))); err != nil {
		t.Fatal(err)
	}
	rc, err := s.Get(ctx, key, 10, 500)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := io.Copy(io.Discard, rc); err != nil || n != 500 {
		t.Fatalf("read %d bytes, %v; want 500", n, err)
	}
	if v, _ := value(t, reg, "gateway_blob_operations_total", "fs", blobwrap.OpGet); v != 0 {
		t.Errorf("get counted before its reader closed: %v", v)
	}
	rc.Close()
	if _, err := s.Get(ctx, key, 5000, -1); !errors.Is(err, gateway.ErrInvalid) {
		t.Fatalf("Get beyond the end: %v, want ErrInvalid", err)
	}
	if _, err := s.Stat(ctx, key+"-missing"); !errors.Is(err, gateway.ErrNotFound) {
		t.Fatalf("Stat of a missing key: %v", err)
	}
	if _, err := s.Stat(ctx, "../escape"); !errors.Is(err, gateway.ErrInvalid) {
		t.Fatalf("Stat of a bad key: %v", err)
	}
	staged, err := s.(gateway.Stager).Stage(ctx, key+"-2", bytes.NewReader(make([]byte, 300)))
	if err != nil {
		t.Fatal(err)
	}
	if err := staged.Commit(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.Walk(ctx, "", func(gateway.BlobInfo) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		metric, op string
		want       float64
	}{
		{"gateway_blob_operations_total", blobwrap.OpPut, 1},
		{"gateway_blob_operations_total", blobwrap.OpGet, 2},
		{"gateway_blob_operations_total", blobwrap.OpStat, 1}, // the bad key never reached the store
		{"gateway_blob_operations_total", blobwrap.OpStage, 1},
		{"gateway_blob_operations_total", blobwrap.OpCommit, 1},
		{"gateway_blob_operations_total", blobwrap.OpWalk, 1},
		{"gateway_blob_operations_total", blobwrap.OpDelete, 1},
		{"gateway_blob_operation_failures_total", blobwrap.OpGet, 1},
		{"gateway_blob_operation_failures_total", blobwrap.OpStat, 0},
		{"gateway_blob_operation_failures_total", blobwrap.OpPut, 0},
		{"gateway_blob_operation_duration_seconds", blobwrap.OpGet, 2},
		{"gateway_blob_operation_duration_seconds", blobwrap.OpPut, 1},
		{"gateway_blob_transferred_bytes_total", blobwrap.OpPut, 1000},
		{"gateway_blob_transferred_bytes_total", blobwrap.OpGet, 500},
		{"gateway_blob_transferred_bytes_total", blobwrap.OpStage, 300},
	} {
		if got, _ := value(t, reg, tt.metric, "fs", tt.op); got != tt.want {
			t.Errorf("%s{operation=%q} = %v, want %v", tt.metric, tt.op, got, tt.want)
		}
	}
}

// TestTwoStoresOneRegistry: stores wrapped on one registry share the
// collectors and are told apart by the store label.
func TestTwoStoresOneRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := blobwrap.Wrap(newFilesystem(t), reg, "a")
	b := blobwrap.Wrap(newFilesystem(t), reg, "b")
	if _, err := a.Put(t.Context(), "k/1", strings.NewReader("1")); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := b.Put(t.Context(), "k/1", strings.NewReader("1")); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := value(t, reg, "gateway_blob_operations_total", "a", blobwrap.OpPut); got != 1 {
		t.Errorf("store a puts = %v, want 1", got)
	}
	if got, _ := value(t, reg, "gateway_blob_operations_total", "b", blobwrap.OpPut); got != 2 {
		t.Errorf("store b puts = %v, want 2", got)
	}
}

// withoutOptional is a store with none of the optional interfaces (a
// filesystem store seen through the bare BlobStore methods), to check that
// the decorators do not invent a Stager.
type withoutOptional struct{ gateway.BlobStore }

func TestNoStagerStaysNoStager(t *testing.T) {
	w := blobwrap.Wrap(withoutOptional{newFilesystem(t)}, prometheus.NewRegistry(), "plain")
	if _, ok := w.(gateway.Stager); ok {
		t.Error("a store without Stage became a Stager behind the decorators")
	}
	if gateway.OverNetwork(w) {
		t.Error("a local store became a NetworkStore behind the decorators")
	}
	if _, err := w.Put(t.Context(), "a/b", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
}

// A store that cannot lock (the filesystem) says so through the
// decorators, and PutRetained writes nothing rather than an unlocked
// object; the MinIO lock test in storage/redis covers a store that can.
func TestNoRetentionLockerCannotRetain(t *testing.T) {
	w := blobwrap.Wrap(newFilesystem(t), prometheus.NewRegistry(), "filesystem")
	l, ok := w.(gateway.RetentionLocker)
	if !ok {
		t.Fatal("the decorators do not forward gateway.RetentionLocker")
	}
	if err := l.CanRetain(t.Context()); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("CanRetain on a filesystem store = %v, want ErrUnsupported", err)
	}
	ret := gateway.ObjectLock{Mode: gateway.ObjectLockCompliance, Until: time.Now().Add(time.Hour)}
	if _, err := l.PutRetained(t.Context(), "audit/x", strings.NewReader("x"), ret); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("PutRetained on a filesystem store = %v, want ErrUnsupported", err)
	}
	if _, err := w.Stat(t.Context(), "audit/x"); !errors.Is(err, gateway.ErrNotFound) {
		t.Errorf("PutRetained left an object: %v", err)
	}
	if _, err := l.PutRetained(t.Context(), "../x", strings.NewReader("x"), ret); !errors.Is(err, errors.ErrUnsupported) && !errors.Is(err, gateway.ErrInvalid) {
		t.Errorf("PutRetained of a bad key = %v", err)
	}
}

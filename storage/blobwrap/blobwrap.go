// Package blobwrap holds the decorators every gateway.BlobStore runs behind:
// CheckKeys enforces the key rule of the contract, WithMetrics records each
// operation on an injected Prometheus registry. Both return a store that is
// a gateway.Stager exactly when the wrapped one is, and that forwards
// gateway.Pinger, gateway.NetworkStore, gateway.RetentionLocker and
// io.Closer to it, so that wrapping
// never turns off a fast path such as staged ingest or WADO read-ahead. It
// imports gateway and the Prometheus client only.
package blobwrap

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dicom-gateway/gateway/gateway"
)

// ops is a decorator's own behaviour around its inner store. Its Stage is
// only reached when the inner store is a gateway.Stager (wrap exposes Stage
// only then); its PutRetained only after the inner store's CanRetain said
// yes (see gateway.RetentionLocker).
type ops interface {
	gateway.BlobStore
	gateway.Stager
	PutRetained(ctx context.Context, key string, r io.Reader, ret gateway.ObjectLock) (int64, error)
}

// wrapped is a decorator d over inner, without Stage. The optional
// interfaces other than Stager forward to inner and, when inner lacks one,
// give the answer a caller gets from a store without it (Ping nil: nothing
// to be unreachable; OverNetwork false; Close nil: nothing to release).
type wrapped struct {
	d     ops
	inner gateway.BlobStore
}

var (
	_ gateway.BlobStore       = wrapped{}
	_ gateway.Pinger          = wrapped{}
	_ gateway.NetworkStore    = wrapped{}
	_ gateway.RetentionLocker = wrapped{}
	_ io.Closer               = wrapped{}
)

func (w wrapped) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	return w.d.Put(ctx, key, r)
}

func (w wrapped) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	return w.d.Get(ctx, key, offset, length)
}

func (w wrapped) Stat(ctx context.Context, key string) (gateway.BlobInfo, error) {
	return w.d.Stat(ctx, key)
}

func (w wrapped) Delete(ctx context.Context, key string) error { return w.d.Delete(ctx, key) }

func (w wrapped) Walk(ctx context.Context, prefix string, fn func(gateway.BlobInfo) error) error {
	return w.d.Walk(ctx, prefix, fn)
}

func (w wrapped) Ping(ctx context.Context) error {
	if p, ok := w.inner.(gateway.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

func (w wrapped) OverNetwork() bool { return gateway.OverNetwork(w.inner) }

// CanRetain forwards to the inner store; one without the method cannot lock.
func (w wrapped) CanRetain(ctx context.Context) error {
	if l, ok := w.inner.(gateway.RetentionLocker); ok {
		return l.CanRetain(ctx)
	}
	return fmt.Errorf("this blob store cannot lock objects: %w", errors.ErrUnsupported)
}

func (w wrapped) PutRetained(ctx context.Context, key string, r io.Reader, ret gateway.ObjectLock) (int64, error) {
	if _, ok := w.inner.(gateway.RetentionLocker); !ok {
		return 0, fmt.Errorf("put %s: this blob store cannot lock objects: %w", key, errors.ErrUnsupported)
	}
	return w.d.PutRetained(ctx, key, r, ret)
}

// locker returns inner as a RetentionLocker; only called by decorators
// built through wrap, which route PutRetained to them only when inner has
// it.
func locker(inner gateway.BlobStore) gateway.RetentionLocker { return inner.(gateway.RetentionLocker) }

func (w wrapped) Close() error {
	if c, ok := w.inner.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// wrappedStager is a decorator over a gateway.Stager: wrapped plus Stage.
type wrappedStager struct {
	wrapped
}

var _ gateway.Stager = wrappedStager{}

func (w wrappedStager) Stage(ctx context.Context, key string, r io.Reader) (gateway.StagedBlob, error) {
	return w.d.Stage(ctx, key, r)
}

// wrap returns the decorator d over inner, a Stager exactly when inner is.
func wrap(inner gateway.BlobStore, d ops) gateway.BlobStore {
	w := wrapped{d: d, inner: inner}
	if _, ok := inner.(gateway.Stager); ok {
		return wrappedStager{w}
	}
	return w
}

// stager returns inner's Stage; only called by decorators built through
// wrap, which route Stage to them only when inner has it.
func stager(inner gateway.BlobStore) gateway.Stager { return inner.(gateway.Stager) }

// Wrap is the stack every store the gateway opens runs behind: keys are
// checked first, so that a refused key is neither sent to the store nor
// counted as one of its operations; then each operation is metered on reg
// under store=name.
func Wrap(b gateway.BlobStore, reg prometheus.Registerer, name string) gateway.BlobStore {
	return CheckKeys(WithMetrics(b, reg, name))
}

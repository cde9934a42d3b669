package blobwrap

import (
	"context"
	"fmt"
	"io"

	"github.com/dicom-gateway/gateway/gateway"
)

// CheckKeys returns b behind the key rule of gateway.BlobStore: Put, PutRetained,
// Stage, Get, Stat and Delete refuse a key that gateway.CheckBlobKey refuses with
// ErrInvalid before b sees it. Walk takes a prefix, not a key, and passes
// through. The backends do not check keys themselves: this is the one copy
// of the check, and every store the gateway opens runs behind it.
func CheckKeys(b gateway.BlobStore) gateway.BlobStore {
	return wrap(b, keyChecker{b})
}

type keyChecker struct {
	gateway.BlobStore
}

func (k keyChecker) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	if err := gateway.CheckBlobKey(key); err != nil {
		return 0, fmt.Errorf("put: %w", err)
	}
	return k.BlobStore.Put(ctx, key, r)
}

func (k keyChecker) PutRetained(ctx context.Context, key string, r io.Reader, ret gateway.ObjectLock) (int64, error) {
	if err := gateway.CheckBlobKey(key); err != nil {
		return 0, fmt.Errorf("put: %w", err)
	}
	return locker(k.BlobStore).PutRetained(ctx, key, r, ret)
}

func (k keyChecker) Stage(ctx context.Context, key string, r io.Reader) (gateway.StagedBlob, error) {
	if err := gateway.CheckBlobKey(key); err != nil {
		return nil, fmt.Errorf("put: %w", err)
	}
	return stager(k.BlobStore).Stage(ctx, key, r)
}

func (k keyChecker) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := gateway.CheckBlobKey(key); err != nil {
		return nil, fmt.Errorf("get: %w", err)
	}
	return k.BlobStore.Get(ctx, key, offset, length)
}

func (k keyChecker) Stat(ctx context.Context, key string) (gateway.BlobInfo, error) {
	if err := gateway.CheckBlobKey(key); err != nil {
		return gateway.BlobInfo{}, fmt.Errorf("stat: %w", err)
	}
	return k.BlobStore.Stat(ctx, key)
}

func (k keyChecker) Delete(ctx context.Context, key string) error {
	if err := gateway.CheckBlobKey(key); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	return k.BlobStore.Delete(ctx, key)
}

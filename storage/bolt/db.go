// Package bolt is the embedded default state backend: one bbolt file in the
// data directory holds the index, the transfer queue and the audit log, so
// that gateway serve runs on a laptop with nothing else started. It imports
// package gateway and go.etcd.io/bbolt only.
package bolt

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bbolt "go.etcd.io/bbolt"
)

// DB is the embedded state file. Index, queue and audit log each keep their
// own buckets in it. Safe for concurrent use.
type DB struct {
	bolt *bbolt.DB
	// writes group-commits the index's and the audit log's writes
	// together: a STOW-RS request writes an index entry per instance and
	// then an audit record, and under concurrent requests one bbolt
	// transaction (two fdatasyncs) carries both kinds instead of each kind
	// paying its own.
	writes *txCommitter
}

// Open opens (creating if needed) the state file at path. Only one process
// may hold it; a second gets an error after a second rather than waiting.
func Open(path string) (*DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("open state file %s: %w", path, err)
	}
	return &DB{bolt: db, writes: newTxCommitter(db)}, nil
}

// Bolt returns the underlying bbolt database for the stores in this package.
func (db *DB) Bolt() *bbolt.DB { return db.bolt }

// Ping reports whether the state file is usable.
func (db *DB) Ping(ctx context.Context) error {
	return db.bolt.View(func(*bbolt.Tx) error { return nil })
}

// Close closes the state file.
func (db *DB) Close() error { return db.bolt.Close() }

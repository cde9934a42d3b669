package bolt

import (
	"context"

	bbolt "go.etcd.io/bbolt"

	"github.com/dicom-gateway/gateway/storage/internal/groupcommit"
)

// txCommitter group-commits write functions (groupcommit.Committer), so
// that under concurrent STOW-RS each bbolt transaction, and its fsyncs,
// carries many index writes instead of one.
type txCommitter = groupcommit.Committer[func(*bbolt.Tx) error]

func newTxCommitter(db *bbolt.DB) *txCommitter {
	return &txCommitter{Commit: func(_ context.Context, fns []func(*bbolt.Tx) error) []error {
		return commitTogether(db, fns)
	}}
}

// commitTogether runs fns in one transaction. If one fails the transaction
// rolls back and each runs again in a transaction of its own, so it fails
// alone; functions must therefore give the same result when run twice from
// the same state (they read what they change inside the transaction).
func commitTogether(db *bbolt.DB, fns []func(*bbolt.Tx) error) []error {
	err := db.Update(func(tx *bbolt.Tx) error {
		for _, fn := range fns {
			if err := fn(tx); err != nil {
				return err
			}
		}
		return nil
	})
	errs := make([]error, len(fns))
	if err == nil {
		return errs
	}
	if len(fns) == 1 {
		errs[0] = err
		return errs
	}
	for i, fn := range fns {
		errs[i] = db.Update(fn)
	}
	return errs
}

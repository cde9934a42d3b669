package bolt

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	bbolt "go.etcd.io/bbolt"
)

func newGroupTestDB(t *testing.T) *bbolt.DB {
	db, err := Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.bolt.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucket([]byte("t"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return db.bolt
}

// TestTxCommitter: concurrent writers all commit, in fewer transactions than
// writers; a function that fails after writing fails alone and leaves no
// trace, while the others of its batch commit.
func TestTxCommitter(t *testing.T) {
	db := newGroupTestDB(t)
	var txs atomic.Int64
	g := &txCommitter{Commit: func(_ context.Context, fns []func(*bbolt.Tx) error) []error {
		txs.Add(1)
		return commitTogether(db, fns)
	}}
	const writers = 64
	boom := errors.New("boom")
	run := func(prefix string, fail func(i int) bool) []error {
		var wg sync.WaitGroup
		errs := make([]error, writers)
		for i := range writers {
			wg.Go(func() {
				errs[i] = g.Record(t.Context(), func(tx *bbolt.Tx) error {
					if err := tx.Bucket([]byte("t")).Put(fmt.Appendf(nil, "%s%02d", prefix, i), []byte("v")); err != nil {
						return err
					}
					if fail(i) {
						return boom // after writing: the write must be undone
					}
					return nil
				})
			})
		}
		wg.Wait()
		return errs
	}
	errs := run("k", func(i int) bool { return i%16 == 7 })
	for i, err := range errs {
		if want := i%16 == 7; errors.Is(err, boom) != want || (!want && err != nil) {
			t.Errorf("writer %d: err=%v", i, err)
		}
	}
	db.View(func(tx *bbolt.Tx) error {
		for i := range writers {
			if v := tx.Bucket([]byte("t")).Get(fmt.Appendf(nil, "k%02d", i)); (v != nil) == (i%16 == 7) {
				t.Errorf("key %d present=%v after its writer returned %v", i, v != nil, errs[i])
			}
		}
		return nil
	})
	txs.Store(0)
	for i, err := range run("s", func(int) bool { return false }) {
		if err != nil {
			t.Errorf("writer %d: %v", i, err)
		}
	}
	if n := txs.Load(); n >= writers {
		t.Errorf("%d concurrent writers took %d shared commits: nothing was shared", writers, n)
	} else {
		t.Logf("%d concurrent writers, %d shared commits", writers, n)
	}
}

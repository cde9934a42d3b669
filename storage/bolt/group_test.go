package bolt

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

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

// TestGroupCommitter: concurrent writers all commit, in fewer transactions
// than writers; a failing function fails alone and leaves no trace, while
// the others of its batch commit; a lone writer does not wait.
func TestGroupCommitter(t *testing.T) {
	db := newGroupTestDB(t)
	g := newGroupCommitter(db)
	const writers = 64
	boom := errors.New("boom")
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Go(func() {
			errs[i] = g.Update(func(tx *bbolt.Tx) error {
				if err := tx.Bucket([]byte("t")).Put(fmt.Appendf(nil, "k%02d", i), []byte("v")); err != nil {
					return err
				}
				if i%16 == 7 {
					return boom // after writing: the write must be undone
				}
				return nil
			})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if want := i%16 == 7; errors.Is(err, boom) != want || (!want && err != nil) {
			t.Errorf("writer %d: err=%v", i, err)
		}
	}
	db.View(func(tx *bbolt.Tx) error {
		for i := range writers {
			v := tx.Bucket([]byte("t")).Get(fmt.Appendf(nil, "k%02d", i))
			if (v != nil) == (i%16 == 7) {
				t.Errorf("key %d present=%v after its writer returned %v", i, v != nil, errs[i])
			}
		}
		return nil
	})
	t.Logf("%d writers, %d transactions", writers, g.commits)

	// Without failures, concurrency shares transactions.
	g2 := newGroupCommitter(db)
	for i := range writers {
		wg.Go(func() {
			if err := g2.Update(func(tx *bbolt.Tx) error {
				return tx.Bucket([]byte("t")).Put(fmt.Appendf(nil, "s%02d", i), []byte("v"))
			}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if g2.commits >= writers {
		t.Errorf("%d writers took %d transactions: nothing was shared", writers, g2.commits)
	}
	t.Logf("%d writers, %d transactions", writers, g2.commits)

	start := time.Now()
	if err := g2.Update(func(tx *bbolt.Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if g2.busy || len(g2.pending) != 0 {
		t.Fatal("committer left busy or with pending calls")
	}
	t.Logf("a lone Update took %v", time.Since(start))
}

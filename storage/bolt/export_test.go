package bolt

import bbolt "go.etcd.io/bbolt"

// DropUsageForTest removes the usage buckets and their backfill mark, as
// an index written before they existed has neither.
func DropUsageForTest(db *DB) error {
	return db.bolt.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketStudyUsage, bucketStudyReceived, bucketUsageTotals} {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketIndexMeta).Delete([]byte("usage"))
	})
}

// DropListIndexForTest removes the transfers' by-study buckets and, with
// byTimeToo, their by-time buckets: a state file written before the
// by-study index (2026-12-05) has no by-study buckets, and one written
// before the by-time index has neither.
func DropListIndexForTest(db *DB, byTimeToo bool) error {
	drop := [][]byte{bucketTransfersByStudy, bucketIncomingByStudy}
	if byTimeToo {
		drop = append(drop, bucketTransfersByTime, bucketIncomingByTime)
	}
	return db.bolt.Update(func(tx *bbolt.Tx) error {
		for _, b := range drop {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		return nil
	})
}

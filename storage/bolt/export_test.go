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

// DropListIndexForTest removes the transfers' by-time buckets, as a state
// file written before they existed has neither.
func DropListIndexForTest(db *DB) error {
	return db.bolt.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketTransfersByTime, bucketIncomingByTime} {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		return nil
	})
}

// SetListScanForTest lowers how many transfers List examines, until the
// returned function restores it.
func SetListScanForTest(n int) (restore func()) {
	old := listScan
	listScan = n
	return func() { listScan = old }
}

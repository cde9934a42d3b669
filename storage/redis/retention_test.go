package redis_test

import (
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// TestRetentionUsageIndex runs the usage suite on a single server (x:recv
// and x:bytes under {idx}) and on the 3-master cluster (one pair per
// shard, merged oldest first and summed).
func TestRetentionUsageIndex(t *testing.T) {
	for name, url := range storagetest.RedisServers(t) {
		t.Run(name, func(t *testing.T) {
			storagetest.TestUsageIndex(t, func(t *testing.T) storagetest.UsageIndexUnderTest {
				return redis.NewIndex(openClient(t, url))
			})
		})
	}
}

// TestRetentionUsageIndexShardedOnOneServer runs the usage suite on the
// cluster layout with a few shards on the single server: studies received
// in one millisecond fall in different shards, so paging within that
// millisecond goes through the merge.
func TestRetentionUsageIndexShardedOnOneServer(t *testing.T) {
	storagetest.TestUsageIndex(t, func(t *testing.T) storagetest.UsageIndexUnderTest {
		return redis.NewShardedIndex(openClient(t, storagetest.RedisURL(t)), 3)
	})
}

// TestHoldStore runs the hold suite on a single server and on the cluster,
// where the holds stay in the one slot of {holds}: they are few (studies
// under litigation) and read whole.
func TestHoldStore(t *testing.T) {
	for name, url := range storagetest.RedisServers(t) {
		t.Run(name, func(t *testing.T) {
			storagetest.TestHoldStore(t, func(t *testing.T) gateway.HoldStore { return redis.NewHolds(openClient(t, url)) })
		})
	}
}

// TestRetentionUsageBackfill: an index written before the usage fields
// (no sz, b, rt, x:recv, x:bytes) counts its instances once each is
// written again unchanged, as gateway reindex does; on both deployments.
func TestRetentionUsageBackfill(t *testing.T) {
	for name, url := range storagetest.RedisServers(t) {
		t.Run(name, func(t *testing.T) {
			c := openClient(t, url)
			x, ctx := redis.NewIndex(c), t.Context()
			recs := []*gateway.InstanceRecord{
				storagetest.Record("1.2.3", "1.2.3.1", "1.2.3.1.1", nil),
				storagetest.Record("1.2.3", "1.2.3.1", "1.2.3.1.2", nil),
			}
			for _, rec := range recs {
				if _, _, err := x.PutInstance(ctx, rec); err != nil {
					t.Fatal(err)
				}
			}
			rdb := c.Redis()
			for _, sop := range []string{"1.2.3.1.1", "1.2.3.1.2"} {
				if err := rdb.HDel(ctx, x.StudyKey("1.2.3", "i", sop), "sz").Err(); err != nil {
					t.Fatal(err)
				}
			}
			if err := rdb.HDel(ctx, x.StudyKey("1.2.3", "s", "1.2.3"), "b", "rt").Err(); err != nil {
				t.Fatal(err)
			}
			if err := rdb.Del(ctx, x.StudyKey("1.2.3", "x", "recv"), x.StudyKey("1.2.3", "x", "bytes")).Err(); err != nil {
				t.Fatal(err) // the study's shard's usage keys, one slot
			}
			if tot, err := x.UsageTotals(ctx); err != nil || tot != (gateway.UsageTotals{}) {
				t.Fatalf("legacy index totals = %+v, %v; want zero", tot, err)
			}
			for range 2 { // the second pass must not count them again
				for _, rec := range recs {
					if err := x.ReplaceInstance(ctx, rec); err != nil {
						t.Fatal(err)
					}
				}
			}
			tot, err := x.UsageTotals(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if want := (gateway.UsageTotals{Bytes: 2 * 1234, Studies: 1}); tot != want {
				t.Fatalf("totals after rewrite = %+v, want %+v", tot, want)
			}
			got, err := x.StudiesByReceived(ctx, gateway.UsageCursor{}, 10)
			if err != nil || len(got) != 1 || got[0].Bytes != 2*1234 || !got[0].ReceivedAt.Equal(recs[0].StoredAt) {
				t.Fatalf("StudiesByReceived = %+v, %v", got, err)
			}
		})
	}
}

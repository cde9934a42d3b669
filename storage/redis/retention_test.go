package redis_test

import (
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

func TestRetentionUsageIndex(t *testing.T) {
	storagetest.TestUsageIndex(t, func(t *testing.T) storagetest.UsageIndexUnderTest { return newTestIndex(t) })
}

func TestHoldStore(t *testing.T) {
	storagetest.TestHoldStore(t, func(t *testing.T) gateway.HoldStore {
		c, err := redis.Open(storagetest.RedisURL(t), storagetest.RedisPrefix(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return redis.NewHolds(c)
	})
}

// TestRetentionUsageBackfill: an index written before the usage fields
// (no sz, b, rt, x:recv, x:bytes) counts its instances once each is
// written again unchanged, as gateway reindex does.
func TestRetentionUsageBackfill(t *testing.T) {
	c, err := redis.Open(storagetest.RedisURL(t), storagetest.RedisPrefix(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
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
		if err := rdb.HDel(ctx, c.Key("{idx}:i:"+sop), "sz").Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := rdb.HDel(ctx, c.Key("{idx}:s:1.2.3"), "b", "rt").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(ctx, c.Key("{idx}:x:recv"), c.Key("{idx}:x:bytes")).Err(); err != nil {
		t.Fatal(err)
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
}

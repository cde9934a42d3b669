package redis_test

import (
	"fmt"
	"net/url"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

func newTestIndex(t testing.TB) *redis.Index {
	return redis.NewIndex(openClient(t, storagetest.RedisURL(t)))
}

// openClient connects to the Redis at url (a server or a cluster) under a
// prefix of this test's, deleted when it ends.
func openClient(t testing.TB, url string) *redis.Client {
	c, err := redis.Open(url, storagetest.RedisPrefixIn(t, url))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestIndex runs the index suite on a single server (one shard under {idx},
// the layout of earlier versions) and on the 3-master cluster
// (ClusterShards shards spread over the masters, instance locators).
func TestIndex(t *testing.T) {
	for name, url := range storagetest.RedisServers(t) {
		t.Run(name, func(t *testing.T) {
			storagetest.TestIndex(t, func(t *testing.T) gateway.Index { return redis.NewIndex(openClient(t, url)) })
		})
	}
}

// TestIndexShardedOnOneServer runs the suite on the cluster layout with a
// few shards on the single server: the merged walks with shards that are
// often empty.
func TestIndexShardedOnOneServer(t *testing.T) {
	storagetest.TestIndex(t, func(t *testing.T) gateway.Index {
		return redis.NewShardedIndex(openClient(t, storagetest.RedisURL(t)), 3)
	})
}

// BenchmarkQIDO loads storagetest.BenchStudies() studies (env
// GATEWAY_BENCH_STUDIES, default 100,000) and reports p50/p99 of the common
// searches.
func BenchmarkQIDO(b *testing.B) {
	x := newTestIndex(b)
	if prefix := storagetest.BenchKeepPrefix(); prefix != "" {
		c, err := redis.Open(storagetest.RedisURL(b), prefix)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		x = redis.NewIndex(c)
	}
	storagetest.BenchIndexQueries(b, x)
}

// TestPutInstancesBulk: the bulk put of reindex, on both deployments,
// leaves indexed instances as they are (also one indexed under another
// study, which on a cluster lives in another shard) and indexes the rest so
// that they are found by SOP Instance UID and by a search over every study.
func TestPutInstancesBulk(t *testing.T) {
	for name, addr := range storagetest.RedisServers(t) {
		t.Run(name, func(t *testing.T) {
			x, ctx := redis.NewIndex(openClient(t, addr)), t.Context()
			first := storagetest.Record("1.2.9", "1.2.9.1", "1.2.9.1.1", nil)
			if _, _, err := x.PutInstance(ctx, first); err != nil {
				t.Fatal(err)
			}
			var recs []*gateway.InstanceRecord
			for i := range 40 {
				study := fmt.Sprintf("1.2.%d", 100+i)
				recs = append(recs, storagetest.Record(study, study+".1", study+".1.1", nil), storagetest.Record(study, study+".1", study+".1.2", nil))
			}
			moved := storagetest.Record("1.2.8", "1.2.8.1", "1.2.9.1.1", nil) // already indexed under 1.2.9
			recs = append(recs, moved)
			if err := x.PutInstances(ctx, recs); err != nil {
				t.Fatal(err)
			}
			for _, rec := range recs {
				got, err := x.GetInstance(ctx, rec.SOPInstanceUID)
				if err != nil {
					t.Fatalf("GetInstance(%s): %v", rec.SOPInstanceUID, err)
				}
				if rec != moved && got.StudyInstanceUID != rec.StudyInstanceUID {
					t.Errorf("%s in study %s, want %s", rec.SOPInstanceUID, got.StudyInstanceUID, rec.StudyInstanceUID)
				}
			}
			if got, err := x.GetInstance(ctx, "1.2.9.1.1"); err != nil || got.StudyInstanceUID != "1.2.9" {
				t.Errorf("instance indexed before the bulk put: %v, %v; want it left in study 1.2.9", got, err)
			}
			q, err := gateway.ParseQuery(gateway.LevelStudy, "", "", url.Values{"limit": {"1000"}}, gateway.QueryLimits{Default: 100, Max: 1000})
			if err != nil {
				t.Fatal(err)
			}
			res, err := x.Search(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Items) != 41 {
				t.Errorf("search over every study: %d studies, want 41", len(res.Items))
			}
		})
	}
}

// BenchmarkQIDOCluster is BenchmarkQIDO on the 3-master cluster (64 shards:
// every search over all studies reads every shard and merges), to compare
// with BenchmarkQIDO at the same GATEWAY_BENCH_STUDIES.
func BenchmarkQIDOCluster(b *testing.B) {
	storagetest.BenchIndexQueries(b, redis.NewIndex(openClient(b, storagetest.RedisClusterURL(b))))
}

// TestIndexConflictStudyLeavesNoPatientEntries: a study flagged for an
// identity conflict is listed under both patients' x:pid sets; once its
// instances are deleted, neither set keeps it (the study is unlisted from
// every patient ID it was listed under, not only its own).
func TestIndexConflictStudyLeavesNoPatientEntries(t *testing.T) {
	c := openClient(t, storagetest.RedisURL(t))
	x, ctx := redis.NewIndex(c), t.Context()
	first := storagetest.Record("1.2.8", "1.2.8.1", "1.2.8.1.1", map[string]any{dicomcodec.TagPatientID: "S100"})
	second := storagetest.Flagged(storagetest.Record("1.2.8", "1.2.8.2", "1.2.8.2.1", map[string]any{dicomcodec.TagPatientID: "H200"}),
		gateway.PatientIdentity{ID: "S100"})
	for _, rec := range []*gateway.InstanceRecord{first, second} {
		if _, _, err := x.PutInstance(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	members := func() map[string]int64 {
		out := map[string]int64{}
		iter := c.Redis().Scan(ctx, 0, c.Key("*x:pid:*"), 1000).Iterator()
		for iter.Next(ctx) {
			out[iter.Val()] = c.Redis().ZCard(ctx, iter.Val()).Val()
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := members(); len(got) != 2 {
		t.Fatalf("x:pid sets of the flagged study: %v, want S100's and H200's", got)
	}
	for _, rec := range []*gateway.InstanceRecord{second, first} {
		if err := x.DeleteInstance(ctx, rec.SOPInstanceUID); err != nil {
			t.Fatal(err)
		}
	}
	for k, n := range members() {
		if n > 0 {
			t.Errorf("%s still lists %d studies after the study's instances were deleted", k, n)
		}
	}
}

// TestListFlaggedStudies takes 700 flagged studies (enough for the walk to
// page) back to the layout written before 2026-12-06 (listed under their
// latest instance's Patient ID only, no x:idok mark): an exact search by
// the other patient's ID misses them; ListFlaggedStudies lists each once,
// with its date (a search by ID and date finds it), and a second call has
// nothing to do. On a single server and on the cluster.
func TestListFlaggedStudies(t *testing.T) {
	for name, server := range storagetest.RedisServers(t) {
		t.Run(name, func(t *testing.T) {
			c := openClient(t, server)
			x, ctx := redis.NewIndex(c), t.Context()
			const n = 700
			var recs []*gateway.InstanceRecord
			for i := range n {
				st := fmt.Sprintf("1.2.12.%d", i)
				recs = append(recs,
					storagetest.Record(st, st+".1", st+".1.1", map[string]any{dicomcodec.TagPatientID: "A" + st, dicomcodec.TagStudyDate: "20240101"}),
					storagetest.Flagged(storagetest.Record(st, st+".2", st+".2.1", map[string]any{dicomcodec.TagPatientID: "B" + st, dicomcodec.TagStudyDate: "20240101"}),
						gateway.PatientIdentity{ID: "A" + st}))
			}
			if err := x.PutInstances(ctx, recs); err != nil {
				t.Fatal(err)
			}
			count := func(raw string) int {
				t.Helper()
				params, _ := url.ParseQuery(raw)
				q, err := gateway.ParseQuery(gateway.LevelStudy, "", "", params, gateway.QueryLimits{Default: 10, Max: 10})
				if err != nil {
					t.Fatal(err)
				}
				res, err := x.Search(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				return len(res.Items)
			}
			// The old layout: pid B… alone, not in A…'s set (and no x:idok
			// mark: the walk never ran under this prefix).
			pipe := c.Redis().Pipeline()
			for i := range n {
				st := fmt.Sprintf("1.2.12.%d", i)
				pipe.HSet(ctx, redis.StudyKeyForTest(x, st, "s", st), "pid", "B"+st)
				pipe.ZRem(ctx, redis.StudyKeyForTest(x, st, "x", "pid", "A"+st), st)
			}
			if _, err := pipe.Exec(ctx); err != nil {
				t.Fatal(err)
			}
			if got := count("PatientID=A1.2.12.0") + count("PatientID=A1.2.12.699"); got != 0 {
				t.Fatalf("search by the first patients on the old layout: %d studies, want 0", got)
			}
			listed, unreadable, err := x.ListFlaggedStudies(ctx)
			if err != nil || listed != n || unreadable != 0 {
				t.Fatalf("ListFlaggedStudies: listed %d, unreadable %d, %v; want %d, 0", listed, unreadable, err, n)
			}
			for _, i := range []int{0, 350, 699} {
				if got := count(fmt.Sprintf("PatientID=A1.2.12.%d&StudyDate=20240101", i)); got != 1 {
					t.Errorf("study %d by its first patient and date after the walk: %d studies, want 1", i, got)
				}
			}
			if pid := c.Redis().HGet(ctx, redis.StudyKeyForTest(x, "1.2.12.7", "s", "1.2.12.7"), "pid").Val(); pid != "B1.2.12.7\x01A1.2.12.7" {
				t.Errorf("pid field %q, want both IDs", pid)
			}
			if listed, _, err := x.ListFlaggedStudies(ctx); err != nil || listed != 0 {
				t.Errorf("a second walk listed %d (%v), want nothing to do", listed, err)
			}
		})
	}
}

package redis_test

import (
	"slices"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// TestQueue runs the queue suite on a single server and on the cluster,
// where the queue lives in the one slot of its hash tag {xfer}.
func TestQueue(t *testing.T) {
	for name, url := range storagetest.RedisServers(t) {
		t.Run(name, func(t *testing.T) {
			storagetest.TestQueue(t, func(t *testing.T, opts gateway.QueueOptions) gateway.Queue {
				q, err := redis.NewQueue(t.Context(), openClient(t, url), opts)
				if err != nil {
					t.Fatal(err)
				}
				return q
			})
		})
	}
}

// TestStudyIndexBuiltForOlderLayout: transfers written before the study
// sets existed (their sets and mark deleted), or by a replica of an earlier
// version after the last backfill (removed from their set), are found by
// study once a queue of this version starts.
func TestStudyIndexBuiltForOlderLayout(t *testing.T) {
	for name, url := range storagetest.RedisServers(t) {
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			c := openClient(t, url)
			open := func() *redis.Queue {
				t.Helper()
				q, err := redis.NewQueue(ctx, c, gateway.QueueOptions{ListScan: 1})
				if err != nil {
					t.Fatal(err)
				}
				return q
			}
			studyOf := func(q *redis.Queue, study string, dir string) []string {
				t.Helper()
				return storagetest.ListedIDs(t, q, gateway.TransferFilter{StudyUID: study, Direction: dir})
			}
			q := open()
			t0 := time.Now().Add(-2 * time.Hour).UTC()
			for i, study := range []string{"1.2.3.1", "1.2.3.2", "1.2.3.1"} {
				tr := &gateway.Transfer{ID: "tr-" + string(rune('a'+i)), StudyUID: study, Destination: "surrey", Direction: gateway.DirectionOutgoing,
					Source: "hampshire", Priority: gateway.PriorityNormal, CreatedAt: t0.Add(time.Duration(i) * time.Minute)}
				if _, _, err := q.Enqueue(ctx, tr, time.Time{}); err != nil {
					t.Fatal(err)
				}
				in := gateway.IncomingInstance{Source: "wales", Destination: "hampshire", TransferID: "in-" + string(rune('a'+i)), StudyUID: study,
					SOPInstanceUID: study + ".1", OK: true, Bytes: 10, At: tr.CreatedAt}
				if _, err := q.RecordIncoming(ctx, []gateway.IncomingInstance{in}); err != nil {
					t.Fatal(err)
				}
			}
			rdb := c.Redis()
			// The layout of an earlier version: no study sets, no mark.
			if err := rdb.Del(ctx, c.Key("{xfer}:study:1.2.3.1"), c.Key("{xfer}:study:1.2.3.2"), c.Key("{xfer}:in-study:1.2.3.1"),
				c.Key("{xfer}:in-study:1.2.3.2"), c.Key("{xfer}:study-index")).Err(); err != nil {
				t.Fatal(err)
			}
			if got := studyOf(q, "1.2.3.1", ""); len(got) != 0 {
				t.Fatalf("with the sets deleted, the queue that built them still lists %v; the test cannot tell a rebuild", got)
			}
			q = open()
			if got, want := studyOf(q, "1.2.3.1", ""), []string{"tr-c", "tr-a"}; !slices.Equal(got, want) {
				t.Errorf("outgoing study after the rebuild: %v, want %v", got, want)
			}
			if got, want := studyOf(q, "1.2.3.1", gateway.DirectionIncoming), []string{"in-c", "in-a"}; !slices.Equal(got, want) {
				t.Errorf("incoming study after the rebuild: %v, want %v", got, want)
			}
			// A transfer an earlier version wrote after that rebuild (not in
			// its set) joins at the next start, within the margin, and in a
			// running queue at its next List by study once studyIndexEvery
			// has passed.
			forget := func() {
				t.Helper()
				if err := rdb.ZRem(ctx, c.Key("{xfer}:study:1.2.3.2"), "tr-b").Err(); err != nil {
					t.Fatal(err)
				}
			}
			forget()
			q = open()
			if got, want := studyOf(q, "1.2.3.2", ""), []string{"tr-b"}; !slices.Equal(got, want) {
				t.Errorf("a transfer written by an earlier version, at the next start: %v, want %v", got, want)
			}
			forget()
			if got := studyOf(q, "1.2.3.2", ""); len(got) != 0 {
				t.Fatalf("within studyIndexEvery the queue indexed again: %v; the test cannot tell the interval", got)
			}
			defer redis.SetStudyIndexEveryForTest(0)()
			if got, want := studyOf(q, "1.2.3.2", ""), []string{"tr-b"}; !slices.Equal(got, want) {
				t.Errorf("a transfer written by an earlier version, once studyIndexEvery passed: %v, want %v", got, want)
			}
		})
	}
}

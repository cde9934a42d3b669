package bolt_test

import (
	"cmp"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/bolt"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

func TestQueue(t *testing.T) {
	storagetest.TestQueue(t, func(t *testing.T, opts gateway.QueueOptions) gateway.Queue {
		db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		q, err := bolt.NewQueue(db, opts)
		if err != nil {
			t.Fatal(err)
		}
		return q
	})
}

// openQueue opens a queue on a fresh state file and returns both.
func openQueue(t *testing.T) (*bolt.DB, *bolt.Queue) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	q, err := bolt.NewQueue(db, gateway.QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return db, q
}

// enqueueAt enqueues transfers created one minute apart from t0, in the
// order of ids (not the order of their creation times).
func enqueueAt(t *testing.T, q *bolt.Queue, t0 time.Time, minutes map[string]int) {
	t.Helper()
	for id, m := range minutes {
		tr := &gateway.Transfer{ID: id, StudyUID: "1.2.3." + id[3:], Destination: "surrey", Direction: gateway.DirectionOutgoing,
			Source: "hampshire", CreatedAt: t0.Add(time.Duration(m) * time.Minute)}
		if _, created, err := q.Enqueue(t.Context(), tr, time.Time{}); err != nil || !created {
			t.Fatalf("enqueue %s: created %v, %v", id, created, err)
		}
	}
}

// TestListIndexBuiltForOlderStateFile: a state file from before the
// by-study index, or from before both it and the by-time index (their
// buckets dropped), gets them when the queue opens, outgoing and incoming,
// and lists as before.
func TestListIndexBuiltForOlderStateFile(t *testing.T) {
	for name, byTimeToo := range map[string]bool{"before the by-study index": false, "before both indexes": true} {
		t.Run(name, func(t *testing.T) { testListIndexBuilt(t, byTimeToo) })
	}
}

func testListIndexBuilt(t *testing.T, byTimeToo bool) {
	db, q := openQueue(t)
	t0 := time.Date(2026, 12, 5, 9, 0, 0, 0, time.UTC)
	enqueueAt(t, q, t0, map[string]int{"tr-c": 2, "tr-a": 4, "tr-d": 1, "tr-b": 3})
	for i, id := range []string{"in-1", "in-2"} {
		in := gateway.IncomingInstance{Source: "surrey", Destination: "hampshire", TransferID: id, StudyUID: "1.2.9", SOPInstanceUID: "1.2.9.1",
			OK: true, Bytes: 10, At: t0.Add(time.Duration(i) * time.Hour)}
		if _, err := q.RecordIncoming(t.Context(), []gateway.IncomingInstance{in}); err != nil {
			t.Fatal(err)
		}
	}
	for _, before := range []struct {
		f    gateway.TransferFilter
		want []string
	}{{gateway.TransferFilter{}, []string{"tr-a", "tr-b", "tr-c", "tr-d"}}, {gateway.TransferFilter{Direction: gateway.DirectionIncoming}, []string{"in-2", "in-1"}}} {
		if got := storagetest.ListedIDs(t, q, before.f); !slices.Equal(got, before.want) {
			t.Errorf("%s, as written: %v, want %v", cmp.Or(before.f.Direction, "outgoing"), got, before.want)
		}
	}
	if err := bolt.DropListIndexForTest(db, byTimeToo); err != nil {
		t.Fatal(err)
	}
	reopened, err := bolt.NewQueue(db, gateway.QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := storagetest.ListedIDs(t, reopened, gateway.TransferFilter{}), []string{"tr-a", "tr-b", "tr-c", "tr-d"}; !slices.Equal(got, want) {
		t.Errorf("outgoing after the index was rebuilt: %v, want %v", got, want)
	}
	if got, want := storagetest.ListedIDs(t, reopened, gateway.TransferFilter{Direction: gateway.DirectionIncoming}), []string{"in-2", "in-1"}; !slices.Equal(got, want) {
		t.Errorf("incoming after the index was rebuilt: %v, want %v", got, want)
	}
	if got := storagetest.ListedIDs(t, reopened, gateway.TransferFilter{StudyUID: "1.2.3.d"}); !slices.Equal(got, []string{"tr-d"}) {
		t.Errorf("a study after the index was rebuilt: %v, want [tr-d]", got)
	}
	if got := storagetest.ListedIDs(t, reopened, gateway.TransferFilter{StudyUID: "1.2.9", Direction: gateway.DirectionIncoming}); !slices.Equal(got, []string{"in-2", "in-1"}) {
		t.Errorf("an incoming study after the index was rebuilt: %v, want [in-2 in-1]", got)
	}
	// New transfers join the rebuilt index.
	enqueueAt(t, reopened, t0, map[string]int{"tr-e": 5})
	if got := storagetest.ListedIDs(t, reopened, gateway.TransferFilter{Limit: 2}); !slices.Equal(got, []string{"tr-e", "tr-a"}) {
		t.Errorf("limit 2 after a new transfer: %v, want [tr-e tr-a]", got)
	}
	if got := storagetest.ListedIDs(t, reopened, gateway.TransferFilter{StudyUID: "1.2.3.e"}); !slices.Equal(got, []string{"tr-e"}) {
		t.Errorf("the new transfer's study: %v, want [tr-e]", got)
	}
}

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

func listedIDs(t *testing.T, q *bolt.Queue, f gateway.TransferFilter) []string {
	t.Helper()
	out, err := q.List(t.Context(), f)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, tr := range out {
		ids = append(ids, tr.ID)
	}
	return ids
}

// TestListIndexBuiltForOlderStateFile: a state file from before the
// by-time index (its buckets dropped) gets the index when the queue opens,
// outgoing and incoming, and lists newest first as before.
func TestListIndexBuiltForOlderStateFile(t *testing.T) {
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
		if got := listedIDs(t, q, before.f); !slices.Equal(got, before.want) {
			t.Errorf("%s, as written: %v, want %v", cmp.Or(before.f.Direction, "outgoing"), got, before.want)
		}
	}
	if err := bolt.DropListIndexForTest(db); err != nil {
		t.Fatal(err)
	}
	reopened, err := bolt.NewQueue(db, gateway.QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := listedIDs(t, reopened, gateway.TransferFilter{}), []string{"tr-a", "tr-b", "tr-c", "tr-d"}; !slices.Equal(got, want) {
		t.Errorf("outgoing after the index was rebuilt: %v, want %v", got, want)
	}
	if got, want := listedIDs(t, reopened, gateway.TransferFilter{Direction: gateway.DirectionIncoming}), []string{"in-2", "in-1"}; !slices.Equal(got, want) {
		t.Errorf("incoming after the index was rebuilt: %v, want %v", got, want)
	}
	// New transfers join the rebuilt index.
	enqueueAt(t, reopened, t0, map[string]int{"tr-e": 5})
	if got := listedIDs(t, reopened, gateway.TransferFilter{Limit: 2}); !slices.Equal(got, []string{"tr-e", "tr-a"}) {
		t.Errorf("limit 2 after a new transfer: %v, want [tr-e tr-a]", got)
	}
}

// TestListExaminesTheNewestOnly: List reads transfers newest first and
// stops after the newest listScan, as the Redis queue does, so that a
// gateway with years of transfers answers the admin page without reading
// them all; a filter by destination that only older transfers match finds
// none.
// A filter by study looks at all of them: retention must find a study's
// failed transfer however old it is.
func TestListExaminesTheNewestOnly(t *testing.T) {
	defer bolt.SetListScanForTest(3)()
	_, q := openQueue(t)
	t0 := time.Date(2026, 12, 5, 9, 0, 0, 0, time.UTC)
	enqueueAt(t, q, t0, map[string]int{"tr-1": 1, "tr-2": 2, "tr-3": 3, "tr-4": 4, "tr-5": 5})
	if got, want := listedIDs(t, q, gateway.TransferFilter{}), []string{"tr-5", "tr-4", "tr-3"}; !slices.Equal(got, want) {
		t.Errorf("List examined beyond the newest 3: %v, want %v", got, want)
	}
	wales := &gateway.Transfer{ID: "tr-0", StudyUID: "1.2.3.0", Destination: "wales", Direction: gateway.DirectionOutgoing, Source: "hampshire", CreatedAt: t0}
	if _, _, err := q.Enqueue(t.Context(), wales, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if got := listedIDs(t, q, gateway.TransferFilter{Destination: "wales"}); len(got) != 0 {
		t.Errorf("a destination only the oldest transfer has: %v, want none (beyond the newest 3)", got)
	}
	if got := listedIDs(t, q, gateway.TransferFilter{StudyUID: "1.2.3.4"}); !slices.Equal(got, []string{"tr-4"}) {
		t.Errorf("a study within the scan: %v, want [tr-4]", got)
	}
	if got := listedIDs(t, q, gateway.TransferFilter{StudyUID: "1.2.3.1"}); !slices.Equal(got, []string{"tr-1"}) {
		t.Errorf("the oldest transfer's study: %v, want [tr-1] (a study's transfers are all looked at)", got)
	}
	// Retention's question: the oldest transfer, still queued, keeps its
	// study although it is beyond the newest three.
	pending, err := gateway.PendingTransfer(t.Context(), q, "1.2.3.1")
	if err != nil || pending == nil || pending.ID != "tr-1" {
		t.Errorf("PendingTransfer of the oldest transfer's study: %v, %v; want tr-1", pending, err)
	}
}

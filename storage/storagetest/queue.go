package storagetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
)

// NewQueueFunc returns an empty queue with opts; it is called once per
// subtest and cleans up after itself through t.Cleanup.
type NewQueueFunc func(t *testing.T, opts gateway.QueueOptions) gateway.Queue

// TestQueue is the conformance suite of gateway.Queue: every sentence of
// its doc comment has a subtest here, run against every backend. It uses
// the real clock with short visibility timeouts, so it sleeps a little.
func TestQueue(t *testing.T, newQueue NewQueueFunc) {
	long := gateway.QueueOptions{VisibilityTimeout: time.Minute}
	t.Run("Transitions", func(t *testing.T) { testTransitions(t, newQueue) })
	t.Run("EnqueueIsIdempotent", func(t *testing.T) {
		q := newQueue(t, long)
		ctx := t.Context()
		tr := newTransfer("a", gateway.PriorityNormal)
		got, created, err := q.Enqueue(ctx, tr, time.Time{})
		if err != nil || !created {
			t.Fatalf("Enqueue = %v, %v; want created", created, err)
		}
		if got.ID != tr.ID || got.State != gateway.StateQueued || got.StudyUID != tr.StudyUID {
			t.Fatalf("Enqueue returned %+v", got)
		}
		again := *tr
		again.StudyUID = "9.9.9"
		got, created, err = q.Enqueue(ctx, &again, time.Time{})
		if err != nil || created {
			t.Fatalf("second Enqueue = %v, %v; want not created", created, err)
		}
		if got.StudyUID != tr.StudyUID {
			t.Fatalf("second Enqueue changed the study to %s", got.StudyUID)
		}
		stored, err := q.Get(ctx, tr.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := stored.StudyUID, tr.StudyUID; got != want {
			t.Fatalf("StudyUID=%v, want %v", got, want)
		}
		if got, want := stored.CreatedAt.UnixMilli(), tr.CreatedAt.UnixMilli(); got != want {
			t.Fatalf("CreatedAt=%v, want %v", got, want)
		}
		l := claim(t, q, "w1", time.Second)
		if l == nil || l.TransferID != tr.ID {
			t.Fatalf("Claim = %+v, want %s", l, tr.ID)
		}
		if l2 := claim(t, q, "w2", 0); l2 != nil {
			t.Fatalf("an idempotent Enqueue queued the transfer twice: second Claim = %+v", l2)
		}
	})

	t.Run("GetUnknownIsNotFound", func(t *testing.T) {
		q := newQueue(t, long)
		if _, err := q.Get(t.Context(), "tr-nope"); !errors.Is(err, gateway.ErrNotFound) {
			t.Fatalf("Get = %v, want ErrNotFound", err)
		}
		if _, err := q.Cancel(t.Context(), "tr-nope"); !errors.Is(err, gateway.ErrNotFound) {
			t.Fatalf("Cancel = %v, want ErrNotFound", err)
		}
	})

	t.Run("ListFiltersNewestFirst", func(t *testing.T) {
		q := newQueue(t, long)
		ctx := t.Context()
		base := time.Now().Add(-time.Hour)
		for i, dest := range []string{"surrey", "wales", "surrey"} {
			tr := newTransfer(fmt.Sprint(i), gateway.PriorityNormal)
			tr.Destination = dest
			tr.CreatedAt = base.Add(time.Duration(i) * time.Minute)
			if i == 2 {
				tr.StudyUID = "1.2.3.99"
			}
			mustEnqueue(t, q, tr)
		}
		all, err := q.List(ctx, gateway.TransferFilter{})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := ids(all), []string{"tr-test-2", "tr-test-1", "tr-test-0"}; !slices.Equal(got, want) {
			t.Fatalf("List = %v, want %v", got, want)
		}
		surrey, _ := q.List(ctx, gateway.TransferFilter{Destination: "surrey"})
		if got, want := ids(surrey), []string{"tr-test-2", "tr-test-0"}; !slices.Equal(got, want) {
			t.Fatalf("List(surrey) = %v, want %v", got, want)
		}
		study, _ := q.List(ctx, gateway.TransferFilter{StudyUID: "1.2.3.99", State: gateway.StateQueued})
		if got, want := ids(study), []string{"tr-test-2"}; !slices.Equal(got, want) {
			t.Fatalf("List(study) = %v, want %v", got, want)
		}
		none, _ := q.List(ctx, gateway.TransferFilter{State: gateway.StateCompleted})
		if len(none) != 0 {
			t.Fatalf("List(completed) = %v, want none", ids(none))
		}
		limited, _ := q.List(ctx, gateway.TransferFilter{Limit: 1})
		if got, want := ids(limited), []string{"tr-test-2"}; !slices.Equal(got, want) {
			t.Fatalf("List(limit 1) = %v, want %v", got, want)
		}
	})

	t.Run("ListScansTheNewestButAllOfAStudy", func(t *testing.T) {
		q := newQueue(t, gateway.QueueOptions{VisibilityTimeout: time.Minute, ListScan: 3})
		ctx := t.Context()
		base := time.Now().Add(-time.Hour).UTC()
		// Five outgoing and five incoming transfers, one study each, the
		// oldest first; the oldest outgoing one goes to wales.
		for i := range 5 {
			tr := newTransfer(fmt.Sprint(i), gateway.PriorityNormal)
			tr.StudyUID = fmt.Sprintf("1.2.3.%d", i)
			tr.CreatedAt = base.Add(time.Duration(i) * time.Minute)
			if i == 0 {
				tr.Destination = "wales"
			}
			mustEnqueue(t, q, tr)
			in := gateway.IncomingInstance{Source: "surrey", Destination: "hampshire", TransferID: fmt.Sprintf("in-%d", i),
				StudyUID: tr.StudyUID, SOPInstanceUID: tr.StudyUID + ".1", OK: true, Bytes: 10, At: tr.CreatedAt}
			if _, err := q.RecordIncoming(ctx, []gateway.IncomingInstance{in}); err != nil {
				t.Fatal(err)
			}
		}
		list := func(f gateway.TransferFilter) []string { t.Helper(); return ListedIDs(t, q, f) }
		if got, want := list(gateway.TransferFilter{}), []string{"tr-test-4", "tr-test-3", "tr-test-2"}; !slices.Equal(got, want) {
			t.Errorf("List examined beyond the newest 3: %v, want %v", got, want)
		}
		if got := list(gateway.TransferFilter{Destination: "wales"}); len(got) != 0 {
			t.Errorf("a destination only the oldest transfer has: %v, want none (beyond the newest 3)", got)
		}
		if got, want := list(gateway.TransferFilter{Direction: gateway.DirectionIncoming}), []string{"in-4", "in-3", "in-2"}; !slices.Equal(got, want) {
			t.Errorf("incoming List examined beyond the newest 3: %v, want %v", got, want)
		}
		// A study's transfers are all looked at, however old.
		if got, want := list(gateway.TransferFilter{StudyUID: "1.2.3.0"}), []string{"tr-test-0"}; !slices.Equal(got, want) {
			t.Errorf("the oldest transfer's study: %v, want %v", got, want)
		}
		if got, want := list(gateway.TransferFilter{StudyUID: "1.2.3.0", Destination: "wales", State: gateway.StateQueued}), []string{"tr-test-0"}; !slices.Equal(got, want) {
			t.Errorf("the oldest transfer's study, destination and state: %v, want %v", got, want)
		}
		if got, want := list(gateway.TransferFilter{StudyUID: "1.2.3.0", Direction: gateway.DirectionIncoming}), []string{"in-0"}; !slices.Equal(got, want) {
			t.Errorf("the oldest incoming transfer's study: %v, want %v", got, want)
		}
		if got := list(gateway.TransferFilter{StudyUID: "1.2.3"}); len(got) != 0 {
			t.Errorf("a study whose UID starts the others': %v, want none", got)
		}
		// Retention's question: the oldest transfer, still queued, keeps
		// its study although it is beyond the newest three.
		pending, err := gateway.PendingTransfer(ctx, q, "1.2.3.0", time.Now())
		if err != nil || pending == nil || pending.ID != "tr-test-0" {
			t.Errorf("PendingTransfer of the oldest transfer's study: %v, %v; want tr-test-0", pending, err)
		}
		// An incoming transfer is found by its ID, however old.
		for _, id := range []string{"in-0", "in-4"} {
			got, err := q.IncomingByID(ctx, id)
			if err != nil || len(got) != 1 || got[0].ID != id || got[0].Source != "surrey" || got[0].Direction != gateway.DirectionIncoming {
				t.Errorf("IncomingByID(%s) = %v, %v; want the one from surrey", id, ids(got), err)
			}
		}
		// Two peers that picked the same ID: both, newest first; an ID's
		// prefix or an outgoing ID finds none.
		in := gateway.IncomingInstance{Source: "wales", Destination: "hampshire", TransferID: "in-0",
			StudyUID: "1.2.3.9", SOPInstanceUID: "1.2.3.9.1", OK: true, Bytes: 10, At: base.Add(time.Minute)}
		if _, err := q.RecordIncoming(ctx, []gateway.IncomingInstance{in}); err != nil {
			t.Fatal(err)
		}
		if got, err := q.IncomingByID(ctx, "in-0"); err != nil || len(got) != 2 || got[0].Source != "wales" || got[1].Source != "surrey" {
			t.Errorf("IncomingByID(in-0) from two sources = %+v, %v; want wales then surrey", got, err)
		}
		for _, id := range []string{"in", "tr-test-0", "nowhere"} {
			if got, err := q.IncomingByID(ctx, id); err != nil || len(got) != 0 {
				t.Errorf("IncomingByID(%s) = %v, %v; want none", id, ids(got), err)
			}
		}
		// A second transfer of a study lists with the first, newest first.
		again := newTransfer("5", gateway.PriorityNormal)
		again.StudyUID, again.CreatedAt = "1.2.3.0", base.Add(10*time.Minute)
		mustEnqueue(t, q, again)
		if got, want := list(gateway.TransferFilter{StudyUID: "1.2.3.0"}), []string{"tr-test-5", "tr-test-0"}; !slices.Equal(got, want) {
			t.Errorf("a study with two transfers: %v, want %v", got, want)
		}
		if got, want := list(gateway.TransferFilter{StudyUID: "1.2.3.0", Limit: 1}), []string{"tr-test-5"}; !slices.Equal(got, want) {
			t.Errorf("a study with two transfers, limit 1: %v, want %v", got, want)
		}
	})

	t.Run("UrgentBeforeNormalOldestFirst", func(t *testing.T) {
		q := newQueue(t, long)
		mustEnqueue(t, q, newTransfer("n1", gateway.PriorityNormal))
		mustEnqueue(t, q, newTransfer("n2", gateway.PriorityNormal))
		mustEnqueue(t, q, newTransfer("u1", gateway.PriorityUrgent))
		mustEnqueue(t, q, newTransfer("u2", gateway.PriorityUrgent))
		var got []string
		for range 4 {
			l := claim(t, q, "w1", time.Second)
			if l == nil {
				t.Fatalf("Claim returned nothing after %v", got)
			}
			got = append(got, l.TransferID)
		}
		if want := []string{"tr-test-u1", "tr-test-u2", "tr-test-n1", "tr-test-n2"}; !slices.Equal(got, want) {
			t.Fatalf("claim order %v, want %v", got, want)
		}
		if l := claim(t, q, "w1", 50*time.Millisecond); l != nil {
			t.Fatalf("Claim on an empty queue = %+v, want nil", l)
		}
	})

	t.Run("ClaimWaitsForEnqueue", func(t *testing.T) {
		q := newQueue(t, long)
		done := make(chan *gateway.Lease, 1)
		go func() {
			l, _ := q.Claim(t.Context(), "w1", 5*time.Second)
			done <- l
		}()
		time.Sleep(100 * time.Millisecond)
		mustEnqueue(t, q, newTransfer("late", gateway.PriorityNormal))
		if l := <-done; l == nil || l.TransferID != "tr-test-late" {
			t.Fatalf("waiting Claim = %+v, want tr-test-late", l)
		}
	})

	t.Run("NotBeforeDelaysDelivery", func(t *testing.T) {
		q := newQueue(t, long)
		tr := newTransfer("later", gateway.PriorityUrgent)
		if _, _, err := q.Enqueue(t.Context(), tr, time.Now().Add(300*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if l := claim(t, q, "w1", 0); l != nil {
			t.Fatalf("Claim before not-before = %+v, want nil", l)
		}
		if l := claim(t, q, "w1", 3*time.Second); l == nil || l.TransferID != tr.ID {
			t.Fatalf("Claim after not-before = %+v, want %s", l, tr.ID)
		}
	})

	t.Run("TwoWorkersNeverHoldTheSameTransfer", func(t *testing.T) {
		q := newQueue(t, long)
		const n = 20
		for i := range n {
			mustEnqueue(t, q, newTransfer(fmt.Sprint(i), []gateway.Priority{gateway.PriorityNormal, gateway.PriorityUrgent}[i%2]))
		}
		var mu sync.Mutex
		counts := map[string]int{}
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for {
					l, err := q.Claim(t.Context(), fmt.Sprintf("w%d", w), 200*time.Millisecond)
					if err != nil {
						t.Error(err)
						return
					}
					if l == nil {
						return
					}
					mu.Lock()
					counts[l.TransferID]++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if got, want := len(counts), n; got != want {
			t.Fatalf("%d transfers handed out, want %d", got, want)
		}
		for id, c := range counts {
			if c != 1 {
				t.Errorf("%s handed out %d times while its lease was held", id, c)
			}
		}
	})

	t.Run("DeadConsumerIsReclaimed", func(t *testing.T) {
		q := newQueue(t, gateway.QueueOptions{VisibilityTimeout: 300 * time.Millisecond})
		ctx := t.Context()
		tr := newTransfer("x", gateway.PriorityNormal)
		mustEnqueue(t, q, tr)
		dead := claim(t, q, "dies", time.Second)
		if dead == nil {
			t.Fatal("first Claim returned nothing")
		}
		if l := claim(t, q, "survivor", 0); l != nil {
			t.Fatalf("Claim while the lease is fresh = %+v, want nil", l)
		}
		time.Sleep(400 * time.Millisecond)
		l := claim(t, q, "survivor", 2*time.Second)
		if l == nil || l.TransferID != tr.ID {
			t.Fatalf("Claim after the visibility timeout = %+v, want %s", l, tr.ID)
		}
		stale := *tr
		stale.State = gateway.StateRunning
		if err := q.Save(ctx, dead, &stale); !errors.Is(err, gateway.ErrConflict) {
			t.Fatalf("Save by the dead consumer = %v, want ErrConflict", err)
		}
		if _, err := q.Extend(ctx, dead); !errors.Is(err, gateway.ErrConflict) {
			t.Fatalf("Extend by the dead consumer = %v, want ErrConflict", err)
		}
		done := stale
		done.State = gateway.StateCompleted
		if err := q.Finish(ctx, dead, &done); !errors.Is(err, gateway.ErrConflict) {
			t.Fatalf("Finish by the dead consumer = %v, want ErrConflict", err)
		}
		if err := q.Finish(ctx, l, &done); err != nil {
			t.Fatalf("Finish by the survivor: %v", err)
		}
		got, _ := q.Get(ctx, tr.ID)
		if got.State != gateway.StateCompleted {
			t.Fatalf("state %s, want completed", got.State)
		}
		if l := claim(t, q, "survivor", 500*time.Millisecond); l != nil {
			t.Fatalf("Claim after Finish = %+v, want nil", l)
		}
	})

	t.Run("DeadConsumerIsReclaimedBehindLiveOnes", func(t *testing.T) {
		// Twelve transfers running on live workers that extend their leases,
		// and, queued after them, one whose worker died: a new worker gets
		// the dead one's, however many live leases come before it.
		q := newQueue(t, gateway.QueueOptions{VisibilityTimeout: time.Second})
		ctx := t.Context()
		base := time.Now().Add(-time.Minute)
		for i := range 13 {
			tr := newTransfer(fmt.Sprintf("live-%02d", i), gateway.PriorityNormal)
			tr.CreatedAt = base.Add(time.Duration(i) * time.Second)
			mustEnqueue(t, q, tr)
		}
		var live []*gateway.Lease
		for i := range 12 {
			l := claim(t, q, fmt.Sprintf("live-worker-%d", i), time.Second)
			if l == nil {
				t.Fatalf("claim %d returned nothing", i)
			}
			live = append(live, l)
		}
		dead := claim(t, q, "dies", time.Second)
		if dead == nil || dead.TransferID != "tr-test-live-12" {
			t.Fatalf("the last claim = %+v, want tr-test-live-12", dead)
		}
		time.Sleep(1300 * time.Millisecond) // the extends below take well under the second a lease lasts
		for _, l := range live {
			if _, err := q.Extend(ctx, l); err != nil {
				t.Fatalf("Extend of a live lease: %v", err)
			}
		}
		l := claim(t, q, "rescuer", 0)
		if l == nil || l.TransferID != dead.TransferID {
			t.Fatalf("Claim behind twelve live leases = %+v, want the dead worker's %s", l, dead.TransferID)
		}
	})

	t.Run("ExtendKeepsTheLease", func(t *testing.T) {
		q := newQueue(t, gateway.QueueOptions{VisibilityTimeout: 400 * time.Millisecond})
		ctx := t.Context()
		mustEnqueue(t, q, newTransfer("x", gateway.PriorityNormal))
		l := claim(t, q, "a", time.Second)
		for range 6 {
			time.Sleep(150 * time.Millisecond)
			if _, err := q.Extend(ctx, l); err != nil {
				t.Fatalf("Extend: %v", err)
			}
			if other := claim(t, q, "b", 0); other != nil {
				t.Fatalf("Claim of an extended lease = %+v, want nil", other)
			}
		}
	})

	t.Run("SaveAndFinish", func(t *testing.T) {
		q := newQueue(t, long)
		ctx := t.Context()
		tr := newTransfer("x", gateway.PriorityNormal)
		mustEnqueue(t, q, tr)
		l := claim(t, q, "a", time.Second)
		run := *tr
		run.State, run.Attempts, run.InstancesTotal, run.BytesSent = gateway.StateRunning, 1, 7, 1<<40+3
		if err := q.Save(ctx, l, &run); err != nil {
			t.Fatal(err)
		}
		got, _ := q.Get(ctx, tr.ID)
		if got.State != gateway.StateRunning || got.InstancesTotal != 7 || got.BytesSent != 1<<40+3 {
			t.Fatalf("after Save: %+v", got)
		}
		run.State, run.LastError = gateway.StateFailed, "surrey refused 2 instances"
		if err := q.Finish(ctx, l, &run); err != nil {
			t.Fatal(err)
		}
		got, _ = q.Get(ctx, tr.ID)
		if got.State != gateway.StateFailed || got.LastError != run.LastError {
			t.Fatalf("after Finish: %+v", got)
		}
		if err := q.Finish(ctx, l, &run); !errors.Is(err, gateway.ErrConflict) {
			t.Fatalf("second Finish = %v, want ErrConflict", err)
		}
	})

	t.Run("DeferHandsOutLater", func(t *testing.T) {
		q := newQueue(t, long)
		ctx := t.Context()
		tr := newTransfer("x", gateway.PriorityNormal)
		mustEnqueue(t, q, tr)
		l := claim(t, q, "a", time.Second)
		wait := *tr
		wait.LastError = "surrey: connection refused"
		if err := q.Defer(ctx, l, &wait, time.Now().Add(300*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		got, _ := q.Get(ctx, tr.ID)
		if got.State != gateway.StateQueued || got.LastError != wait.LastError {
			t.Fatalf("after Defer: %+v", got)
		}
		if other := claim(t, q, "b", 0); other != nil {
			t.Fatalf("Claim before the deferred time = %+v", other)
		}
		if err := q.Save(ctx, l, &wait); !errors.Is(err, gateway.ErrConflict) {
			t.Fatalf("Save on a deferred lease = %v, want ErrConflict", err)
		}
		if again := claim(t, q, "b", 3*time.Second); again == nil || again.TransferID != tr.ID {
			t.Fatalf("Claim after the deferred time = %+v", again)
		}
	})

	t.Run("CancelQueued", func(t *testing.T) {
		q := newQueue(t, long)
		ctx := t.Context()
		tr := newTransfer("x", gateway.PriorityNormal)
		mustEnqueue(t, q, tr)
		got, err := q.Cancel(ctx, tr.ID)
		if err != nil || got.State != gateway.StateCancelled {
			t.Fatalf("Cancel = %+v, %v", got, err)
		}
		if l := claim(t, q, "a", 100*time.Millisecond); l != nil {
			t.Fatalf("a cancelled transfer was handed out: %+v", l)
		}
		if _, err := q.Cancel(ctx, tr.ID); !errors.Is(err, gateway.ErrConflict) {
			t.Fatalf("second Cancel = %v, want ErrConflict", err)
		}
		if err := q.Postpone(ctx, tr.ID, time.Now()); !errors.Is(err, gateway.ErrConflict) {
			t.Fatalf("Postpone of a cancelled transfer = %v, want ErrConflict", err)
		}
	})

	t.Run("CancelRunning", func(t *testing.T) {
		q := newQueue(t, long)
		ctx := t.Context()
		tr, l, run := cancelledWhileRunning(t, q)
		seen, err := q.Extend(ctx, l)
		if err != nil {
			t.Fatalf("Extend after cancel: %v", err)
		}
		if seen.State != gateway.StateCancelled {
			t.Fatalf("Extend shows %s, want cancelled", seen.State)
		}
		if err := q.Save(ctx, l, &run); !errors.Is(err, gateway.ErrConflict) {
			t.Fatalf("Save after cancel = %v, want ErrConflict", err)
		}
		back := run
		back.State = gateway.StateQueued
		if err := q.Requeue(ctx, &back); !errors.Is(err, gateway.ErrConflict) {
			t.Fatalf("Requeue while still held = %v, want ErrConflict", err)
		}
		run.State = gateway.StateCompleted
		if err := q.Finish(ctx, l, &run); err != nil {
			t.Fatalf("Finish after cancel: %v", err)
		}
		got, _ := q.Get(ctx, tr.ID)
		if got.State != gateway.StateCancelled {
			t.Fatalf("state %s after Finish of a cancelled transfer, want cancelled", got.State)
		}
		if err := q.Requeue(ctx, &back); err != nil {
			t.Fatalf("Requeue once released: %v", err)
		}
		if again := claim(t, q, "b", time.Second); again == nil || again.TransferID != tr.ID {
			t.Fatalf("Claim after Requeue = %+v", again)
		}
	})

	t.Run("DeferAfterCancelReleasesTheLease", func(t *testing.T) {
		// A worker whose attempt failed tries to defer a transfer an admin
		// cancelled meanwhile: ErrConflict, the transfer stays cancelled,
		// and the lease is given up, so the admin's retry need not wait
		// for it to run out.
		q := newQueue(t, long)
		ctx := t.Context()
		tr, l, run := cancelledWhileRunning(t, q)
		later := run
		if err := q.Defer(ctx, l, &later, time.Now().Add(time.Minute)); !errors.Is(err, gateway.ErrConflict) {
			t.Fatalf("Defer after cancel = %v, want ErrConflict", err)
		}
		if got, _ := q.Get(ctx, tr.ID); got.State != gateway.StateCancelled {
			t.Fatalf("state %s after Defer of a cancelled transfer, want cancelled", got.State)
		}
		back := *tr
		back.State = gateway.StateQueued
		if err := q.Requeue(ctx, &back); err != nil {
			t.Fatalf("Requeue after the Defer gave the lease up: %v", err)
		}
		if again := claim(t, q, "b", time.Second); again == nil || again.TransferID != tr.ID {
			t.Fatalf("Claim after Requeue = %+v", again)
		}
	})

	t.Run("RequeueOnlyFailedOrCancelled", func(t *testing.T) {
		q := newQueue(t, long)
		ctx := t.Context()
		tr := newTransfer("x", gateway.PriorityUrgent)
		mustEnqueue(t, q, tr)
		if err := q.Requeue(ctx, tr); !errors.Is(err, gateway.ErrConflict) {
			t.Fatalf("Requeue of a queued transfer = %v, want ErrConflict", err)
		}
		l := claim(t, q, "a", time.Second)
		failed := *tr
		failed.State, failed.Attempts, failed.LastError = gateway.StateFailed, 5, "gave up"
		if err := q.Finish(ctx, l, &failed); err != nil {
			t.Fatal(err)
		}
		retry := failed
		retry.State, retry.Attempts, retry.LastError = gateway.StateQueued, 0, ""
		if err := q.Requeue(ctx, &retry); err != nil {
			t.Fatal(err)
		}
		got, _ := q.Get(ctx, tr.ID)
		if got.State != gateway.StateQueued || got.Attempts != 0 || got.LastError != "" {
			t.Fatalf("after Requeue: %+v", got)
		}
		if again := claim(t, q, "b", time.Second); again == nil || again.TransferID != tr.ID {
			t.Fatalf("Claim after Requeue = %+v", again)
		}
		if err := q.Requeue(ctx, &retry); !errors.Is(err, gateway.ErrConflict) {
			t.Fatalf("Requeue of a held transfer = %v, want ErrConflict", err)
		}
	})

	t.Run("Postpone", func(t *testing.T) {
		q := newQueue(t, long)
		ctx := t.Context()
		tr := newTransfer("x", gateway.PriorityNormal)
		if _, _, err := q.Enqueue(ctx, tr, time.Now().Add(100*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if err := q.Postpone(ctx, tr.ID, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if l := claim(t, q, "a", 400*time.Millisecond); l != nil {
			t.Fatalf("Claim of a postponed transfer = %+v", l)
		}
		if err := q.Postpone(ctx, tr.ID, time.Now()); err != nil {
			t.Fatal(err)
		}
		if l := claim(t, q, "a", 2*time.Second); l == nil {
			t.Fatal("Claim after Postpone to now returned nothing")
		}
		if err := q.Postpone(ctx, tr.ID, time.Now()); !errors.Is(err, gateway.ErrConflict) {
			t.Fatalf("Postpone of a handed-out transfer = %v, want ErrConflict", err)
		}
	})

	t.Run("InstanceProgress", func(t *testing.T) {
		q := newQueue(t, long)
		ctx := t.Context()
		tr := newTransfer("x", gateway.PriorityNormal)
		mustEnqueue(t, q, tr)
		now := time.Now().UTC().Truncate(time.Millisecond)
		if err := q.SetInstances(ctx, tr.ID, []gateway.InstanceProgress{
			{SOPInstanceUID: "1.3", State: gateway.InstanceRefused, Reason: "no", ReasonCode: 0xA900, At: now},
			{SOPInstanceUID: "1.1", State: gateway.InstanceSent, Bytes: 10, At: now},
		}); err != nil {
			t.Fatal(err)
		}
		if err := q.SetInstances(ctx, tr.ID, []gateway.InstanceProgress{{SOPInstanceUID: "1.2", State: gateway.InstanceSent, Bytes: 5, At: now}}); err != nil {
			t.Fatal(err)
		}
		got, err := q.Instances(ctx, tr.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := sops(got), []string{"1.1", "1.2", "1.3"}; !slices.Equal(got, want) {
			t.Fatalf("Instances = %v, want %v", got, want)
		}
		if got[2].State != gateway.InstanceRefused || got[2].ReasonCode != 0xA900 || got[2].Reason != "no" || got[0].Bytes != 10 {
			t.Fatalf("Instances = %+v", got)
		}
		if err := q.ResetInstances(ctx, tr.ID, gateway.InstanceRefused); err != nil {
			t.Fatal(err)
		}
		got, _ = q.Instances(ctx, tr.ID)
		if got, want := sops(got), []string{"1.1", "1.2"}; !slices.Equal(got, want) {
			t.Fatalf("Instances after reset = %v, want %v", got, want)
		}
	})

	t.Run("RecordIncoming", func(t *testing.T) {
		q := newQueue(t, long)
		ctx := t.Context()
		in := gateway.IncomingInstance{TransferID: "tr-remote", Source: "hampshire", Destination: "surrey", StudyUID: "1.2.3", OK: true, Bytes: 100, Total: 3, At: time.Now()}
		for _, sop := range []string{"1.2.3.1", "1.2.3.2", "1.2.3.1"} {
			in.SOPInstanceUID = sop
			if _, err := q.RecordIncoming(ctx, []gateway.IncomingInstance{in}); err != nil {
				t.Fatal(err)
			}
		}
		bad := in
		bad.SOPInstanceUID, bad.OK, bad.Reason = "1.2.3.3", false, "0xA900 SOP class mismatch"
		got, err := q.RecordIncoming(ctx, []gateway.IncomingInstance{bad})
		if err != nil {
			t.Fatal(err)
		}
		if got.InstancesSent != 2 || got.InstancesFailed != 1 || got.BytesSent != 200 || got.State != gateway.StateRunning || got.Direction != gateway.DirectionIncoming || got.Source != "hampshire" {
			t.Fatalf("incoming = %+v", got)
		}
		bad.OK, bad.Reason = true, ""
		got, _ = q.RecordIncoming(ctx, []gateway.IncomingInstance{bad})
		if got.InstancesSent != 3 || got.InstancesFailed != 0 || got.State != gateway.StateCompleted {
			t.Fatalf("incoming after resend = %+v", got)
		}
		// A later resend of a stored instance that fails (refused for lack
		// of resources) leaves it received and the transfer completed; the
		// next successful one does not count its bytes again.
		again := in
		again.SOPInstanceUID, again.OK, again.Reason = "1.2.3.2", false, "0xA700 out of resources"
		got, _ = q.RecordIncoming(ctx, []gateway.IncomingInstance{again})
		if got.InstancesSent != 3 || got.InstancesFailed != 0 || got.State != gateway.StateCompleted {
			t.Fatalf("incoming after a failed resend of a stored instance = %+v", got)
		}
		again.OK, again.Reason = true, ""
		got, _ = q.RecordIncoming(ctx, []gateway.IncomingInstance{again})
		if got.InstancesSent != 3 || got.BytesSent != 300 || got.State != gateway.StateCompleted {
			t.Fatalf("incoming after a good resend = %+v, want 3 instances and 300 bytes", got)
		}
		list, err := q.List(ctx, gateway.TransferFilter{Direction: gateway.DirectionIncoming})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := ids(list), []string{"tr-remote"}; !slices.Equal(got, want) {
			t.Fatalf("List(incoming) = %v, want %v", got, want)
		}
		if out, _ := q.List(ctx, gateway.TransferFilter{}); len(out) != 0 {
			t.Fatalf("List(outgoing) shows incoming %v", ids(out))
		}
	})

	t.Run("RecordIncomingBatch", func(t *testing.T) {
		q := newQueue(t, long)
		ctx := t.Context()
		in := func(sop string, ok bool) gateway.IncomingInstance {
			x := gateway.IncomingInstance{TransferID: "tr-batch", Source: "hampshire", Destination: "surrey", StudyUID: "1.2.3",
				SOPInstanceUID: sop, OK: ok, Bytes: 10, Total: 4, At: time.Now()}
			if !ok {
				x.Reason = "refused"
			}
			return x
		}
		// One request: two stored, one refused, then the refused one again
		// stored (a repeat within the batch counts once).
		got, err := q.RecordIncoming(ctx, []gateway.IncomingInstance{in("1.1", true), in("1.2", true), in("1.3", false), in("1.3", true)})
		if err != nil {
			t.Fatal(err)
		}
		if got.InstancesSent != 3 || got.InstancesFailed != 0 || got.BytesSent != 30 || got.State != gateway.StateRunning {
			t.Fatalf("incoming after one batch = %+v", got)
		}
		got, err = q.RecordIncoming(ctx, []gateway.IncomingInstance{in("1.2", true), in("1.4", true)})
		if err != nil {
			t.Fatal(err)
		}
		if got.InstancesSent != 4 || got.BytesSent != 40 || got.State != gateway.StateCompleted {
			t.Fatalf("incoming after the second batch = %+v", got)
		}
		progress, err := q.IncomingInstances(ctx, "hampshire", "tr-batch")
		if err != nil {
			t.Fatal(err)
		}
		if got, want := sops(progress), []string{"1.1", "1.2", "1.3", "1.4"}; !slices.Equal(got, want) {
			t.Fatalf("IncomingInstances = %v, want %v", got, want)
		}
		other := in("1.5", true)
		other.TransferID = "tr-other"
		for name, batch := range map[string][]gateway.IncomingInstance{"empty": nil, "mixed": {in("1.5", true), other}} {
			if _, err := q.RecordIncoming(ctx, batch); !errors.Is(err, gateway.ErrInvalid) {
				t.Errorf("RecordIncoming(%s batch) = %v, want ErrInvalid", name, err)
			}
		}
	})

	t.Run("Depth", func(t *testing.T) {
		q := newQueue(t, long)
		mustEnqueue(t, q, newTransfer("a", gateway.PriorityNormal))
		mustEnqueue(t, q, newTransfer("b", gateway.PriorityNormal))
		mustEnqueue(t, q, newTransfer("c", gateway.PriorityUrgent))
		claim(t, q, "w", time.Second)
		d, err := q.Depth(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if d[gateway.PriorityNormal] != 2 || d[gateway.PriorityUrgent] != 0 {
			t.Fatalf("Depth = %v, want normal 2, urgent 0", d)
		}
	})
}

// cancelledWhileRunning enqueues a transfer, claims it as consumer "a",
// saves it running and has an admin cancel it, and returns the transfer,
// the lease still held and the record the worker saved.
func cancelledWhileRunning(t *testing.T, q gateway.Queue) (*gateway.Transfer, *gateway.Lease, gateway.Transfer) {
	t.Helper()
	tr := newTransfer("x", gateway.PriorityNormal)
	mustEnqueue(t, q, tr)
	l := claim(t, q, "a", time.Second)
	run := *tr
	run.State = gateway.StateRunning
	if err := q.Save(t.Context(), l, &run); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Cancel(t.Context(), tr.ID); err != nil {
		t.Fatal(err)
	}
	return tr, l, run
}

func newTransfer(name string, p gateway.Priority) *gateway.Transfer {
	now := time.Now().UTC()
	return &gateway.Transfer{
		ID: "tr-test-" + name, StudyUID: "1.2.3.4", Destination: "surrey", Priority: p,
		State: gateway.StateQueued, Direction: gateway.DirectionOutgoing, Source: "hampshire",
		CreatedAt: now, UpdatedAt: now,
	}
}

func mustEnqueue(t *testing.T, q gateway.TransferEnqueuer, tr *gateway.Transfer) {
	t.Helper()
	if _, _, err := q.Enqueue(t.Context(), tr, time.Time{}); err != nil {
		t.Fatal(err)
	}
}

func claim(t *testing.T, q gateway.TransferClaimer, consumer string, wait time.Duration) *gateway.Lease {
	t.Helper()
	l, err := q.Claim(t.Context(), consumer, wait)
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	return l
}

// ListedIDs lists q's transfers that pass f and returns their IDs, in
// List's order; an error fails the test.
func ListedIDs(t *testing.T, q gateway.TransferLister, f gateway.TransferFilter) []string {
	t.Helper()
	out, err := q.List(t.Context(), f)
	if err != nil {
		t.Fatal(err)
	}
	return ids(out)
}

func ids(ts []*gateway.Transfer) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.ID
	}
	return out
}

func sops(ps []gateway.InstanceProgress) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.SOPInstanceUID
	}
	return out
}

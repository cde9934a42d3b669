package storagetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// UsageIndexUnderTest is an index that reports study usage: what
// TestUsageIndex drives.
type UsageIndexUnderTest interface {
	gateway.Index
	gateway.UsageIndex
}

// usageRecord is a record of study with the given size, modality and
// stored time.
func usageRecord(study string, i int, size int64, modality string, at time.Time) *gateway.InstanceRecord {
	rec := Record(study, study+".1", fmt.Sprintf("%s.1.%d", study, i), map[string]any{dicomcodec.TagModality: modality})
	rec.Size, rec.StoredAt = size, at
	return rec
}

// allByReceived pages through StudiesByReceived with page size n.
func allByReceived(t *testing.T, x gateway.UsageIndex, n int) []gateway.StudyUsage {
	t.Helper()
	var out []gateway.StudyUsage
	var cur gateway.UsageCursor
	for range 1000 {
		page, err := x.StudiesByReceived(t.Context(), cur, n)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > n {
			t.Fatalf("page of %d, limit %d", len(page), n)
		}
		if len(page) == 0 {
			return out
		}
		out = append(out, page...)
		last := page[len(page)-1]
		cur = gateway.UsageCursor{ReceivedAt: last.ReceivedAt, StudyInstanceUID: last.StudyInstanceUID}
	}
	t.Fatal("StudiesByReceived did not end")
	return nil
}

func usageUIDs(us []gateway.StudyUsage) []string {
	out := make([]string, len(us))
	for i, u := range us {
		out[i] = u.StudyInstanceUID
	}
	return out
}

// TestUsageIndex is the conformance suite of gateway.UsageIndex, on an
// index written through gateway.Index. newIndex returns an empty index.
func TestUsageIndex(t *testing.T, newIndex func(t *testing.T) UsageIndexUnderTest) {
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	t.Run("EmptyIndex", func(t *testing.T) {
		x := newIndex(t)
		tot, err := x.UsageTotals(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if tot != (gateway.UsageTotals{}) {
			t.Fatalf("UsageTotals=%+v, want zero", tot)
		}
		if got := allByReceived(t, x, 10); len(got) != 0 {
			t.Fatalf("StudiesByReceived=%v, want none", usageUIDs(got))
		}
	})
	t.Run("OldestFirstWithBytesAndModalities", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		// Stored out of order; 1.9.2 gets a CT and an MR instance.
		mustPut(t, x, usageRecord("1.9.3", 1, 300, "CT", base.Add(3*time.Hour)))
		mustPut(t, x, usageRecord("1.9.1", 1, 100, "CT", base.Add(1*time.Hour)))
		mustPut(t, x, usageRecord("1.9.2", 1, 200, "CT", base.Add(2*time.Hour)))
		mustPut(t, x, usageRecord("1.9.2", 2, 50, "MR", base.Add(2*time.Hour+time.Minute)))
		got := allByReceived(t, x, 10)
		if want := []string{"1.9.1", "1.9.2", "1.9.3"}; !slices.Equal(usageUIDs(got), want) {
			t.Fatalf("order=%v, want %v", usageUIDs(got), want)
		}
		s2 := got[1]
		if s2.Bytes != 250 || s2.Instances != 2 || !s2.ReceivedAt.Equal(base.Add(2*time.Hour+time.Minute)) ||
			!slices.Equal(s2.Modalities, []string{"CT", "MR"}) {
			t.Fatalf("study 1.9.2 = %+v, want 250 bytes, 2 instances, received at its newest instance, CT and MR", s2)
		}
		tot, err := x.UsageTotals(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := (gateway.UsageTotals{Bytes: 650, Studies: 3}); tot != want {
			t.Fatalf("UsageTotals=%+v, want %+v", tot, want)
		}
	})
	t.Run("NewInstanceMovesStudyLater", func(t *testing.T) {
		x := newIndex(t)
		mustPut(t, x, usageRecord("1.9.1", 1, 10, "CT", base))
		mustPut(t, x, usageRecord("1.9.2", 1, 10, "CT", base.Add(time.Hour)))
		mustPut(t, x, usageRecord("1.9.1", 2, 10, "CT", base.Add(2*time.Hour)))
		if got, want := usageUIDs(allByReceived(t, x, 10)), []string{"1.9.2", "1.9.1"}; !slices.Equal(got, want) {
			t.Fatalf("order=%v, want %v", got, want)
		}
	})
	t.Run("DeleteFreesBytesKeepsReceived", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		mustPut(t, x, usageRecord("1.9.1", 1, 100, "CT", base))
		newest := usageRecord("1.9.1", 2, 40, "CT", base.Add(time.Hour))
		mustPut(t, x, newest)
		mustPut(t, x, usageRecord("1.9.2", 1, 7, "CT", base))
		if err := x.DeleteInstance(ctx, newest.SOPInstanceUID); err != nil {
			t.Fatal(err)
		}
		got := allByReceived(t, x, 10)
		if want := []string{"1.9.2", "1.9.1"}; !slices.Equal(usageUIDs(got), want) {
			t.Fatalf("order=%v, want %v", usageUIDs(got), want)
		}
		if got[1].Bytes != 100 || got[1].Instances != 1 || !got[1].ReceivedAt.Equal(base.Add(time.Hour)) {
			t.Fatalf("study 1.9.1 after delete = %+v, want 100 bytes, 1 instance, still received at its newest instance's time", got[1])
		}
		for _, sop := range []string{"1.9.1.1.1", "1.9.2.1.1"} {
			if err := x.DeleteInstance(ctx, sop); err != nil {
				t.Fatal(err)
			}
		}
		tot, err := x.UsageTotals(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if tot != (gateway.UsageTotals{}) {
			t.Fatalf("UsageTotals after deleting everything = %+v, want zero", tot)
		}
		if got := allByReceived(t, x, 10); len(got) != 0 {
			t.Fatalf("StudiesByReceived after deleting everything = %v", usageUIDs(got))
		}
	})
	t.Run("ReplaceCountsNewSize", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		rec := usageRecord("1.9.1", 1, 100, "CT", base)
		mustPut(t, x, rec)
		repl := usageRecord("1.9.1", 1, 250, "CT", base.Add(time.Minute))
		repl.SHA256 = "bb"
		if err := x.ReplaceInstance(ctx, repl); err != nil {
			t.Fatal(err)
		}
		tot, err := x.UsageTotals(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := (gateway.UsageTotals{Bytes: 250, Studies: 1}); tot != want {
			t.Fatalf("UsageTotals=%+v, want %+v", tot, want)
		}
	})
	t.Run("ReplaceKeepsReceived", func(t *testing.T) {
		// A study received at two times keeps the later after the newer
		// instance is deleted, also when its one instance left is then
		// replaced by its own record (a restatement: gateway
		// identity_restate.go): a replacement is no receipt.
		x, ctx := newIndex(t), t.Context()
		first := usageRecord("1.9.1", 1, 100, "CT", base)
		mustPut(t, x, first)
		newest := usageRecord("1.9.1", 2, 40, "CT", base.Add(time.Hour))
		newest.Metadata[dicomcodec.TagPatientID] = dicomcodec.Attribute{VR: "LO", Value: []any{"P2"}} // the study shows it until restated
		mustPut(t, x, newest)
		if err := x.DeleteInstance(ctx, newest.SOPInstanceUID); err != nil {
			t.Fatal(err)
		}
		if err := x.ReplaceInstance(ctx, first); err != nil {
			t.Fatal(err)
		}
		got := allByReceived(t, x, 10)
		if len(got) != 1 || got[0].Bytes != 100 || got[0].Instances != 1 || !got[0].ReceivedAt.Equal(base.Add(time.Hour)) {
			t.Fatalf("StudiesByReceived=%+v, want 1.9.1 with 100 bytes, 1 instance, received at %v", got, base.Add(time.Hour))
		}
		// The next receipt still moves it on.
		mustPut(t, x, usageRecord("1.9.1", 3, 1, "CT", base.Add(2*time.Hour)))
		if got := allByReceived(t, x, 10); len(got) != 1 || !got[0].ReceivedAt.Equal(base.Add(2*time.Hour)) {
			t.Fatalf("after a new instance: %+v, want received at %v", got, base.Add(2*time.Hour))
		}
	})
	t.Run("ReplaceIntoAnotherStudyMovesUsage", func(t *testing.T) {
		// The instance leaves its first study (gone: it had no other) for
		// another; on a sharded index the two studies may be in two shards.
		x, ctx := newIndex(t), t.Context()
		mustPut(t, x, usageRecord("1.9.2", 1, 5, "MR", base.Add(time.Hour)))
		rec := usageRecord("1.9.1", 1, 100, "CT", base)
		mustPut(t, x, rec)
		moved := Record("1.9.2", "1.9.2.1", rec.SOPInstanceUID, map[string]any{dicomcodec.TagModality: "CT"})
		moved.Size, moved.StoredAt = 100, base.Add(2*time.Hour)
		if err := x.ReplaceInstance(ctx, moved); err != nil {
			t.Fatal(err)
		}
		got := allByReceived(t, x, 10)
		if len(got) != 1 || got[0].StudyInstanceUID != "1.9.2" || got[0].Bytes != 105 || got[0].Instances != 2 ||
			!got[0].ReceivedAt.Equal(base.Add(2*time.Hour)) {
			t.Fatalf("StudiesByReceived=%+v, want only 1.9.2 with 105 bytes, 2 instances, received at the moved instance's time", got)
		}
		tot, err := x.UsageTotals(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := (gateway.UsageTotals{Bytes: 105, Studies: 1}); tot != want {
			t.Fatalf("UsageTotals=%+v, want %+v", tot, want)
		}
	})
	t.Run("PagesResumeWithinOneMillisecond", func(t *testing.T) {
		x := newIndex(t)
		var want []string
		for i := range 7 {
			study := fmt.Sprintf("1.9.%d", i+1)
			mustPut(t, x, usageRecord(study, 1, 1, "CT", base)) // all in one millisecond: UID order
			want = append(want, study)
		}
		mustPut(t, x, usageRecord("1.8", 1, 1, "CT", base.Add(time.Second)))
		want = append(want, "1.8")
		for _, n := range []int{1, 2, 3, 100} {
			if got := usageUIDs(allByReceived(t, x, n)); !slices.Equal(got, want) {
				t.Fatalf("pages of %d: %v, want %v", n, got, want)
			}
		}
	})
	t.Run("ConcurrentWritesKeepTotals", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		var wg sync.WaitGroup
		errs := make(chan error, 40)
		for i := range 40 {
			wg.Go(func() {
				_, _, err := x.PutInstance(ctx, usageRecord(fmt.Sprintf("1.9.%d", i%4+1), i, 10, "CT", base))
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		tot, err := x.UsageTotals(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := (gateway.UsageTotals{Bytes: 400, Studies: 4}); tot != want {
			t.Fatalf("UsageTotals=%+v, want %+v", tot, want)
		}
	})
}

// TestHoldStore is the conformance suite of gateway.HoldStore. newStore
// returns an empty store.
func TestHoldStore(t *testing.T, newStore func(t *testing.T) gateway.HoldStore) {
	at := time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)
	t.Run("GetAndDeleteUnknownAreNotFound", func(t *testing.T) {
		s := newStore(t)
		if _, err := s.GetHold(t.Context(), "1.2.3"); !errors.Is(err, gateway.ErrNotFound) {
			t.Fatalf("GetHold=%v, want ErrNotFound", err)
		}
		if err := s.DeleteHold(t.Context(), "1.2.3"); !errors.Is(err, gateway.ErrNotFound) {
			t.Fatalf("DeleteHold=%v, want ErrNotFound", err)
		}
		l, err := s.ListHolds(t.Context())
		if err != nil || len(l) != 0 {
			t.Fatalf("ListHolds=%v, %v; want none", l, err)
		}
	})
	t.Run("PutGetListDelete", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		for _, h := range []gateway.Hold{
			{StudyInstanceUID: "1.2.5", Reason: "litigation 42", SetBy: "alice", SetAt: at},
			{StudyInstanceUID: "1.2.3", Reason: "coroner", SetBy: "bob", SetAt: at.Add(time.Hour)},
		} {
			if err := s.PutHold(ctx, h); err != nil {
				t.Fatal(err)
			}
		}
		h, err := s.GetHold(ctx, "1.2.5")
		if err != nil {
			t.Fatal(err)
		}
		if h.Reason != "litigation 42" || h.SetBy != "alice" || !h.SetAt.Equal(at) {
			t.Fatalf("GetHold=%+v", h)
		}
		l, err := s.ListHolds(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(l) != 2 || l[0].StudyInstanceUID != "1.2.3" || l[1].StudyInstanceUID != "1.2.5" {
			t.Fatalf("ListHolds=%+v, want 1.2.3 then 1.2.5", l)
		}
		if err := s.DeleteHold(ctx, "1.2.5"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetHold(ctx, "1.2.5"); !errors.Is(err, gateway.ErrNotFound) {
			t.Fatalf("GetHold after delete = %v, want ErrNotFound", err)
		}
	})
	t.Run("PutReplaces", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		if err := s.PutHold(ctx, gateway.Hold{StudyInstanceUID: "1.2.3", Reason: "first", SetBy: "a", SetAt: at}); err != nil {
			t.Fatal(err)
		}
		if err := s.PutHold(ctx, gateway.Hold{StudyInstanceUID: "1.2.3", Reason: "second", SetBy: "b", SetAt: at}); err != nil {
			t.Fatal(err)
		}
		h, err := s.GetHold(ctx, "1.2.3")
		if err != nil {
			t.Fatal(err)
		}
		if h.Reason != "second" || h.SetBy != "b" {
			t.Fatalf("GetHold=%+v, want the second hold", h)
		}
		if l, err := s.ListHolds(ctx); err != nil || len(l) != 1 {
			t.Fatalf("ListHolds=%v, %v; want one", l, err)
		}
	})
}

package storagetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
)

// AuditGatewayName is the gateway name that every AuditStore under test must
// be created with; the suite checks that it lands in every record.
const AuditGatewayName = "suite-gateway"

// AuditStore is an audit log under test plus what the backend's test side
// adds so that the suite can act as a second replica and as an attacker with
// write access to the storage.
type AuditStore interface {
	gateway.AuditLog
	// Replica returns a second AuditLog over the same stored log, as another
	// gateway replica would open it.
	Replica(tb testing.TB) gateway.AuditLog
	// RawRecord returns the stored bytes of the record at seq (nil if none).
	RawRecord(t *testing.T, seq int64) []byte
	// SetRawRecord writes raw as the record at seq, bypassing the log.
	SetRawRecord(t *testing.T, seq int64, raw []byte)
	// DeleteRawRecord removes the record at seq, bypassing the log.
	DeleteRawRecord(t *testing.T, seq int64)
	// Break makes the backend unreachable (closes its connection or file).
	Break(t *testing.T)
	// SetKeys keys the chain (HMAC, gateway.AuditKeys); called before use.
	SetKeys(keys *gateway.AuditKeys)
}

// NewAuditStoreFunc returns an empty audit log named AuditGatewayName; it is
// called once per subtest and cleans up after itself through t.Cleanup.
type NewAuditStoreFunc func(t *testing.T) AuditStore

// auditEvent is a test event; patient IDs and UIDs are made up.
func auditEvent(actor, action, study, patient string) *gateway.AuditEvent {
	ev := &gateway.AuditEvent{
		Actor:   gateway.Principal{Name: actor, Roles: []gateway.Role{gateway.RoleRead}, Address: "127.0.0.1", Method: "token"},
		Action:  action,
		Outcome: gateway.OutcomeSuccess,
		Detail:  map[string]any{"route": "/dicomweb/studies", "count": 3, "big": int64(1) << 60, "nested": map[string]any{"b": "x", "a": []any{1.5, "<&>"}}},
	}
	if study != "" {
		ev.StudyUIDs = []string{study}
	}
	if patient != "" {
		ev.PatientIDs = []string{patient}
	}
	return ev
}

func mustRecord(t *testing.T, log gateway.Auditor, ev *gateway.AuditEvent) *gateway.AuditEvent {
	t.Helper()
	if err := log.Record(t.Context(), ev); err != nil {
		t.Fatalf("Record(%s): %v", ev.Action, err)
	}
	return ev
}

func mustVerify(t *testing.T, log gateway.AuditLog) gateway.VerifyResult {
	t.Helper()
	res, err := log.Verify(t.Context())
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return res
}

// queryIDs returns the IDs of every record matching f, following Next.
func queryIDs(t *testing.T, log gateway.AuditLog, f gateway.AuditFilter) []string {
	t.Helper()
	var ids []string
	for range 1000 {
		page, err := log.Query(t.Context(), f)
		if err != nil {
			t.Fatalf("Query(%+v): %v", f, err)
		}
		for _, ev := range page.Events {
			ids = append(ids, ev.ID)
		}
		if page.Next == "" {
			return ids
		}
		f.Cursor = page.Next
	}
	t.Fatal("Query never stopped returning Next")
	return nil
}

// TestAuditLog is the conformance suite of gateway.AuditLog: the chain
// fields, queries and paging, linear appends from concurrent replicas, and
// detection of every kind of tampering with the stored records.
func TestAuditLog(t *testing.T, newLog NewAuditStoreFunc) {
	t.Run("RecordSetsChainFields", func(t *testing.T) {
		log := newLog(t)
		before := time.Now().Add(-time.Second)
		given := time.Date(2026, 3, 1, 9, 30, 0, 123456789, time.FixedZone("BST", 3600))
		evs := []*gateway.AuditEvent{
			auditEvent("pacs-1", gateway.ActionStore, "1.2.3", "PAT-1"),
			auditEvent("viewer", gateway.ActionQuery, "", ""),
			auditEvent("viewer", gateway.ActionRetrieve, "1.2.3", "PAT-1"),
		}
		evs[1].Time = given
		prev := ""
		for i, ev := range evs {
			mustRecord(t, log, ev)
			seq := int64(i + 1)
			if got, want := ev.Seq, seq; got != want {
				t.Errorf("Seq=%v, want %v", got, want)
			}
			if got, want := ev.ID, gateway.AuditRecordID(seq); got != want {
				t.Errorf("ID=%v, want %v", got, want)
			}
			if got, want := ev.Gateway, AuditGatewayName; got != want {
				t.Errorf("Gateway=%v, want %v", got, want)
			}
			if got, want := ev.PrevHash, prev; got != want {
				t.Errorf("record %d: PrevHash=%v, want %v", seq, got, want)
			}
			if h, err := gateway.AuditHash(ev); err != nil || h != ev.Hash || len(h) != 64 {
				t.Errorf("record %d: Hash=%q, AuditHash=%q, %v", seq, ev.Hash, h, err)
			}
			if ev.Time.Location() != time.UTC {
				t.Errorf("record %d: Time %v is not UTC", seq, ev.Time)
			}
			prev = ev.Hash
		}
		if evs[0].Time.Before(before) || evs[0].Time.After(time.Now()) {
			t.Errorf("Time=%v, want now", evs[0].Time)
		}
		if got, want := evs[1].Time, given.UTC(); !got.Equal(want) {
			t.Errorf("given Time=%v, want %v kept", got, want)
		}
		page, err := log.Query(t.Context(), gateway.AuditFilter{})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := len(page.Events), len(evs); got != want {
			t.Fatalf("Query returned %d events, want %d", got, want)
		}
		for i, got := range page.Events {
			gotJSON, _ := json.Marshal(got)
			wantJSON, _ := json.Marshal(evs[i])
			if string(gotJSON) != string(wantJSON) {
				t.Errorf("stored record %d:\n got %s\nwant %s", i+1, gotJSON, wantJSON)
			}
		}
		if res := mustVerify(t, log); !res.OK || res.Records != 3 {
			t.Errorf("Verify = %+v, want ok with 3 records", res)
		}
	})

	t.Run("RecordRejectsIncompleteEvents", func(t *testing.T) {
		log := newLog(t)
		for _, ev := range []*gateway.AuditEvent{
			{Outcome: gateway.OutcomeSuccess},
			{Action: gateway.ActionQuery},
			{Action: gateway.ActionQuery, Outcome: gateway.OutcomeSuccess, Detail: map[string]any{"f": func() {}}},
		} {
			if err := log.Record(t.Context(), ev); !errors.Is(err, gateway.ErrInvalid) {
				t.Errorf("Record(%+v) = %v, want ErrInvalid", ev, err)
			}
		}
		mustRecord(t, log, auditEvent("a", gateway.ActionQuery, "", ""))
		if res := mustVerify(t, log); !res.OK || res.Records != 1 {
			t.Errorf("Verify = %+v, want ok with 1 record", res)
		}
	})

	t.Run("RecordWithCancelledContextFails", func(t *testing.T) {
		log := newLog(t)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := log.Record(ctx, auditEvent("a", gateway.ActionQuery, "", "")); err == nil {
			t.Fatal("Record with a cancelled context = nil, want an error")
		}
	})

	t.Run("VerifyEmpty", func(t *testing.T) {
		if res := mustVerify(t, newLog(t)); !res.OK || res.Records != 0 {
			t.Errorf("Verify = %+v, want ok with 0 records", res)
		}
	})

	t.Run("QueryFilters", func(t *testing.T) {
		log := newLog(t)
		base := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
		type rec struct{ actor, action, study, patient string }
		recs := []rec{
			{"pacs-1", gateway.ActionStore, "1.1", "PAT-A"},
			{"viewer", gateway.ActionQuery, "", ""},
			{"viewer", gateway.ActionRetrieve, "1.1", "PAT-A"},
			{"pacs-1", gateway.ActionStore, "2.2", "PAT-B"},
			{"admin", gateway.ActionDelete, "2.2", "PAT-B"},
			{"viewer", gateway.ActionRetrieve, "2.2", "PAT-B"},
		}
		ids := make([]string, len(recs))
		for i, r := range recs {
			ev := auditEvent(r.actor, r.action, r.study, r.patient)
			ev.Time = base.Add(time.Duration(i) * 10 * time.Minute)
			ids[i] = mustRecord(t, log, ev).ID
		}
		// One event carries two studies and two patients.
		multi := auditEvent("viewer", gateway.ActionQuery, "", "")
		multi.StudyUIDs, multi.PatientIDs = []string{"1.1", "3.3"}, []string{"PAT-A", "PAT-C"}
		multi.Time = base.Add(60 * time.Minute)
		ids = append(ids, mustRecord(t, log, multi).ID)

		for _, tt := range []struct {
			name string
			f    gateway.AuditFilter
			want []int
		}{
			{"all", gateway.AuditFilter{}, []int{0, 1, 2, 3, 4, 5, 6}},
			{"study", gateway.AuditFilter{StudyUID: "1.1"}, []int{0, 2, 6}},
			{"study second of two", gateway.AuditFilter{StudyUID: "3.3"}, []int{6}},
			{"patient", gateway.AuditFilter{PatientID: "PAT-B"}, []int{3, 4, 5}},
			{"actor", gateway.AuditFilter{Actor: "viewer"}, []int{1, 2, 5, 6}},
			{"action", gateway.AuditFilter{Action: gateway.ActionStore}, []int{0, 3}},
			{"actor and action", gateway.AuditFilter{Actor: "viewer", Action: gateway.ActionRetrieve}, []int{2, 5}},
			{"patient and actor", gateway.AuditFilter{PatientID: "PAT-A", Actor: "viewer"}, []int{2, 6}},
			{"since", gateway.AuditFilter{Since: base.Add(40 * time.Minute)}, []int{4, 5, 6}},
			{"until", gateway.AuditFilter{Until: base.Add(20 * time.Minute)}, []int{0, 1}},
			{"since and until", gateway.AuditFilter{Since: base.Add(10 * time.Minute), Until: base.Add(30 * time.Minute)}, []int{1, 2}},
			{"study and since", gateway.AuditFilter{StudyUID: "2.2", Since: base.Add(45 * time.Minute)}, []int{5}},
			{"no match", gateway.AuditFilter{PatientID: "PAT-Z"}, nil},
			{"future", gateway.AuditFilter{Since: time.Now().Add(time.Hour)}, nil},
		} {
			var want []string
			for _, i := range tt.want {
				want = append(want, ids[i])
			}
			if got := queryIDs(t, log, tt.f); !slices.Equal(got, want) {
				t.Errorf("%s: got %v, want %v", tt.name, got, want)
			}
		}
	})

	t.Run("QueryPages", func(t *testing.T) {
		log := newLog(t)
		var all, stores []string
		for i := range 25 {
			action := gateway.ActionQuery
			if i%3 == 0 {
				action = gateway.ActionStore
			}
			ev := mustRecord(t, log, auditEvent("viewer", action, "", ""))
			all = append(all, ev.ID)
			if action == gateway.ActionStore {
				stores = append(stores, ev.ID)
			}
		}
		var got []string
		var sizes []int
		f := gateway.AuditFilter{Limit: 10}
		for {
			page, err := log.Query(t.Context(), f)
			if err != nil {
				t.Fatal(err)
			}
			sizes = append(sizes, len(page.Events))
			for _, ev := range page.Events {
				got = append(got, ev.ID)
			}
			if page.Next == "" || len(sizes) > 10 {
				break
			}
			f.Cursor = page.Next
		}
		if !slices.Equal(got, all) {
			t.Errorf("paged IDs %v, want %v", got, all)
		}
		if want := []int{10, 10, 5}; !slices.Equal(sizes, want) {
			t.Errorf("page sizes %v, want %v", sizes, want)
		}
		if got := queryIDs(t, log, gateway.AuditFilter{Action: gateway.ActionStore, Limit: 2}); !slices.Equal(got, stores) {
			t.Errorf("paged filtered IDs %v, want %v", got, stores)
		}
		page, err := log.Query(t.Context(), gateway.AuditFilter{Limit: gateway.MaxAuditLimit + 5})
		if err != nil || len(page.Events) != 25 {
			t.Errorf("Query with a limit above the maximum: %d events, %v", len(page.Events), err)
		}
	})

	t.Run("QueryRejectsBadInput", func(t *testing.T) {
		log := newLog(t)
		mustRecord(t, log, auditEvent("a", gateway.ActionQuery, "", ""))
		for _, f := range []gateway.AuditFilter{{Cursor: "not-a-cursor"}, {Cursor: "YTE6LTE"}, {Limit: -1}} {
			if _, err := log.Query(t.Context(), f); !errors.Is(err, gateway.ErrInvalid) {
				t.Errorf("Query(%+v) = %v, want ErrInvalid", f, err)
			}
		}
	})

	t.Run("ConcurrentReplicasKeepOneChain", func(t *testing.T) {
		log := newLog(t)
		logs := []gateway.AuditLog{log, log.Replica(t), log.Replica(t)}
		const writers, each = 8, 20
		var wg sync.WaitGroup
		errs := make(chan error, len(logs)*writers*each)
		for r, l := range logs {
			for w := range writers {
				wg.Go(func() {
					for i := range each {
						ev := auditEvent(fmt.Sprintf("r%d", r), gateway.ActionQuery, "", "")
						ev.Detail = map[string]any{"n": fmt.Sprintf("%d/%d/%d", r, w, i)}
						if err := l.Record(t.Context(), ev); err != nil {
							errs <- err
						}
					}
				})
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("concurrent Record: %v", err)
		}
		total := int64(len(logs) * writers * each)
		if res := mustVerify(t, log); !res.OK || res.Records != total {
			t.Fatalf("Verify = %+v, want ok with %d records", res, total)
		}
		seen := map[string]bool{}
		f := gateway.AuditFilter{Limit: gateway.MaxAuditLimit}
		var seq int64
		for {
			page, err := log.Query(t.Context(), f)
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range page.Events {
				seq++
				if ev.Seq != seq {
					t.Fatalf("record %d has seq %d", seq, ev.Seq)
				}
				n, _ := ev.Detail["n"].(string)
				if seen[n] {
					t.Fatalf("event %s stored twice", n)
				}
				seen[n] = true
			}
			if page.Next == "" {
				break
			}
			f.Cursor = page.Next
		}
		if got, want := int64(len(seen)), total; got != want {
			t.Errorf("%d distinct events stored, want %d", got, want)
		}
	})

	t.Run("TamperingIsDetected", func(t *testing.T) {
		edit := func(t *testing.T, s AuditStore, seq int64, fn func(ev *gateway.AuditEvent)) {
			ev, err := gateway.DecodeAuditEvent(s.RawRecord(t, seq))
			if err != nil {
				t.Fatal(err)
			}
			fn(ev)
			raw, err := json.Marshal(ev)
			if err != nil {
				t.Fatal(err)
			}
			s.SetRawRecord(t, seq, raw)
		}
		rehash := func(ev *gateway.AuditEvent) {
			h, err := gateway.AuditHash(ev)
			if err != nil {
				panic(err)
			}
			ev.Hash = h
		}
		for _, tt := range []struct {
			name   string
			tamper func(t *testing.T, s AuditStore)
			broken int64
		}{
			{"changed outcome", func(t *testing.T, s AuditStore) {
				edit(t, s, 3, func(ev *gateway.AuditEvent) { ev.Outcome = gateway.OutcomeFailure })
			}, 3},
			{"changed patient", func(t *testing.T, s AuditStore) {
				edit(t, s, 2, func(ev *gateway.AuditEvent) { ev.PatientIDs = []string{"PAT-OTHER"} })
			}, 2},
			{"changed detail number", func(t *testing.T, s AuditStore) {
				edit(t, s, 4, func(ev *gateway.AuditEvent) { ev.Detail["count"] = 4 })
			}, 4},
			{"changed first record", func(t *testing.T, s AuditStore) {
				edit(t, s, 1, func(ev *gateway.AuditEvent) { ev.Actor.Name = "someone-else" })
			}, 1},
			{"changed and rehashed", func(t *testing.T, s AuditStore) {
				edit(t, s, 3, func(ev *gateway.AuditEvent) { ev.Actor.Name = "someone-else"; rehash(ev) })
			}, 4},
			{"last record changed and rehashed", func(t *testing.T, s AuditStore) {
				edit(t, s, 5, func(ev *gateway.AuditEvent) { ev.Action = gateway.ActionQuery; rehash(ev) })
			}, 5},
			{"deleted record", func(t *testing.T, s AuditStore) { s.DeleteRawRecord(t, 3) }, 3},
			{"deleted first record", func(t *testing.T, s AuditStore) { s.DeleteRawRecord(t, 1) }, 1},
			{"deleted last record", func(t *testing.T, s AuditStore) { s.DeleteRawRecord(t, 5) }, 5},
			{"swapped records", func(t *testing.T, s AuditStore) {
				a, b := s.RawRecord(t, 2), s.RawRecord(t, 3)
				s.SetRawRecord(t, 2, b)
				s.SetRawRecord(t, 3, a)
			}, 2},
			{"unreadable record", func(t *testing.T, s AuditStore) { s.SetRawRecord(t, 4, []byte("{not json")) }, 4},
			{"record appended behind the log's back", func(t *testing.T, s AuditStore) {
				edit(t, s, 5, func(*gateway.AuditEvent) {}) // unchanged
				s.SetRawRecord(t, 6, s.RawRecord(t, 5))
			}, 6},
		} {
			t.Run(tt.name, func(t *testing.T) {
				s := newLog(t)
				for i := range 5 {
					mustRecord(t, s, auditEvent("viewer", gateway.ActionRetrieve, "1.2.3", fmt.Sprintf("PAT-%d", i)))
				}
				if res := mustVerify(t, s); !res.OK {
					t.Fatalf("Verify before tampering = %+v", res)
				}
				tt.tamper(t, s)
				res := mustVerify(t, s)
				if res.OK {
					t.Fatalf("Verify after tampering = %+v, want broken", res)
				}
				if got, want := res.FirstBroken, gateway.AuditRecordID(tt.broken); got != want {
					t.Errorf("FirstBroken=%v, want %v (reason %q)", got, want, res.Reason)
				}
				if res.Reason == "" || res.Records == 0 {
					t.Errorf("Verify = %+v, want a reason and a record count", res)
				}
			})
		}
	})

	t.Run("KeyedChain", func(t *testing.T) { testKeyedAuditChain(t, newLog) })

	t.Run("UnreachableStoreIsUnavailable", func(t *testing.T) {
		s := newLog(t)
		mustRecord(t, s, auditEvent("a", gateway.ActionQuery, "", ""))
		s.Break(t)
		if err := s.Record(t.Context(), auditEvent("a", gateway.ActionQuery, "", "")); !errors.Is(err, gateway.ErrUnavailable) {
			t.Errorf("Record = %v, want ErrUnavailable", err)
		}
		if _, err := s.Query(t.Context(), gateway.AuditFilter{}); !errors.Is(err, gateway.ErrUnavailable) {
			t.Errorf("Query = %v, want ErrUnavailable", err)
		}
		if _, err := s.Verify(t.Context()); !errors.Is(err, gateway.ErrUnavailable) {
			t.Errorf("Verify = %v, want ErrUnavailable", err)
		}
	})
}

// BenchAuditLog measures Record throughput with 1, 8 and 32 concurrent
// writers on one log, and with 32 writers spread over 4 replicas of it, and
// reports records/s. (b.SetParallelism multiplies GOMAXPROCS, so the writers
// are plain goroutines to get exact counts.)
func BenchAuditLog(b *testing.B, newLog func(b *testing.B) AuditStore) {
	for _, c := range []struct{ writers, replicas int }{{1, 1}, {8, 1}, {32, 1}, {32, 4}} {
		b.Run(fmt.Sprintf("writers=%d/replicas=%d", c.writers, c.replicas), func(b *testing.B) {
			s := newLog(b)
			logs := []gateway.AuditLog{s}
			for len(logs) < c.replicas {
				logs = append(logs, s.Replica(b))
			}
			var next atomic.Int64
			var failed atomic.Value
			var wg sync.WaitGroup
			b.ResetTimer()
			for w := range c.writers {
				l := logs[w%len(logs)]
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						ev := auditEvent("bench", gateway.ActionStore, "1.2.826.0.1.3680043.2.1125.1", "BENCH-1")
						if err := l.Record(context.Background(), ev); err != nil {
							failed.Store(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			if err, _ := failed.Load().(error); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

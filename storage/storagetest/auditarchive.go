package storagetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
)

// NewBlobStoreForArchiveFunc returns an empty blob store for the segments
// of an audit archive, cleaned up through t.Cleanup.
type NewBlobStoreForArchiveFunc func(t *testing.T) gateway.BlobStore

// archiveFixture is an audit log with 13 old records over three UTC days
// and 2 recent ones, an archive over it with segments of at most 3
// records, and the answers of a few queries before anything was sealed.
type archiveFixture struct {
	store   AuditStore
	live    gateway.AuditArchiveBackend
	blobs   *countingBlobs
	archive *gateway.AuditArchive
	now     time.Time
	day0    time.Time // 09:00 UTC of the first day's records
}

// archiveQueries are queried before and after sealing: the answers must
// not change (apart from the sealing run's own event).
var archiveQueries = []gateway.AuditFilter{
	{},
	{Limit: 4},
	{StudyUID: "1.2.1"},
	{StudyUID: "1.2.3", Limit: 1},
	{PatientID: "PAT-2"},
	{Actor: "viewer"},
	{Action: gateway.ActionStore},
	{Actor: "viewer", Action: gateway.ActionRetrieve},
}

func newArchiveFixture(t *testing.T, newLog NewAuditStoreFunc, newBlobs NewBlobStoreForArchiveFunc) *archiveFixture {
	t.Helper()
	s := newLog(t)
	live, ok := s.(gateway.AuditArchiveBackend)
	if !ok {
		t.Fatalf("%T is not a gateway.AuditArchiveBackend", s)
	}
	now := time.Now().UTC()
	day0 := now.Add(-10 * 24 * time.Hour).Truncate(24 * time.Hour).Add(9 * time.Hour)
	for i := range 13 {
		d := i / 5 // 5, 5 and 3 records on three days
		action, actor := gateway.ActionStore, "pacs-1"
		if i%2 == 1 {
			action, actor = gateway.ActionRetrieve, "viewer"
		}
		ev := auditEvent(actor, action, fmt.Sprintf("1.2.%d", d+1), fmt.Sprintf("PAT-%d", i%4))
		ev.Time = day0.Add(time.Duration(d)*24*time.Hour + time.Duration(i)*time.Minute)
		mustRecord(t, s, ev)
	}
	mustRecord(t, s, auditEvent("viewer", gateway.ActionQuery, "", ""))
	mustRecord(t, s, auditEvent("viewer", gateway.ActionRetrieve, "1.2.3", "PAT-9"))
	blobs := &countingBlobs{BlobStore: newBlobs(t)}
	return &archiveFixture{
		store: s, live: live, blobs: blobs, now: now, day0: day0,
		archive: &gateway.AuditArchive{
			Live: live, Blobs: blobs, Age: 24 * time.Hour, SegmentRecords: 3,
			Gateway: AuditGatewayName, Now: func() time.Time { return now },
		},
	}
}

// answers returns the IDs each of archiveQueries returns from log.
func answers(t *testing.T, log gateway.AuditLog) [][]string {
	t.Helper()
	out := make([][]string, len(archiveQueries))
	for i, f := range archiveQueries {
		out[i] = queryIDs(t, log, f)
	}
	return out
}

// withoutArchivedEvents drops the sealing runs' own events from ids.
func withoutArchivedEvents(t *testing.T, log gateway.AuditLog, ids []string) []string {
	t.Helper()
	archived := map[string]bool{}
	for _, id := range queryIDs(t, log, gateway.AuditFilter{Action: gateway.ActionAuditArchived}) {
		archived[id] = true
	}
	return slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return archived[id] })
}

func (fx *archiveFixture) seal(t *testing.T) gateway.AuditSealReport {
	t.Helper()
	rep, err := fx.archive.Seal(t.Context())
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	return rep
}

func (fx *archiveFixture) verify(t *testing.T) gateway.VerifyResult {
	t.Helper()
	res, err := fx.archive.Verify(t.Context())
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return res
}

// segmentKeys lists the segment objects.
func (fx *archiveFixture) segmentKeys(t *testing.T) []string {
	t.Helper()
	var keys []string
	if err := fx.blobs.Walk(t.Context(), gateway.AuditSegmentPrefix, func(info gateway.BlobInfo) error {
		keys = append(keys, info.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return keys
}

// lines returns the lines of segment key (the seal first).
func (fx *archiveFixture) lines(t *testing.T, key string) [][]byte {
	t.Helper()
	rc, err := fx.blobs.Get(t.Context(), key, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	raw, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Split(bytes.TrimSuffix(raw, []byte("\n")), []byte("\n"))
}

// putLines overwrites segment key with lines, as someone with write access
// to the bucket could.
func (fx *archiveFixture) putLines(t *testing.T, key string, lines [][]byte) {
	t.Helper()
	if _, err := fx.blobs.Put(t.Context(), key, bytes.NewReader(append(bytes.Join(lines, []byte("\n")), '\n'))); err != nil {
		t.Fatal(err)
	}
}

func (fx *archiveFixture) editRecord(t *testing.T, key string, line int, fn func(ev *gateway.AuditEvent)) {
	t.Helper()
	lines := fx.lines(t, key)
	ev, err := gateway.DecodeAuditEvent(lines[line])
	if err != nil {
		t.Fatal(err)
	}
	fn(ev)
	if lines[line], err = json.Marshal(ev); err != nil {
		t.Fatal(err)
	}
	fx.putLines(t, key, lines)
}

// countingBlobs counts the Gets of each key: the tests see which segments
// a query read. It is a decorator over a real store.
type countingBlobs struct {
	gateway.BlobStore
	mu   sync.Mutex
	gets map[string]int
}

func (c *countingBlobs) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	c.mu.Lock()
	if c.gets == nil {
		c.gets = map[string]int{}
	}
	c.gets[key]++
	c.mu.Unlock()
	return c.BlobStore.Get(ctx, key, offset, length)
}

func (c *countingBlobs) reset() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.gets
	c.gets = nil
	return g
}

// CanRetain and PutRetained pass through to the store (the decorators of
// blobwrap answer for stores that cannot lock).
func (c *countingBlobs) CanRetain(ctx context.Context) error {
	if l, ok := c.BlobStore.(gateway.RetentionLocker); ok {
		return l.CanRetain(ctx)
	}
	return errors.ErrUnsupported
}

func (c *countingBlobs) PutRetained(ctx context.Context, key string, r io.Reader, ret gateway.ObjectLock) (int64, error) {
	return c.BlobStore.(gateway.RetentionLocker).PutRetained(ctx, key, r, ret)
}

// failingTrim is the live log of a gateway that stops after writing a
// segment and before trimming it: the crash a real store cannot be made
// to have at that point.
type failingTrim struct {
	gateway.AuditArchiveBackend
}

var errCrash = errors.New("crashed before trimming")

func (failingTrim) AuditTrim(context.Context, int64, string) error { return errCrash }

// TestAuditArchive is the conformance suite of gateway.AuditArchive over a
// backend's live log (gateway.AuditArchiveBackend) and a blob store: old
// records sealed into segments and trimmed, queries and verification
// spanning both with the same answers as before, a crash between writing
// and trimming, and every kind of tampering with the segments.
func TestAuditArchive(t *testing.T, newLog NewAuditStoreFunc, newBlobs NewBlobStoreForArchiveFunc) {
	t.Run("SealTrimQueryVerify", func(t *testing.T) {
		fx := newArchiveFixture(t, newLog, newBlobs)
		before := answers(t, fx.store)
		rep := fx.seal(t)
		wantKeys := []string{
			gateway.AuditSegmentKey(1, 3), gateway.AuditSegmentKey(4, 5), // day 1
			gateway.AuditSegmentKey(6, 8), gateway.AuditSegmentKey(9, 10), // day 2
			gateway.AuditSegmentKey(11, 13), // day 3, closed by the recent records
		}
		if !slices.Equal(rep.Segments, wantKeys) || rep.Sealed != 13 || rep.Trimmed != 13 {
			t.Fatalf("Seal = %+v, want segments %v, 13 sealed and trimmed", rep, wantKeys)
		}
		if got := fx.segmentKeys(t); !slices.Equal(got, wantKeys) {
			t.Errorf("segment objects %v, want %v", got, wantKeys)
		}
		base, _, err := fx.live.AuditBase(t.Context())
		if err != nil || base != 13 {
			t.Errorf("AuditBase = %d, %v; want 13", base, err)
		}
		var live []int64
		if err := fx.live.AuditRaw(t.Context(), 1, 100, func(seq int64, _ []byte) error { live = append(live, seq); return nil }); err != nil {
			t.Fatal(err)
		}
		if want := []int64{14, 15, 16}; !slices.Equal(live, want) {
			t.Errorf("live records after sealing %v, want %v (the sealed ones trimmed, the sealing event added)", live, want)
		}
		res := fx.verify(t)
		if !res.OK || res.Records != 16 || res.Segments != 5 || res.Sealed != 13 || res.InBoth != 0 {
			t.Errorf("Verify = %+v, want ok, 16 records, 5 segments, 13 sealed", res)
		}
		after := answers(t, fx.archive)
		for i := range archiveQueries {
			if got := withoutArchivedEvents(t, fx.archive, after[i]); !slices.Equal(got, before[i]) {
				t.Errorf("query %+v after sealing: %v, before: %v", archiveQueries[i], got, before[i])
			}
		}
		// The live log alone checks from its base.
		if res := mustVerify(t, fx.store); !res.OK || res.Records != 3 {
			t.Errorf("live Verify = %+v, want ok with 3 records", res)
		}
		// Sealing again finds nothing new.
		if rep := fx.seal(t); len(rep.Segments) != 0 || rep.Trimmed != 0 {
			t.Errorf("second Seal = %+v, want nothing", rep)
		}
		if res := fx.verify(t); !res.OK || res.Records != 16 {
			t.Errorf("Verify after a second Seal = %+v", res)
		}
	})

	t.Run("SealOffOrTooYoung", func(t *testing.T) {
		fx := newArchiveFixture(t, newLog, newBlobs)
		fx.archive.Age = 0
		if rep := fx.seal(t); len(rep.Segments) != 0 {
			t.Errorf("Seal with Age 0 = %+v, want nothing", rep)
		}
		fx.archive.Age = 30 * 24 * time.Hour
		if rep := fx.seal(t); len(rep.Segments) != 0 {
			t.Errorf("Seal of records younger than Age = %+v, want nothing", rep)
		}
		if keys := fx.segmentKeys(t); len(keys) != 0 {
			t.Errorf("segments written: %v", keys)
		}
	})

	t.Run("CrashBetweenWriteAndTrim", func(t *testing.T) {
		fx := newArchiveFixture(t, newLog, newBlobs)
		before := answers(t, fx.store)
		fx.archive.Live = failingTrim{fx.live}
		if _, err := fx.archive.Seal(t.Context()); !errors.Is(err, errCrash) {
			t.Fatalf("Seal with a failing trim = %v, want the crash", err)
		}
		fx.archive.Live = fx.live
		if got := fx.segmentKeys(t); len(got) != 1 {
			t.Fatalf("segments after the crash: %v, want the first", got)
		}
		// The segment's records are also still live: counted once, seen once.
		res := fx.verify(t)
		if !res.OK || res.Records != 16 || res.InBoth != 3 {
			t.Errorf("Verify after the crash = %+v, want ok, 16 records, 3 in both", res)
		}
		for i, got := range answers(t, fx.archive) {
			if got = withoutArchivedEvents(t, fx.archive, got); !slices.Equal(got, before[i]) {
				t.Errorf("query %+v after the crash: %v, want %v", archiveQueries[i], got, before[i])
			}
		}
		// A trim that stopped half-way.
		ev, err := gateway.DecodeAuditEvent(fx.store.RawRecord(t, 2))
		if err != nil {
			t.Fatal(err)
		}
		if err := fx.live.AuditTrim(t.Context(), 2, ev.Hash); err != nil {
			t.Fatal(err)
		}
		if res := fx.verify(t); !res.OK || res.Records != 16 || res.InBoth != 1 {
			t.Errorf("Verify after a partial trim = %+v, want ok, 16 records, 1 in both", res)
		}
		// The next run trims first, then goes on; the segment is not
		// written twice.
		rep := fx.seal(t)
		if rep.Trimmed != 11 || len(rep.Segments) != 4 {
			t.Errorf("Seal after the crash = %+v, want 4 more segments and the 11 records still live trimmed", rep)
		}
		if res := fx.verify(t); !res.OK || res.Records != 17 || res.InBoth != 0 || res.Segments != 5 {
			t.Errorf("Verify after recovery = %+v, want ok, 17 records, 5 segments", res)
		}
		for i, got := range answers(t, fx.archive) {
			if got = withoutArchivedEvents(t, fx.archive, got); !slices.Equal(got, before[i]) {
				t.Errorf("query %+v after recovery: %v, want %v", archiveQueries[i], got, before[i])
			}
		}
	})

	t.Run("ConcurrentSealers", func(t *testing.T) {
		fx := newArchiveFixture(t, newLog, newBlobs)
		before := answers(t, fx.store)
		other, ok := fx.store.Replica(t).(gateway.AuditArchiveBackend)
		if !ok {
			t.Fatal("the replica is not a gateway.AuditArchiveBackend")
		}
		archives := []*gateway.AuditArchive{fx.archive, {
			Live: other, Blobs: fx.blobs, Age: fx.archive.Age, SegmentRecords: 3,
			Gateway: AuditGatewayName, Now: fx.archive.Now,
		}}
		var wg sync.WaitGroup
		errs := make([]error, len(archives))
		for i, a := range archives {
			wg.Go(func() { _, errs[i] = a.Seal(t.Context()) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("sealer %d: %v", i, err)
			}
		}
		fx.seal(t) // whatever one run left for the next
		res := fx.verify(t)
		if !res.OK || res.Segments != 5 || res.Sealed != 13 || res.InBoth != 0 {
			t.Errorf("Verify after concurrent sealing = %+v, want ok, 5 segments, 13 sealed", res)
		}
		for i, got := range answers(t, fx.archive) {
			if got = withoutArchivedEvents(t, fx.archive, got); !slices.Equal(got, before[i]) {
				t.Errorf("query %+v after concurrent sealing: %v, want %v", archiveQueries[i], got, before[i])
			}
		}
	})

	t.Run("TrimRefusesWrongHash", func(t *testing.T) {
		fx := newArchiveFixture(t, newLog, newBlobs)
		if err := fx.live.AuditTrim(t.Context(), 3, strings.Repeat("0", 64)); !errors.Is(err, gateway.ErrConflict) {
			t.Errorf("AuditTrim with the wrong hash = %v, want ErrConflict", err)
		}
		if base, _, _ := fx.live.AuditBase(t.Context()); base != 0 {
			t.Errorf("base %d after a refused trim", base)
		}
	})

	t.Run("QuerySkipsSegments", func(t *testing.T) {
		fx := newArchiveFixture(t, newLog, newBlobs)
		fx.seal(t)
		answers(t, fx.archive) // seals cached
		fx.blobs.reset()
		if got := queryIDs(t, fx.archive, gateway.AuditFilter{StudyUID: "1.2.2"}); len(got) != 5 {
			t.Errorf("study 1.2.2: %v, want 5 records", got)
		}
		gets := fx.blobs.reset()
		for _, k := range []string{gateway.AuditSegmentKey(1, 3), gateway.AuditSegmentKey(4, 5), gateway.AuditSegmentKey(11, 13)} {
			if gets[k] != 0 {
				t.Errorf("query for a study of day 2 read segment %s (%v)", k, gets)
			}
		}
		if gets[gateway.AuditSegmentKey(6, 8)] == 0 {
			t.Errorf("query for a study of day 2 did not read its segment (%v)", gets)
		}
		since := fx.day0.Add(2*24*time.Hour - time.Hour) // after day 2's records
		if got := queryIDs(t, fx.archive, gateway.AuditFilter{Since: since, Action: gateway.ActionStore}); len(got) != 2 {
			t.Errorf("stores since day 3: %v, want 2", got)
		}
		gets = fx.blobs.reset()
		for k := range gets {
			if k != gateway.AuditSegmentKey(11, 13) {
				t.Errorf("query since day 3 read %s (%v)", k, gets)
			}
		}
	})

	t.Run("KeyedSeals", func(t *testing.T) {
		fx := newArchiveFixture(t, newLog, newBlobs)
		// The fixture's records are unkeyed; keying starts after them.
		keys := AuditKeysForTest(t, "key k1", "unkeyed-records 15")
		fx.store.SetKeys(keys)
		fx.archive.Keys = keys
		fx.seal(t)
		var seal gateway.AuditSeal
		if err := json.Unmarshal(fx.lines(t, gateway.AuditSegmentKey(1, 3))[0], &seal); err != nil {
			t.Fatal(err)
		}
		if seal.KeyID != "k1" || len(seal.MAC) != 64 {
			t.Errorf("seal key_id %q mac %q, want k1 and an HMAC", seal.KeyID, seal.MAC)
		}
		if res := fx.verify(t); !res.OK || res.Records != 16 {
			t.Fatalf("Verify = %+v, want ok with 16 records", res)
		}
		// Someone without the key hides day 1 from time queries.
		lines := fx.lines(t, gateway.AuditSegmentKey(1, 3))
		seal.MinTime = seal.MinTime.Add(-365 * 24 * time.Hour)
		lines[0], _ = json.Marshal(&seal)
		fx.putLines(t, gateway.AuditSegmentKey(1, 3), lines)
		res := fx.verify(t)
		if res.OK || res.FirstBroken != gateway.AuditRecordID(1) || !strings.Contains(res.Reason, "seal") {
			t.Errorf("Verify after a seal edit = %+v, want broken at record 1 naming the seal", res)
		}
		fx.archive.Keys = nil
		if res := fx.verify(t); res.OK || !strings.Contains(res.Reason, "audit key file") {
			t.Errorf("Verify of keyed seals without keys = %+v, want the key file asked for", res)
		}
	})

	t.Run("RetentionOnAStoreThatCannotLock", func(t *testing.T) {
		fx := newArchiveFixture(t, newLog, newBlobs)
		if err := fx.blobs.CanRetain(t.Context()); err == nil {
			t.Skip("this store locks objects: the object-lock test covers it")
		}
		fx.archive.RetentionDays, fx.archive.RetentionMode = 30, gateway.ObjectLockCompliance
		if _, err := fx.archive.Seal(t.Context()); !errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("Seal with a lock asked of a store that cannot lock = %v, want ErrUnsupported", err)
		}
		if keys := fx.segmentKeys(t); len(keys) != 0 {
			t.Errorf("segments written unlocked: %v", keys)
		}
		if base, _, _ := fx.live.AuditBase(t.Context()); base != 0 {
			t.Errorf("records trimmed although nothing was sealed: base %d", base)
		}
	})

	t.Run("TamperingIsDetected", func(t *testing.T) {
		for _, tt := range []struct {
			name   string
			tamper func(t *testing.T, fx *archiveFixture)
			broken int64
			reason string
		}{
			{"edited record", func(t *testing.T, fx *archiveFixture) {
				fx.editRecord(t, gateway.AuditSegmentKey(6, 8), 2, func(ev *gateway.AuditEvent) { ev.Outcome = gateway.OutcomeFailure })
			}, 7, "hash"},
			{"edited and rehashed record", func(t *testing.T, fx *archiveFixture) {
				fx.editRecord(t, gateway.AuditSegmentKey(6, 8), 2, func(ev *gateway.AuditEvent) {
					ev.Actor.Name = "someone-else"
					ev.Hash, _ = gateway.AuditHash(ev)
				})
			}, 8, "prev_hash"},
			{"deleted record", func(t *testing.T, fx *archiveFixture) {
				lines := fx.lines(t, gateway.AuditSegmentKey(6, 8))
				fx.putLines(t, gateway.AuditSegmentKey(6, 8), slices.Delete(lines, 2, 3))
			}, 7, ""},
			{"deleted last record of a segment", func(t *testing.T, fx *archiveFixture) {
				lines := fx.lines(t, gateway.AuditSegmentKey(6, 8))
				fx.putLines(t, gateway.AuditSegmentKey(6, 8), lines[:3])
			}, 8, "removed"},
			{"reordered records", func(t *testing.T, fx *archiveFixture) {
				lines := fx.lines(t, gateway.AuditSegmentKey(6, 8))
				lines[1], lines[2] = lines[2], lines[1]
				fx.putLines(t, gateway.AuditSegmentKey(6, 8), lines)
			}, 6, ""},
			{"replaced segment", func(t *testing.T, fx *archiveFixture) {
				fx.putLines(t, gateway.AuditSegmentKey(6, 8), fx.lines(t, gateway.AuditSegmentKey(1, 3)))
			}, 6, ""},
			{"removed segment in the middle", func(t *testing.T, fx *archiveFixture) {
				if err := fx.blobs.Delete(t.Context(), gateway.AuditSegmentKey(6, 8)); err != nil {
					t.Fatal(err)
				}
			}, 6, "segment was removed"},
			{"removed first segment", func(t *testing.T, fx *archiveFixture) {
				if err := fx.blobs.Delete(t.Context(), gateway.AuditSegmentKey(1, 3)); err != nil {
					t.Fatal(err)
				}
			}, 1, "segment was removed"},
			{"removed last segment", func(t *testing.T, fx *archiveFixture) {
				if err := fx.blobs.Delete(t.Context(), gateway.AuditSegmentKey(11, 13)); err != nil {
					t.Fatal(err)
				}
			}, 11, "segment was removed"},
			{"removed every segment", func(t *testing.T, fx *archiveFixture) {
				for _, k := range fx.segmentKeys(t) {
					if err := fx.blobs.Delete(t.Context(), k); err != nil {
						t.Fatal(err)
					}
				}
			}, 1, "segment was removed"},
			{"renamed segment", func(t *testing.T, fx *archiveFixture) {
				lines := fx.lines(t, gateway.AuditSegmentKey(9, 10))
				if err := fx.blobs.Delete(t.Context(), gateway.AuditSegmentKey(9, 10)); err != nil {
					t.Fatal(err)
				}
				fx.putLines(t, gateway.AuditSegmentKey(9, 11), lines)
			}, 9, ""},
			{"seal edited", func(t *testing.T, fx *archiveFixture) {
				lines := fx.lines(t, gateway.AuditSegmentKey(4, 5))
				lines[0] = bytes.Replace(lines[0], []byte(`"gateway":"`+AuditGatewayName+`"`), []byte(`"gateway":"elsewhere"`), 1)
				fx.putLines(t, gateway.AuditSegmentKey(4, 5), lines)
			}, 4, "seal"},
			{"live record edited", func(t *testing.T, fx *archiveFixture) {
				ev, err := gateway.DecodeAuditEvent(fx.store.RawRecord(t, 14))
				if err != nil {
					t.Fatal(err)
				}
				ev.Outcome = gateway.OutcomeError
				raw, _ := json.Marshal(ev)
				fx.store.SetRawRecord(t, 14, raw)
			}, 14, "hash"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				fx := newArchiveFixture(t, newLog, newBlobs)
				fx.seal(t)
				if res := fx.verify(t); !res.OK {
					t.Fatalf("Verify before tampering = %+v", res)
				}
				tt.tamper(t, fx)
				res := fx.verify(t)
				if res.OK {
					t.Fatalf("Verify after tampering = %+v, want broken", res)
				}
				if got, want := res.FirstBroken, gateway.AuditRecordID(tt.broken); got != want {
					t.Errorf("FirstBroken=%v, want %v (reason %q)", got, want, res.Reason)
				}
				if !strings.Contains(res.Reason, tt.reason) {
					t.Errorf("Reason %q does not mention %q", res.Reason, tt.reason)
				}
				// A broken archive is not sealed further or trimmed.
				if _, err := fx.archive.Seal(t.Context()); err == nil && tt.broken <= 13 {
					base, _, _ := fx.live.AuditBase(t.Context())
					if base > 13 {
						t.Errorf("Seal over a broken archive trimmed to %d", base)
					}
				}
			})
		}
	})
}

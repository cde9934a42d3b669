package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/internal/lease"
	"github.com/dicom-gateway/gateway/storage/internal/recordcodec"
)

// Buckets of the index. Keys joining UIDs use NUL, which no UID contains.
var (
	bucketInstances      = []byte("index.instances")       // sop uid → InstanceRecord JSON
	bucketStudyInstances = []byte("index.study_instances") // study \0 series \0 sop → metadata order entry (empty before)
	bucketMetadata       = []byte("index.metadata")        // sop uid → prepared metadata written by earlier versions; only deleted now (gateway.MetadataStore holds it)
	bucketStudies        = []byte("index.studies")         // study uid → StudySummary, compact (JSON before)
	bucketSeries         = []byte("index.series")          // study \0 series → SeriesSummary JSON
	bucketStudyOrder     = []byte("index.study_order")     // StudyDate (8 digits) \0 study → orderValue
	bucketStudyLookup    = []byte("index.study_lookup")    // 'p' or 'a' \0 PatientID or AccessionNumber \0 order key → empty
	bucketIndexMeta      = []byte("index.meta")            // "lookups" → "1" once bucketStudyLookup lists every study; "identities" → "1" once it lists flagged studies under every Patient ID (backfillIdentities); "phonetic" → "1" once every order entry has its phonetic name keys; "usage" → "1" once the usage buckets (usage.go) count every instance
)

// Index is the embedded gateway.Index: instance records, study and series
// summaries in one bbolt file. Each put, replace or delete is atomic;
// concurrent ones share transactions (txCommitter), so they share fsyncs.
// Searches walk the study order newest first, skipping non-candidates by
// the hints kept in each order entry and decoding only candidate summaries
// (stored in the compact form), which suits a single-site laptop or small
// PACS; the Redis index is the one built for large archives.
type Index struct {
	db     *bbolt.DB
	writes *txCommitter // puts, replaces and deletes: shared commits under concurrency

	mu    sync.Mutex
	locks map[string]heldLock // sop uid → lease, in-process (the file has one process)
}

type heldLock struct {
	token   string
	expires time.Time
}

var (
	_ gateway.Index                = (*Index)(nil)
	_ gateway.IdentityCheckedIndex = (*Index)(nil)
)

// NewIndex creates the index buckets in db if needed and brings an index
// written by an earlier version up to date, each once (a mark in
// index.meta records it): usage counts (backfillUsage), phonetic name keys
// in the order entries (backfillPhonetic), flagged studies listed under
// every Patient ID (backfillIdentities), and lookup entries for an index
// written before the lookup bucket existed (backfillLookups).
func NewIndex(db *DB) (*Index, error) {
	err := db.bolt.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketInstances, bucketStudyInstances, bucketMetadata, bucketStudies, bucketSeries, bucketStudyOrder, bucketStudyLookup, bucketIndexMeta, bucketStudyUsage, bucketStudyReceived, bucketUsageTotals} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketIndexMeta)
		for _, b := range []struct {
			mark string
			fill func(*bbolt.Tx) error
		}{{"usage", backfillUsage}, {"phonetic", backfillPhonetic}, {"identities", backfillIdentities}, {"lookups", backfillLookups}} {
			if meta.Get([]byte(b.mark)) != nil {
				continue
			}
			if err := b.fill(tx); err != nil {
				return err
			}
			if err := meta.Put([]byte(b.mark), []byte("1")); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bolt index: create buckets: %w", err)
	}
	return &Index{db: db.bolt, writes: db.writes, locks: map[string]heldLock{}}, nil
}

// backfillLookups lists every study in the lookup bucket from its order
// entry (patient IDs and accession number).
func backfillLookups(tx *bbolt.Tx) error {
	lookup := tx.Bucket(bucketStudyLookup)
	return tx.Bucket(bucketStudyOrder).ForEach(func(k, v []byte) error {
		pids, rest, _ := bytes.Cut(v, []byte{0})
		acc, _, _ := bytes.Cut(rest, []byte{0})
		for _, key := range lookupKeys(k, strings.Split(string(pids), "\x01"), string(acc)) {
			if err := lookup.Put(key, nil); err != nil {
				return err
			}
		}
		return nil
	})
}

// backfillPhonetic rewrites every order entry from its study summary, so
// that entries written before NameKeys held phonetic keys get them (a fuzzy
// name search prefilters on them). Entries are collected first: a bucket
// must not change while ForEach walks it.
func backfillPhonetic(tx *bbolt.Tx) error {
	order := tx.Bucket(bucketStudyOrder)
	type entry struct{ key, value []byte }
	var changed []entry
	err := order.ForEach(func(k, v []byte) error {
		uid := k
		if len(k) > 8 && k[8] == 0 {
			uid = k[9:]
		}
		st, err := getStudy(tx, string(uid))
		if errors.Is(err, gateway.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if nv := orderValue(st); !bytes.Equal(nv, v) {
			changed = append(changed, entry{slices.Clone(k), nv})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, e := range changed {
		if err := order.Put(e.key, e.value); err != nil {
			return err
		}
	}
	return nil
}

// backfillIdentities lists every study flagged for an identity conflict
// under all its Patient IDs (gateway.StudyPatientIDs): an index written
// before 2026-12-06 listed such a study under its latest instance's ID
// only.
func backfillIdentities(tx *bbolt.Tx) error {
	return tx.Bucket(bucketStudies).ForEach(func(k, _ []byte) error {
		st, err := getStudy(tx, string(k))
		if err != nil {
			return err
		}
		if _, flagged := gateway.IdentityConflicts(st.Attrs); !flagged {
			return nil
		}
		return listStudy(tx, st) // writes the order and lookup buckets, not the one walked
	})
}

func unavailable(op string, err error) error {
	if err == nil || errors.Is(err, gateway.ErrNotFound) || errors.Is(err, gateway.ErrInvalid) {
		return err
	}
	return fmt.Errorf("bolt index: %s: %v: %w", op, err, gateway.ErrUnavailable)
}

// Lock takes an in-process lease on sopInstanceUID. bbolt allows one process
// per file, so an in-process lease excludes every writer of this index.
func (x *Index) Lock(ctx context.Context, sopInstanceUID string, ttl time.Duration) (func(), error) {
	token := lease.Token()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		x.mu.Lock()
		now := time.Now()
		held, ok := x.locks[sopInstanceUID]
		if !ok || now.After(held.expires) {
			x.locks[sopInstanceUID] = heldLock{token: token, expires: now.Add(ttl)}
			x.mu.Unlock()
			renew := func() {
				x.mu.Lock()
				defer x.mu.Unlock()
				if cur, ok := x.locks[sopInstanceUID]; ok && cur.token == token {
					x.locks[sopInstanceUID] = heldLock{token: token, expires: time.Now().Add(ttl)}
				}
			}
			release := func() {
				x.mu.Lock()
				defer x.mu.Unlock()
				if cur, ok := x.locks[sopInstanceUID]; ok && cur.token == token {
					delete(x.locks, sopInstanceUID)
				}
			}
			return lease.Hold(ttl, renew, release), nil
		}
		x.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// PutInstance stores rec unless its SOP Instance UID is already indexed.
func (x *Index) PutInstance(ctx context.Context, rec *gateway.InstanceRecord) (*gateway.InstanceRecord, bool, error) {
	return x.put(ctx, rec, nil)
}

// PutInstanceChecked implements gateway.IdentityCheckedIndex: the study's
// identities are compared in the transaction that writes rec.
func (x *Index) PutInstanceChecked(ctx context.Context, rec *gateway.InstanceRecord, studyIdentities string) (*gateway.InstanceRecord, bool, error) {
	return x.put(ctx, rec, &studyIdentities)
}

// put is PutInstance, and PutInstanceChecked when studyIdentities is set.
func (x *Index) put(ctx context.Context, rec *gateway.InstanceRecord, studyIdentities *string) (*gateway.InstanceRecord, bool, error) {
	if err := checkRecord(ctx, rec); err != nil {
		return nil, false, err
	}
	var (
		existing *gateway.InstanceRecord
		changed  bool
	)
	err := x.writes.Record(ctx, func(tx *bbolt.Tx) error {
		existing, changed = nil, false // the function may run twice (commitTogether)
		old, err := getRecord(tx, rec.SOPInstanceUID)
		if err == nil {
			existing = old
			return nil
		}
		if !errors.Is(err, gateway.ErrNotFound) {
			return err
		}
		study, err := studyOf(tx, rec.StudyInstanceUID)
		if err != nil {
			return err
		}
		// A refusal is not an error: that would roll back the other writes
		// committed together with this one.
		if changed = studyIdentities != nil && identitiesChanged(study, *studyIdentities, gateway.OwnIdentitySet(rec)); changed {
			return nil
		}
		return addRecordTo(tx, rec, study)
	})
	switch {
	case err != nil:
		return nil, false, unavailable("put instance", err)
	case existing != nil:
		return existing, false, nil
	case changed:
		return nil, false, fmt.Errorf("put instance %s: %w", rec.SOPInstanceUID, gateway.ErrStudyIdentitiesChanged)
	}
	return nil, true, nil
}

// ReplaceInstance overwrites the record of rec's SOP Instance UID (storing it
// if absent), moving it between studies or series if its UIDs changed.
func (x *Index) ReplaceInstance(ctx context.Context, rec *gateway.InstanceRecord) error {
	return x.replace(ctx, rec, nil)
}

// ReplaceInstanceChecked implements gateway.IdentityCheckedIndex: the
// study's identities are compared in the transaction that replaces rec.
func (x *Index) ReplaceInstanceChecked(ctx context.Context, rec *gateway.InstanceRecord, studyIdentities string) error {
	return x.replace(ctx, rec, &studyIdentities)
}

// replace is ReplaceInstance, and ReplaceInstanceChecked when
// studyIdentities is set.
func (x *Index) replace(ctx context.Context, rec *gateway.InstanceRecord, studyIdentities *string) error {
	if err := checkRecord(ctx, rec); err != nil {
		return err
	}
	changed := false
	err := x.writes.Record(ctx, func(tx *bbolt.Tx) error {
		changed = false // the function may run twice (commitTogether)
		if studyIdentities != nil {
			study, err := studyOf(tx, rec.StudyInstanceUID)
			if err != nil {
				return err
			}
			if changed = identitiesChanged(study, *studyIdentities, ""); changed {
				return nil // not an error: see put
			}
		}
		old, err := getRecord(tx, rec.SOPInstanceUID)
		var receivedMs int64
		switch {
		case err == nil:
			if old.StudyInstanceUID == rec.StudyInstanceUID {
				receivedMs = decodeUsage(tx.Bucket(bucketStudyUsage).Get([]byte(rec.StudyInstanceUID))).receivedMs
			}
			if err := removeRecord(tx, old); err != nil {
				return err
			}
		case !errors.Is(err, gateway.ErrNotFound):
			return err
		}
		if err := addRecord(tx, rec); err != nil {
			return err
		}
		return keepReceived(tx, rec.StudyInstanceUID, receivedMs)
	})
	if err == nil && changed {
		return fmt.Errorf("replace instance %s: %w", rec.SOPInstanceUID, gateway.ErrStudyIdentitiesChanged)
	}
	return unavailable("replace instance", err)
}

// PutInstances puts many records in a few transactions (reindex and
// benchmarks): each is PutInstance, records already indexed are left as
// they are.
func (x *Index) PutInstances(ctx context.Context, recs []*gateway.InstanceRecord) error {
	for chunk := range slices.Chunk(recs, 1000) {
		for _, rec := range chunk {
			if err := checkRecord(ctx, rec); err != nil {
				return err
			}
		}
		err := x.db.Update(func(tx *bbolt.Tx) error {
			for _, rec := range chunk {
				if _, err := getRecord(tx, rec.SOPInstanceUID); err == nil {
					continue
				} else if !errors.Is(err, gateway.ErrNotFound) {
					return err
				}
				if err := addRecord(tx, rec); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return unavailable("put instances", err)
		}
	}
	return nil
}

// GetInstance returns the record of sopInstanceUID or ErrNotFound.
func (x *Index) GetInstance(ctx context.Context, sopInstanceUID string) (*gateway.InstanceRecord, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var rec *gateway.InstanceRecord
	err := x.db.View(func(tx *bbolt.Tx) error {
		var err error
		rec, err = getRecord(tx, sopInstanceUID)
		return err
	})
	return rec, unavailable("get instance", err)
}

// DeleteInstance removes the record of sopInstanceUID or returns ErrNotFound.
func (x *Index) DeleteInstance(ctx context.Context, sopInstanceUID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	missing := false
	err := x.writes.Record(ctx, func(tx *bbolt.Tx) error {
		old, err := getRecord(tx, sopInstanceUID)
		missing = errors.Is(err, gateway.ErrNotFound)
		if missing {
			return nil // not a failure of the shared transaction
		}
		if err != nil {
			return err
		}
		return removeRecord(tx, old)
	})
	if err == nil && missing {
		return fmt.Errorf("instance %s: %w", sopInstanceUID, gateway.ErrNotFound)
	}
	return unavailable("delete instance", err)
}

// ListInstances returns a study's (or one series') instances in
// gateway.CompareInstances order, or ErrNotFound when there are none.
func (x *Index) ListInstances(ctx context.Context, studyUID, seriesUID string) ([]*gateway.InstanceRecord, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var recs []*gateway.InstanceRecord
	err := x.db.View(func(tx *bbolt.Tx) error {
		var err error
		recs, err = listInstances(tx, studyUID, seriesUID)
		return err
	})
	if err != nil {
		return nil, unavailable("list instances", err)
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("no instances in study %s series %q: %w", studyUID, seriesUID, gateway.ErrNotFound)
	}
	return recs, nil
}

func listInstances(tx *bbolt.Tx, studyUID, seriesUID string) ([]*gateway.InstanceRecord, error) {
	prefix := []byte(studyUID + "\x00")
	if seriesUID != "" {
		prefix = []byte(studyUID + "\x00" + seriesUID + "\x00")
	}
	var recs []*gateway.InstanceRecord
	c := tx.Bucket(bucketStudyInstances).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		sop := k[bytes.LastIndexByte(k, 0)+1:]
		rec, err := getRecord(tx, string(sop))
		if err != nil {
			return nil, err
		}
		recs = append(recs, rec)
	}
	slices.SortFunc(recs, gateway.CompareInstances)
	return recs, nil
}

// MetadataEntries lists the order entries kept beside each instance's key
// in the study's key range; an instance indexed before entries existed (an
// empty value) is prepared from its record.
func (x *Index) MetadataEntries(ctx context.Context, studyUID, seriesUID string) ([]gateway.MetadataEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	prefix := []byte(studyUID + "\x00")
	if seriesUID != "" {
		prefix = []byte(studyUID + "\x00" + seriesUID + "\x00")
	}
	var entries []gateway.MetadataEntry
	err := x.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketStudyInstances).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			study, rest, _ := strings.Cut(string(k), "\x00")
			series, sop, _ := strings.Cut(rest, "\x00")
			if len(v) == 0 {
				rec, err := getRecord(tx, sop)
				if err != nil {
					return err
				}
				entries = append(entries, gateway.NewMetadataEntry(rec))
				continue
			}
			e, err := gateway.DecodeMetadataEntry(study, series, sop, v)
			if err != nil {
				return err
			}
			entries = append(entries, e)
		}
		return nil
	})
	if err != nil {
		return nil, unavailable("list metadata", err)
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("no instances in study %s series %q: %w", studyUID, seriesUID, gateway.ErrNotFound)
	}
	slices.SortFunc(entries, gateway.CompareMetadataEntries)
	return entries, nil
}

func checkRecord(ctx context.Context, rec *gateway.InstanceRecord) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, uid := range []string{rec.StudyInstanceUID, rec.SeriesInstanceUID, rec.SOPInstanceUID} {
		if err := gateway.ValidateUID(uid); err != nil {
			return fmt.Errorf("index record: %w", err)
		}
	}
	return nil
}

func getRecord(tx *bbolt.Tx, sop string) (*gateway.InstanceRecord, error) {
	v := tx.Bucket(bucketInstances).Get([]byte(sop))
	if v == nil {
		return nil, fmt.Errorf("instance %s: %w", sop, gateway.ErrNotFound)
	}
	rec, err := recordcodec.Decode(v)
	if err != nil {
		return nil, fmt.Errorf("decode instance %s: %w", sop, err)
	}
	return rec, nil
}

func seriesKey(study, series string) []byte { return []byte(study + "\x00" + series) }

func addRecord(tx *bbolt.Tx, rec *gateway.InstanceRecord) error {
	study, err := studyOf(tx, rec.StudyInstanceUID)
	if err != nil {
		return err
	}
	return addRecordTo(tx, rec, study)
}

// identitiesChanged is gateway.IdentityCheckedIndex's refusal: study
// (studyOf) no longer lists the patients studyIdentities names, nor only
// own (gateway.OwnIdentitySet of a put's record; "" for a replace, which
// has no such exception).
func identitiesChanged(study *gateway.StudySummary, studyIdentities, own string) bool {
	cur := ""
	if study.StudyInstanceUID != "" {
		cur = gateway.StudyIdentitySet(study.Attrs)
	}
	return cur != studyIdentities && (own == "" || cur != own)
}

// studyOf is the summary of a study as tx sees it, empty (no
// StudyInstanceUID) when the study has none yet.
func studyOf(tx *bbolt.Tx, studyUID string) (*gateway.StudySummary, error) {
	study, err := getStudy(tx, studyUID)
	if errors.Is(err, gateway.ErrNotFound) {
		return &gateway.StudySummary{}, nil
	}
	return study, err
}

// addRecordTo is addRecord with the summary of rec's study read already
// (studyOf), which it updates.
func addRecordTo(tx *bbolt.Tx, rec *gateway.InstanceRecord, study *gateway.StudySummary) error {
	data, err := recordcodec.Encode(rec)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucketInstances).Put([]byte(rec.SOPInstanceUID), data); err != nil {
		return err
	}
	order := gateway.MetadataOrder(rec)
	key := []byte(rec.StudyInstanceUID + "\x00" + rec.SeriesInstanceUID + "\x00" + rec.SOPInstanceUID)
	if err := tx.Bucket(bucketStudyInstances).Put(key, order); err != nil {
		return err
	}
	series, err := getSeries(tx, rec.StudyInstanceUID, rec.SeriesInstanceUID)
	newSeries := errors.Is(err, gateway.ErrNotFound)
	if err != nil && !newSeries {
		return err
	}
	if newSeries {
		series = &gateway.SeriesSummary{StudyInstanceUID: rec.StudyInstanceUID, SeriesInstanceUID: rec.SeriesInstanceUID}
	}
	series.Attrs = gateway.SeriesAttrs(rec.Metadata)
	series.Instances++
	if err := putJSON(tx, bucketSeries, seriesKey(rec.StudyInstanceUID, rec.SeriesInstanceUID), series); err != nil {
		return err
	}
	if study.StudyInstanceUID != "" {
		if err := unlistStudy(tx, study); err != nil {
			return err
		}
	}
	study.AddInstance(rec, newSeries)
	if err := listStudy(tx, study); err != nil {
		return err
	}
	if err := addUsage(tx, rec); err != nil {
		return err
	}
	return putStudy(tx, study)
}

// listStudy puts the entries a study is found by: its order entry (date
// order, with the hints searches prefilter on) and its lookup entries.
func listStudy(tx *bbolt.Tx, s *gateway.StudySummary) error {
	key := orderKey(s)
	if err := tx.Bucket(bucketStudyOrder).Put(key, orderValue(s)); err != nil {
		return err
	}
	for _, lk := range lookupKeys(key, gateway.StudyPatientIDs(s.Attrs), s.Attrs.String(dicomcodec.TagAccessionNumber)) {
		if err := tx.Bucket(bucketStudyLookup).Put(lk, nil); err != nil {
			return err
		}
	}
	return nil
}

// unlistStudy deletes what listStudy put for s (as it is before a change).
func unlistStudy(tx *bbolt.Tx, s *gateway.StudySummary) error {
	key := orderKey(s)
	if err := tx.Bucket(bucketStudyOrder).Delete(key); err != nil {
		return err
	}
	for _, lk := range lookupKeys(key, gateway.StudyPatientIDs(s.Attrs), s.Attrs.String(dicomcodec.TagAccessionNumber)) {
		if err := tx.Bucket(bucketStudyLookup).Delete(lk); err != nil {
			return err
		}
	}
	return nil
}

// lookupKeys are the lookup entries of the study with order key key: one
// per Patient ID it is found by (gateway.StudyPatientIDs) and one for its
// accession number.
func lookupKeys(key []byte, patientIDs []string, accession string) [][]byte {
	var out [][]byte
	for _, id := range patientIDs {
		if id != "" {
			out = append(out, append(lookupPrefix('p', id), key...))
		}
	}
	if accession != "" {
		out = append(out, append(lookupPrefix('a', accession), key...))
	}
	return out
}

// lookupPrefix is where the lookup entries of one value start. A value
// holding NUL could share a prefix with another: harmless, since searches
// match every candidate against the query anyway.
func lookupPrefix(kind byte, value string) []byte {
	return append(append([]byte{kind, 0}, value...), 0)
}

func removeRecord(tx *bbolt.Tx, rec *gateway.InstanceRecord) error {
	if err := tx.Bucket(bucketInstances).Delete([]byte(rec.SOPInstanceUID)); err != nil {
		return err
	}
	if err := tx.Bucket(bucketMetadata).Delete([]byte(rec.SOPInstanceUID)); err != nil {
		return err
	}
	key := []byte(rec.StudyInstanceUID + "\x00" + rec.SeriesInstanceUID + "\x00" + rec.SOPInstanceUID)
	if err := tx.Bucket(bucketStudyInstances).Delete(key); err != nil {
		return err
	}
	if err := removeUsage(tx, rec); err != nil {
		return err
	}
	sk := seriesKey(rec.StudyInstanceUID, rec.SeriesInstanceUID)
	series, err := getSeries(tx, rec.StudyInstanceUID, rec.SeriesInstanceUID)
	if err != nil {
		return err
	}
	series.Instances--
	seriesGone := series.Instances <= 0
	if seriesGone {
		err = tx.Bucket(bucketSeries).Delete(sk)
	} else {
		err = putJSON(tx, bucketSeries, sk, series)
	}
	if err != nil {
		return err
	}
	study, err := getStudy(tx, rec.StudyInstanceUID)
	if err != nil {
		return err
	}
	if err := unlistStudy(tx, study); err != nil {
		return err
	}
	study.RemoveInstance(rec, seriesGone)
	if study.Instances <= 0 {
		return tx.Bucket(bucketStudies).Delete([]byte(rec.StudyInstanceUID))
	}
	if err := listStudy(tx, study); err != nil {
		return err
	}
	return putStudy(tx, study)
}

// putStudy stores a study summary in the compact form (recordcodec.AppendStudy),
// which searches decode without encoding/json.
func putStudy(tx *bbolt.Tx, s *gateway.StudySummary) error {
	data, err := recordcodec.AppendStudy(nil, s)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketStudies).Put([]byte(s.StudyInstanceUID), data)
}

func putJSON(tx *bbolt.Tx, bucket, key []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Bucket(bucket).Put(key, data)
}

func getStudy(tx *bbolt.Tx, study string) (*gateway.StudySummary, error) {
	v := tx.Bucket(bucketStudies).Get([]byte(study))
	if v == nil {
		return nil, fmt.Errorf("study %s: %w", study, gateway.ErrNotFound)
	}
	if len(v) > 0 && v[0] != '{' {
		s, err := recordcodec.DecodeStudy(string(v))
		if err != nil {
			return nil, fmt.Errorf("decode study %s: %w", study, err)
		}
		return s, nil
	}
	var s gateway.StudySummary // written as JSON by an earlier version
	if err := json.Unmarshal(v, &s); err != nil {
		return nil, fmt.Errorf("decode study %s: %w", study, err)
	}
	return &s, nil
}

func getSeries(tx *bbolt.Tx, study, series string) (*gateway.SeriesSummary, error) {
	v := tx.Bucket(bucketSeries).Get(seriesKey(study, series))
	if v == nil {
		return nil, fmt.Errorf("series %s: %w", series, gateway.ErrNotFound)
	}
	var s gateway.SeriesSummary
	if err := json.Unmarshal(v, &s); err != nil {
		return nil, fmt.Errorf("decode series %s: %w", series, err)
	}
	return &s, nil
}

// orderKey sorts studies in gateway.CompareStudies order when walked
// backwards: fixed-width date, then UID.
func orderKey(s *gateway.StudySummary) []byte {
	return fmt.Appendf(nil, "%08d\x00%s", gateway.StudyDateKey(s.Attrs), s.StudyInstanceUID)
}

// orderValue holds what hintsAllow checks, so that a search skips
// non-candidates without decoding their summaries: patient IDs
// (gateway.StudyPatientIDs), accession number, modalities and name keys (then the phonetic keys, each after
// gateway.PhoneticKeyMark), NUL-separated, lists joined by \x01.
func orderValue(s *gateway.StudySummary) []byte {
	mods := make([]string, 0, len(s.Modalities))
	for m := range s.Modalities {
		mods = append(mods, m)
	}
	pn := gateway.StudyPatientNames(s.Attrs) // a flagged study's other patients' names too
	names := gateway.NameKeys(pn, dicomcodec.TagPatientName)
	for _, code := range gateway.NamePhoneticKeys(pn, dicomcodec.TagPatientName) {
		names = append(names, gateway.PhoneticKeyMark+code)
	}
	return []byte(strings.Join([]string{
		strings.Join(gateway.StudyPatientIDs(s.Attrs), "\x01"), s.Attrs.String(dicomcodec.TagAccessionNumber),
		strings.Join(mods, "\x01"), strings.Join(names, "\x01"),
	}, "\x00"))
}

// Search answers a QIDO-RS query with the shared engine (gateway.Search).
func (x *Index) Search(ctx context.Context, q *gateway.Query) (*gateway.SearchResult, error) {
	res, err := gateway.Search(ctx, q, searchSource{x})
	return res, unavailable("search", err)
}

// searchSource walks the study order bucket newest first, within the date
// bounds of the hints; a study UID hint reads those studies directly.
type searchSource struct{ x *Index }

const searchBatch = 256

func (s searchSource) Studies(ctx context.Context, h gateway.IndexHints, fn func([]*gateway.StudySummary) (bool, error)) error {
	if h.StudyUIDs != nil {
		var batch []*gateway.StudySummary
		err := s.x.db.View(func(tx *bbolt.Tx) error {
			for _, uid := range h.StudyUIDs {
				st, err := getStudy(tx, uid)
				if errors.Is(err, gateway.ErrNotFound) {
					continue
				}
				if err != nil {
					return err
				}
				batch = append(batch, st)
			}
			return nil
		})
		if err != nil {
			return err
		}
		slices.SortFunc(batch, gateway.CompareStudies)
		_, err = fn(batch)
		return err
	}
	// Walk in batches, each in its own read transaction, so that a long
	// search never holds one transaction (and the file's old pages) open.
	// The first batch is what the search needs (h.Want), later ones grow.
	// An exact PatientID or AccessionNumber walks only that value's lookup
	// entries (prefix + order key), in the same newest-first order.
	bucket, prefix := bucketStudyOrder, []byte(nil)
	switch {
	case h.PatientID != "":
		bucket, prefix = bucketStudyLookup, lookupPrefix('p', h.PatientID)
	case h.AccessionNumber != "":
		bucket, prefix = bucketStudyLookup, lookupPrefix('a', h.AccessionNumber)
	}
	size := searchBatch
	if h.Want > 0 {
		size = min(max(h.Want, 16), searchBatch)
	}
	var resume []byte
	for {
		var batch []*gateway.StudySummary
		var next []byte
		err := s.x.db.View(func(tx *bbolt.Tx) error {
			c := tx.Bucket(bucket).Cursor()
			order := tx.Bucket(bucketStudyOrder)
			var k, v []byte
			switch {
			case resume != nil:
				k, v = c.Seek(resume)
				if k == nil {
					k, v = c.Last()
				} else if !bytes.Equal(k, resume) {
					k, v = c.Prev()
				}
			case h.DateHigh > 0:
				k, _ = c.Seek(fmt.Appendf(slices.Clip(prefix), "%08d\x01", h.DateHigh))
				if k == nil {
					k, v = c.Last()
				} else {
					k, v = c.Prev()
				}
			case prefix != nil:
				k, _ = c.Seek(append(slices.Clip(prefix), 0xFF))
				if k == nil {
					k, v = c.Last()
				} else {
					k, v = c.Prev()
				}
			default:
				k, v = c.Last()
			}
			for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Prev() {
				full := k
				if prefix != nil {
					k = k[len(prefix):] // the order key
					v = order.Get(k)
				}
				var date, uid []byte
				if len(k) > 8 && k[8] == 0 { // orderKey: 8 digits, NUL, UID
					date, uid = k[:8], k[9:]
				} else {
					date, uid, _ = bytes.Cut(k, []byte{0})
				}
				if h.HasDate {
					d, _ := strconv.ParseInt(string(date), 10, 64)
					if d == 0 || (h.DateLow > 0 && d < h.DateLow) {
						return nil // older dates only from here on
					}
				}
				if len(batch) == size {
					next = slices.Clone(full)
					return nil
				}
				if !hintsAllow(v, h) {
					continue
				}
				st, err := getStudy(tx, string(uid))
				if err != nil {
					return err
				}
				batch = append(batch, st)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if len(batch) > 0 {
			more, err := fn(batch)
			if err != nil || !more {
				return err
			}
		}
		if next == nil {
			return nil
		}
		resume = next // the first key not yet visited
		size = min(size*2, 4*searchBatch)
	}
}

// hintsAllow is a cheap prefilter on the hints, from the order entry's
// value; the engine still matches every condition.
func hintsAllow(v []byte, h gateway.IndexHints) bool {
	if h.PatientID == "" && h.AccessionNumber == "" && len(h.Modalities) == 0 && h.NamePrefix == "" {
		return true
	}
	// This runs for every study walked: no allocation, and each field is
	// cut only when an earlier one did not already decide.
	if bytes.Count(v, []byte{0}) != 3 {
		return true
	}
	pids, rest, _ := bytes.Cut(v, []byte{0})
	if h.PatientID != "" && !anyItem(pids, func(id []byte) bool { return string(id) == h.PatientID }) {
		return false
	}
	acc, rest, _ := bytes.Cut(rest, []byte{0})
	if h.AccessionNumber != "" && string(acc) != h.AccessionNumber {
		return false
	}
	mods, names, _ := bytes.Cut(rest, []byte{0})
	if len(h.Modalities) > 0 && !anyItem(mods, func(m []byte) bool { return slices.Contains(h.Modalities, string(m)) }) {
		return false
	}
	if h.NamePrefix != "" && !anyItem(names, func(n []byte) bool {
		return bytes.HasPrefix(n, []byte(h.NamePrefix)) ||
			(h.NamePhonetic != "" && len(n) > 0 && n[0] == gateway.PhoneticKeyMark[0] && string(n[1:]) == h.NamePhonetic)
	}) {
		return false
	}
	return true
}

// anyItem reports whether fn holds for an item of the \x01-separated list.
func anyItem(list []byte, fn func([]byte) bool) bool {
	for len(list) > 0 {
		var item []byte
		item, list, _ = bytes.Cut(list, []byte{1})
		if fn(item) {
			return true
		}
	}
	return false
}

func (s searchSource) Series(ctx context.Context, studyUID string) ([]*gateway.SeriesSummary, error) {
	var out []*gateway.SeriesSummary
	err := s.x.db.View(func(tx *bbolt.Tx) error {
		prefix := []byte(studyUID + "\x00")
		c := tx.Bucket(bucketSeries).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var se gateway.SeriesSummary
			if err := json.Unmarshal(v, &se); err != nil {
				return fmt.Errorf("decode series %s: %w", k, err)
			}
			out = append(out, &se)
		}
		return nil
	})
	return out, err
}

func (s searchSource) Instances(ctx context.Context, studyUID, seriesUID string) ([]*gateway.InstanceRecord, error) {
	var out []*gateway.InstanceRecord
	err := s.x.db.View(func(tx *bbolt.Tx) error {
		var err error
		out, err = listInstances(tx, studyUID, seriesUID)
		return err
	})
	return out, err
}

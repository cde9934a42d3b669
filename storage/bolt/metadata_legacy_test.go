package bolt

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"testing"

	bbolt "go.etcd.io/bbolt"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// preMetadataIndex strips every instance it writes back to the layout of
// indexes written before prepared metadata existed (an empty value in the
// study's key range, nothing in the metadata bucket), so that the
// MetadataReader suite checks the fallback that prepares such instances
// from their records.
type preMetadataIndex struct {
	*Index
	t *testing.T
}

func (l preMetadataIndex) PutInstance(ctx context.Context, rec *gateway.InstanceRecord) (*gateway.InstanceRecord, bool, error) {
	old, ok, err := l.Index.PutInstance(ctx, rec)
	l.strip(rec)
	return old, ok, err
}

func (l preMetadataIndex) ReplaceInstance(ctx context.Context, rec *gateway.InstanceRecord) error {
	err := l.Index.ReplaceInstance(ctx, rec)
	l.strip(rec)
	return err
}

func (l preMetadataIndex) PutInstances(ctx context.Context, recs []*gateway.InstanceRecord) error {
	err := l.Index.PutInstances(ctx, recs)
	for _, r := range recs {
		l.strip(r)
	}
	return err
}

func (l preMetadataIndex) strip(rec *gateway.InstanceRecord) {
	err := l.db.Update(func(tx *bbolt.Tx) error {
		key := []byte(rec.StudyInstanceUID + "\x00" + rec.SeriesInstanceUID + "\x00" + rec.SOPInstanceUID)
		if err := tx.Bucket(bucketStudyInstances).Put(key, nil); err != nil {
			return err
		}
		return tx.Bucket(bucketMetadata).Delete([]byte(rec.SOPInstanceUID))
	})
	if err != nil {
		l.t.Fatal(err)
	}
}

func TestMetadataReaderLegacyLayout(t *testing.T) {
	storagetest.TestMetadataReader(t, func(t *testing.T) gateway.Index {
		_, x := openIndex(t)
		return preMetadataIndex{x, t}
	})
}

// TestLookupBackfill: an index written before the lookup bucket existed
// gets it filled from its order entries when opened, so exact PatientID
// and AccessionNumber searches find its studies.
func TestLookupBackfill(t *testing.T) {
	db, x := openIndex(t)
	for i, pid := range []string{"P1", "P2", "P1"} {
		study := fmt.Sprintf("1.2.7.%d", i+1)
		rec := storagetest.Record(study, study+".1", study+".1.1", map[string]any{dicomcodec.TagPatientID: pid, dicomcodec.TagAccessionNumber: "A" + pid})
		if _, _, err := x.PutInstance(t.Context(), rec); err != nil {
			t.Fatal(err)
		}
	}
	// Back to the old layout: no lookup bucket, no marker.
	if err := db.bolt.Update(func(tx *bbolt.Tx) error {
		if err := tx.DeleteBucket(bucketStudyLookup); err != nil {
			return err
		}
		return tx.Bucket(bucketIndexMeta).Delete([]byte("lookups"))
	}); err != nil {
		t.Fatal(err)
	}
	x, err := NewIndex(db)
	if err != nil {
		t.Fatal(err)
	}
	for raw, want := range map[string]int{"PatientID=P1": 2, "PatientID=P2": 1, "AccessionNumber=AP1": 2} {
		if n := countStudies(t, x, raw); n != want {
			t.Errorf("%s after backfill: %d studies, want %d", raw, n, want)
		}
	}
}

// TestPhoneticBackfill takes an index back to the layout written before
// order entries held phonetic name keys (and without the marker saying they
// do): a fuzzy search for Smyth then misses Smith, since the prefilter has
// nothing to match; opening the index again backfills the keys once, and the
// search finds the study.
func TestPhoneticBackfill(t *testing.T) {
	db, x := openIndex(t)
	for i, name := range []string{"Smith^John", "Jones^Ann"} {
		study := fmt.Sprintf("1.2.8.%d", i+1)
		rec := storagetest.Record(study, study+".1", study+".1.1", map[string]any{
			dicomcodec.TagPatientName: dicomcodec.PersonName{Alphabetic: name}, dicomcodec.TagStudyDate: "20240101"})
		if _, _, err := x.PutInstance(t.Context(), rec); err != nil {
			t.Fatal(err)
		}
	}
	fuzzy := func(x *Index) int { return countStudies(t, x, "PatientName=smyth&fuzzymatching=true") }
	if n := fuzzy(x); n != 1 {
		t.Fatalf("fuzzy Smyth on a new index: %d studies, want 1", n)
	}
	// Back to the old layout: order entries without phonetic keys, no marker.
	if err := db.bolt.Update(func(tx *bbolt.Tx) error {
		order := tx.Bucket(bucketStudyOrder)
		old := map[string][]byte{}
		if err := order.ForEach(func(k, v []byte) error {
			fields := bytes.Split(v, []byte{0})
			names := bytes.Split(fields[len(fields)-1], []byte{1})
			kept := slices.DeleteFunc(slices.Clone(names), func(n []byte) bool { return bytes.HasPrefix(n, []byte(gateway.PhoneticKeyMark)) })
			if len(kept) == len(names) {
				return fmt.Errorf("order entry %q has no phonetic key", v)
			}
			fields[len(fields)-1] = bytes.Join(kept, []byte{1})
			old[string(k)] = bytes.Join(fields, []byte{0})
			return nil
		}); err != nil {
			return err
		}
		for k, v := range old {
			if err := order.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketIndexMeta).Delete([]byte("phonetic"))
	}); err != nil {
		t.Fatal(err)
	}
	backfillFinds(t, db, x, fuzzy, "fuzzy Smyth")
}

// TestIdentitiesBackfill takes an index back to the layout written before
// a study flagged for an identity conflict was listed under every Patient
// ID it holds (its order entry and lookup entries naming only the latest
// instance's): an exact search by the other patient's ID then misses it;
// opening the index again lists it, and the search finds it.
func TestIdentitiesBackfill(t *testing.T) {
	db, x := openIndex(t)
	first := storagetest.Record("1.2.9", "1.2.9.1", "1.2.9.1.1", map[string]any{dicomcodec.TagPatientID: "A100", dicomcodec.TagStudyDate: "20240101"})
	second := storagetest.Flagged(storagetest.Record("1.2.9", "1.2.9.2", "1.2.9.2.1", map[string]any{dicomcodec.TagPatientID: "B200", dicomcodec.TagStudyDate: "20240101"}),
		gateway.PatientIdentity{ID: "A100"})
	for _, rec := range []*gateway.InstanceRecord{first, second} {
		if _, _, err := x.PutInstance(t.Context(), rec); err != nil {
			t.Fatal(err)
		}
	}
	byFirst := func(x *Index) int { return countStudies(t, x, "PatientID=A100") }
	if n := byFirst(x); n != 1 {
		t.Fatalf("PatientID=A100 on a new index: %d studies, want 1", n)
	}
	// Back to the old layout: B200 alone in the order entry, no A100
	// lookup entry, no marker.
	if err := db.bolt.Update(func(tx *bbolt.Tx) error {
		order, lookup := tx.Bucket(bucketStudyOrder), tx.Bucket(bucketStudyLookup)
		k, v := order.Cursor().First()
		fields := bytes.Split(slices.Clone(v), []byte{0})
		fields[0] = []byte("B200")
		if err := order.Put(slices.Clone(k), bytes.Join(fields, []byte{0})); err != nil {
			return err
		}
		if err := lookup.Delete(append(lookupPrefix('p', "A100"), k...)); err != nil {
			return err
		}
		return tx.Bucket(bucketIndexMeta).Delete([]byte("identities"))
	}); err != nil {
		t.Fatal(err)
	}
	backfillFinds(t, db, x, byFirst, "PatientID=A100")
}

// countStudies counts the studies a study-level QIDO-RS query (raw query
// string) finds in x.
func countStudies(t *testing.T, x *Index, raw string) int {
	t.Helper()
	params, err := url.ParseQuery(raw)
	if err != nil {
		t.Fatal(err)
	}
	q, err := gateway.ParseQuery(gateway.LevelStudy, "", "", params, gateway.QueryLimits{Default: 100, Max: 1000})
	if err != nil {
		t.Fatal(err)
	}
	res, err := x.Search(t.Context(), q)
	if err != nil {
		t.Fatal(err)
	}
	return len(res.Items)
}

// backfillFinds checks that search finds no study in x, taken back to an
// old layout, and one once the index is opened again (NewIndex backfills).
func backfillFinds(t *testing.T, db *DB, x *Index, search func(*Index) int, what string) {
	t.Helper()
	if n := search(x); n != 0 {
		t.Fatalf("%s on the old layout: %d studies, want 0 (the entries were not removed)", what, n)
	}
	x, err := NewIndex(db)
	if err != nil {
		t.Fatal(err)
	}
	if n := search(x); n != 1 {
		t.Errorf("%s after backfill: %d studies, want 1", what, n)
	}
}

// openIndex opens a new state file and its index, closed when t ends.
func openIndex(t *testing.T) (*DB, *Index) {
	t.Helper()
	db, err := Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	x, err := NewIndex(db)
	if err != nil {
		t.Fatal(err)
	}
	return db, x
}

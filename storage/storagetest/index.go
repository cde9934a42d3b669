package storagetest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// Record builds an InstanceRecord for tests with the given UIDs and header
// attributes (tag → value; PN values as gateway.PersonName).
func Record(study, series, sop string, attrs map[string]any) *gateway.InstanceRecord {
	md := dicomcodec.Dataset{
		dicomcodec.TagStudyInstanceUID:  {VR: "UI", Value: []any{study}},
		dicomcodec.TagSeriesInstanceUID: {VR: "UI", Value: []any{series}},
		dicomcodec.TagSOPInstanceUID:    {VR: "UI", Value: []any{sop}},
		dicomcodec.TagSOPClassUID:       {VR: "UI", Value: []any{"1.2.840.10008.5.1.4.1.1.2"}},
	}
	for t, v := range attrs {
		vr := dicomcodec.TagVR(t)
		switch x := v.(type) {
		case []any:
			md[t] = dicomcodec.Attribute{VR: vr, Value: x}
		case nil:
			md[t] = dicomcodec.Attribute{VR: vr}
		default:
			md[t] = dicomcodec.Attribute{VR: vr, Value: []any{x}}
		}
	}
	return &gateway.InstanceRecord{
		StudyInstanceUID:  study,
		SeriesInstanceUID: series,
		SOPInstanceUID:    sop,
		SOPClassUID:       md.String(dicomcodec.TagSOPClassUID),
		TransferSyntaxUID: "1.2.840.10008.1.2.1",
		Size:              1234,
		SHA256:            "00",
		StoredAt:          time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Metadata:          md,
	}
}

// Flagged marks rec as the Ingester marks an instance that arrives in a
// study held under other patient identities: the gateway's private
// creator and its identity conflict flag naming others (ID, issuer pairs).
func Flagged(rec *gateway.InstanceRecord, others ...gateway.PatientIdentity) *gateway.InstanceRecord {
	v := []any{gateway.IdentityConflictValue}
	for _, o := range others {
		v = append(v, o.ID, o.Issuer)
	}
	rec.Metadata[gateway.TagGatewayPrivateCreator] = dicomcodec.Attribute{VR: "LO", Value: []any{gateway.GatewayPrivateCreator}}
	rec.Metadata[gateway.TagIdentityConflict] = dicomcodec.Attribute{VR: "LO", Value: v}
	return rec
}

// TestIndex is the conformance suite of gateway.Index: one subtest per
// sentence of its doc comment, then the query suite (TestIndexQueries).
// newIndex returns an empty index.
func TestIndex(t *testing.T, newIndex func(t *testing.T) gateway.Index) {
	t.Run("PutInstanceStoresNew", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		rec := Record("1.2.3", "1.2.3.1", "1.2.3.1.1", nil)
		existing, created, err := x.PutInstance(ctx, rec)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := created, true; got != want {
			t.Fatalf("created=%v, want %v", got, want)
		}
		if existing != nil {
			t.Fatalf("existing=%+v, want nil", existing)
		}
		got, err := x.GetInstance(ctx, "1.2.3.1.1")
		if err != nil {
			t.Fatal(err)
		}
		if got.SOPInstanceUID != rec.SOPInstanceUID || got.SHA256 != rec.SHA256 || got.Size != rec.Size || !got.StoredAt.Equal(rec.StoredAt) {
			t.Fatalf("GetInstance=%+v, want %+v", got, rec)
		}
	})
	t.Run("PutInstanceKeepsExisting", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		first := Record("1.2.3", "1.2.3.1", "1.2.3.1.1", nil)
		first.SHA256 = "aa"
		mustPut(t, x, first)
		second := Record("1.2.3", "1.2.3.1", "1.2.3.1.1", nil)
		second.SHA256 = "bb"
		existing, created, err := x.PutInstance(ctx, second)
		if err != nil {
			t.Fatal(err)
		}
		if created {
			t.Fatal("created=true for a duplicate, want false")
		}
		if existing == nil || existing.SHA256 != "aa" {
			t.Fatalf("existing=%+v, want the first record", existing)
		}
		got, _ := x.GetInstance(ctx, "1.2.3.1.1")
		if got.SHA256 != "aa" {
			t.Fatalf("stored SHA256=%q, want aa (unchanged)", got.SHA256)
		}
		assertCounts(t, x, "1.2.3", 1, 1)
	})
	t.Run("ConcurrentPutsEndWithOneRecord", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		var wg sync.WaitGroup
		var mu sync.Mutex
		createdN := 0
		for i := range 8 {
			wg.Go(func() {
				rec := Record("1.2.3", "1.2.3.1", "1.2.3.1.1", nil)
				rec.SHA256 = fmt.Sprint(i)
				_, created, err := x.PutInstance(ctx, rec)
				if err != nil {
					t.Error(err)
				}
				if created {
					mu.Lock()
					createdN++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if got, want := createdN, 1; got != want {
			t.Fatalf("created %d times, want %d", got, want)
		}
		assertCounts(t, x, "1.2.3", 1, 1)
	})
	t.Run("PutInstanceCheckedComparesStudyIdentities", func(t *testing.T) {
		// gateway.IdentityCheckedIndex: a put checked against the study's
		// identity set as the caller read it writes only when the study
		// still lists exactly those patients; otherwise it writes nothing
		// and says so. An instance indexed already is answered as existing.
		x, ctx := newIndex(t), t.Context()
		checked, ok := x.(gateway.IdentityCheckedIndex)
		if !ok {
			t.Fatalf("%T does not implement gateway.IdentityCheckedIndex", x)
		}
		patient := func(pid, description string) map[string]any {
			return map[string]any{dicomcodec.TagPatientID: pid, gateway.TagIssuerOfPatientID: "SURREY", dicomcodec.TagStudyDate: "20200101", "00081030": description}
		}
		put := func(rec *gateway.InstanceRecord, studyIdentities string) error {
			t.Helper()
			existing, created, err := checked.PutInstanceChecked(ctx, rec, studyIdentities)
			if err == nil && (!created || existing != nil) {
				t.Fatalf("PutInstanceChecked(%s) = existing %v, created %v, want created", rec.SOPInstanceUID, existing, created)
			}
			if err != nil && !errors.Is(err, gateway.ErrStudyIdentitiesChanged) {
				t.Fatalf("PutInstanceChecked(%s): %v", rec.SOPInstanceUID, err)
			}
			if err != nil && created {
				t.Fatalf("PutInstanceChecked(%s) refused and created", rec.SOPInstanceUID)
			}
			return err
		}
		a := Record("1.2.9", "1.2.9.1", "1.2.9.1.1", patient("A100", "first"))
		if err := put(a, ""); err != nil {
			t.Fatalf("first instance of a new study, read as none: %v", err)
		}
		held := studyDataset(t, x, "1.2.9")
		if got, want := gateway.StudyIdentitySet(held), gateway.StudyIdentitySet(gateway.StudyAttrs(a.Metadata)); got != want || got == "" {
			t.Fatalf("study's identity set %q, want A's %q", got, want)
		}
		// Another unflagged instance of A that read the study as new fits
		// it as it is (gateway.OwnIdentitySet): written.
		if err := put(Record("1.2.9", "1.2.9.1", "1.2.9.1.0", patient("A100", "together")), ""); err != nil {
			t.Fatalf("A's instance that opened the study together with the first: %v", err)
		}
		// B's check read the study before A was indexed.
		b := Record("1.2.9", "1.2.9.2", "1.2.9.2.1", patient("B200", "second"))
		if err := put(b, ""); err == nil {
			t.Fatal("B, checked against no study, was written into A's")
		}
		if _, err := x.GetInstance(ctx, b.SOPInstanceUID); !errors.Is(err, gateway.ErrNotFound) {
			t.Fatalf("refused B: GetInstance err %v, want not found", err)
		}
		assertCounts(t, x, "1.2.9", 1, 2)
		if got := studyValues(t, x, "1.2.9", dicomcodec.TagPatientID); !slices.Equal(got, []string{"A100"}) {
			t.Fatalf("after the refused put the study shows PatientID %v, want A100", got)
		}
		// Checked again from the study as it is: flagged, and written.
		if err := put(Flagged(b, gateway.PatientIdentity{ID: "A100", Issuer: "SURREY"}), gateway.StudyIdentitySet(held)); err != nil {
			t.Fatalf("B checked against A's study: %v", err)
		}
		// Another instance of A whose check read the study as A's only.
		a2 := Record("1.2.9", "1.2.9.1", "1.2.9.1.2", patient("A100", "third"))
		if err := put(a2, gateway.StudyIdentitySet(held)); err == nil {
			t.Fatal("A's second instance, checked against A alone, was written over B's flag")
		}
		now := studyDataset(t, x, "1.2.9")
		if _, flagged := gateway.IdentityConflicts(now); !flagged {
			t.Fatal("the refused put dropped the study's flag")
		}
		// The set is that of the patients, whatever else differs.
		if err := put(Flagged(a2, gateway.PatientIdentity{ID: "B200", Issuer: "SURREY"}), gateway.StudyIdentitySet(now)); err != nil {
			t.Fatalf("A's second instance checked against A and B: %v", err)
		}
		existing, created, err := checked.PutInstanceChecked(ctx, Record("1.2.9", "1.2.9.1", "1.2.9.1.1", patient("A100", "again")), "stale")
		if err != nil || created || existing == nil || existing.SOPInstanceUID != "1.2.9.1.1" {
			t.Fatalf("an indexed instance again: existing %v, created %v, err %v; want it answered as existing", existing, created, err)
		}
		assertCounts(t, x, "1.2.9", 2, 4)
		// A replace checked against the study as it was before A's second
		// instance flagged it: refused, nothing written; against the study
		// as it is: written.
		again := Flagged(Record("1.2.9", "1.2.9.1", "1.2.9.1.0", patient("A100", "replaced")), gateway.PatientIdentity{ID: "B200", Issuer: "SURREY"})
		if err := checked.ReplaceInstanceChecked(ctx, again, gateway.StudyIdentitySet(held)); !errors.Is(err, gateway.ErrStudyIdentitiesChanged) {
			t.Fatalf("replace checked against a stale set: %v, want ErrStudyIdentitiesChanged", err)
		}
		if got := studyValues(t, x, "1.2.9", "00081030"); !slices.Equal(got, []string{"third"}) {
			t.Fatalf("after the refused replace the study shows description %v, want third", got)
		}
		if err := checked.ReplaceInstanceChecked(ctx, again, gateway.StudyIdentitySet(now)); err != nil {
			t.Fatalf("replace checked against the study as it is: %v", err)
		}
		if got := studyValues(t, x, "1.2.9", "00081030"); !slices.Equal(got, []string{"replaced"}) {
			t.Fatalf("after the replace the study shows description %v, want replaced", got)
		}
		// A replace has no own-identity exception: an unflagged record of
		// the study's only patient, checked against a stale set, is
		// refused; and a checked replace that would move an instance to
		// another study changes neither.
		if _, _, err := checked.PutInstanceChecked(ctx, Record("1.2.11", "1.2.11.1", "1.2.11.1.1", patient("A100", "own")), ""); err != nil {
			t.Fatal(err)
		}
		if err := checked.ReplaceInstanceChecked(ctx, Record("1.2.11", "1.2.11.1", "1.2.11.1.1", patient("A100", "own again")), "stale"); !errors.Is(err, gateway.ErrStudyIdentitiesChanged) {
			t.Fatalf("replace of the only patient's record against a stale set: %v, want ErrStudyIdentitiesChanged", err)
		}
		if err := checked.ReplaceInstanceChecked(ctx, Record("1.2.12", "1.2.12.1", "1.2.11.1.1", patient("A100", "moved")), "stale"); err == nil {
			t.Fatal("a checked replace moving an instance to another study, against a stale set, was written")
		}
		if got, err := x.GetInstance(ctx, "1.2.11.1.1"); err != nil || got.StudyInstanceUID != "1.2.11" {
			t.Fatalf("after the refused move: GetInstance = %v, %v; want it still in 1.2.11", got, err)
		}
		// A flagged instance whose check read a study that is gone.
		gone := Flagged(Record("1.2.10", "1.2.10.1", "1.2.10.1.1", patient("C300", "")), gateway.PatientIdentity{ID: "A100", Issuer: "SURREY"})
		if err := put(gone, gateway.StudyIdentitySet(held)); err == nil {
			t.Fatal("a flagged instance checked against a study that is gone was written")
		}
	})
	t.Run("ReplaceInstanceOverwrites", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		mustPut(t, x, Record("1.2.3", "1.2.3.1", "1.2.3.1.1", map[string]any{dicomcodec.TagModality: "CT"}))
		rec := Record("1.2.3", "1.2.3.1", "1.2.3.1.1", map[string]any{dicomcodec.TagModality: "MR"})
		rec.SHA256 = "cc"
		if err := x.ReplaceInstance(ctx, rec); err != nil {
			t.Fatal(err)
		}
		got, err := x.GetInstance(ctx, "1.2.3.1.1")
		if err != nil {
			t.Fatal(err)
		}
		if got.SHA256 != "cc" {
			t.Fatalf("SHA256=%q, want cc", got.SHA256)
		}
		assertCounts(t, x, "1.2.3", 1, 1)
		if got, want := studyValues(t, x, "1.2.3", dicomcodec.TagModalitiesInStudy), []string{"MR"}; !slices.Equal(got, want) {
			t.Fatalf("ModalitiesInStudy=%v, want %v", got, want)
		}
	})
	t.Run("ReplaceInstanceMakesItTheStudysLatest", func(t *testing.T) {
		// Replacing an instance with the very record it has makes the
		// study's attributes that instance's again, after another
		// patient's instance came last and was flagged; the study is then
		// no longer listed under the other patient.
		x, ctx := newIndex(t), t.Context()
		a := Record("1.2.8", "1.2.8.1", "1.2.8.1.1", map[string]any{dicomcodec.TagPatientID: "S100", dicomcodec.TagPatientName: dicomcodec.PersonName{Alphabetic: "Alpha^Ann"}})
		mustPut(t, x, a)
		mustPut(t, x, Flagged(Record("1.2.8", "1.2.8.2", "1.2.8.2.1", map[string]any{dicomcodec.TagPatientID: "H200", dicomcodec.TagPatientName: dicomcodec.PersonName{Alphabetic: "Beta^Bob"}}),
			gateway.PatientIdentity{ID: "S100"}))
		if got := studyValues(t, x, "1.2.8", dicomcodec.TagPatientID); !slices.Equal(got, []string{"H200"}) {
			t.Fatalf("before: PatientID=%v, want the latest instance's", got)
		}
		same, err := x.GetInstance(ctx, "1.2.8.1.1")
		if err != nil {
			t.Fatal(err)
		}
		if err := x.ReplaceInstance(ctx, same); err != nil {
			t.Fatal(err)
		}
		d := studyDataset(t, x, "1.2.8")
		if _, flagged := gateway.IdentityConflicts(d); d.String(dicomcodec.TagPatientID) != "S100" || flagged {
			t.Errorf("after: PatientID=%q flagged %v, want S100 unflagged", d.String(dicomcodec.TagPatientID), flagged)
		}
		for pid, want := range map[string]int{"S100": 1, "H200": 0} {
			res, err := x.Search(ctx, parseQuery(t, gateway.LevelStudy, "", "", "PatientID="+pid))
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Items) != want {
				t.Errorf("PatientID=%s: %d studies, want %d", pid, len(res.Items), want)
			}
		}
		assertCounts(t, x, "1.2.8", 2, 2)
	})
	t.Run("ReplaceInstanceMovesBetweenStudies", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		mustPut(t, x, Record("1.2.3", "1.2.3.1", "1.2.3.1.1", nil))
		mustPut(t, x, Record("1.2.3", "1.2.3.1", "1.2.3.1.2", nil))
		if err := x.ReplaceInstance(ctx, Record("1.2.4", "1.2.4.1", "1.2.3.1.2", nil)); err != nil {
			t.Fatal(err)
		}
		assertCounts(t, x, "1.2.3", 1, 1)
		assertCounts(t, x, "1.2.4", 1, 1)
	})
	t.Run("GetInstanceUnknownIsNotFound", func(t *testing.T) {
		x := newIndex(t)
		if _, err := x.GetInstance(t.Context(), "1.2.999"); !errors.Is(err, gateway.ErrNotFound) {
			t.Fatalf("err=%v, want ErrNotFound", err)
		}
	})
	t.Run("DeleteInstanceUnknownIsNotFound", func(t *testing.T) {
		x := newIndex(t)
		if err := x.DeleteInstance(t.Context(), "1.2.999"); !errors.Is(err, gateway.ErrNotFound) {
			t.Fatalf("err=%v, want ErrNotFound", err)
		}
	})
	t.Run("DeleteInstanceRemoves", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		mustPut(t, x, Record("1.2.3", "1.2.3.1", "1.2.3.1.1", map[string]any{dicomcodec.TagModality: "CT"}))
		mustPut(t, x, Record("1.2.3", "1.2.3.2", "1.2.3.2.1", map[string]any{dicomcodec.TagModality: "SR"}))
		if err := x.DeleteInstance(ctx, "1.2.3.2.1"); err != nil {
			t.Fatal(err)
		}
		if _, err := x.GetInstance(ctx, "1.2.3.2.1"); !errors.Is(err, gateway.ErrNotFound) {
			t.Fatalf("after delete: err=%v, want ErrNotFound", err)
		}
		assertCounts(t, x, "1.2.3", 1, 1)
		if got, want := studyValues(t, x, "1.2.3", dicomcodec.TagModalitiesInStudy), []string{"CT"}; !slices.Equal(got, want) {
			t.Fatalf("ModalitiesInStudy=%v, want %v", got, want)
		}
		if err := x.DeleteInstance(ctx, "1.2.3.1.1"); err != nil {
			t.Fatal(err)
		}
		if _, err := x.ListInstances(ctx, "1.2.3", ""); !errors.Is(err, gateway.ErrNotFound) {
			t.Fatalf("ListInstances of emptied study: err=%v, want ErrNotFound", err)
		}
		res, err := x.Search(ctx, &gateway.Query{Level: gateway.LevelStudy})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Items) != 0 {
			t.Fatalf("studies after deleting every instance: %d, want 0", len(res.Items))
		}
	})
	t.Run("ListInstancesOrder", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		// Series 2 (SeriesNumber 1) comes before series 1 (SeriesNumber 2);
		// within a series by InstanceNumber, then SOP Instance UID.
		mustPut(t, x, Record("1.2.3", "1.2.3.1", "1.2.3.1.1", map[string]any{dicomcodec.TagSeriesNumber: int64(2), dicomcodec.TagInstanceNumber: int64(1)}))
		mustPut(t, x, Record("1.2.3", "1.2.3.2", "1.2.3.2.9", map[string]any{dicomcodec.TagSeriesNumber: int64(1), dicomcodec.TagInstanceNumber: int64(2)}))
		mustPut(t, x, Record("1.2.3", "1.2.3.2", "1.2.3.2.10", map[string]any{dicomcodec.TagSeriesNumber: int64(1), dicomcodec.TagInstanceNumber: int64(10)}))
		mustPut(t, x, Record("1.2.3", "1.2.3.2", "1.2.3.2.3", map[string]any{dicomcodec.TagSeriesNumber: int64(1), dicomcodec.TagInstanceNumber: int64(2)}))
		mustPut(t, x, Record("1.2.4", "1.2.4.1", "1.2.4.1.1", nil))
		recs, err := x.ListInstances(ctx, "1.2.3", "")
		if err != nil {
			t.Fatal(err)
		}
		if got, want := recordSOPs(recs), []string{"1.2.3.2.3", "1.2.3.2.9", "1.2.3.2.10", "1.2.3.1.1"}; !slices.Equal(got, want) {
			t.Fatalf("ListInstances(study)=%v, want %v", got, want)
		}
		recs, err = x.ListInstances(ctx, "1.2.3", "1.2.3.1")
		if err != nil {
			t.Fatal(err)
		}
		if got, want := recordSOPs(recs), []string{"1.2.3.1.1"}; !slices.Equal(got, want) {
			t.Fatalf("ListInstances(series)=%v, want %v", got, want)
		}
	})
	t.Run("ListInstancesUnknownIsNotFound", func(t *testing.T) {
		x := newIndex(t)
		if _, err := x.ListInstances(t.Context(), "1.2.999", ""); !errors.Is(err, gateway.ErrNotFound) {
			t.Fatalf("err=%v, want ErrNotFound", err)
		}
		if _, err := x.ListInstances(t.Context(), "1.2.999", "1.2.999.1"); !errors.Is(err, gateway.ErrNotFound) {
			t.Fatalf("series: err=%v, want ErrNotFound", err)
		}
	})
	t.Run("InvalidUIDRejected", func(t *testing.T) {
		x := newIndex(t)
		_, _, err := x.PutInstance(t.Context(), Record("1.2.3", "1.2/../3", "1.2.3.1.1", nil))
		if !errors.Is(err, gateway.ErrInvalid) {
			t.Fatalf("err=%v, want ErrInvalid", err)
		}
	})
	t.Run("AggregatesFollowPutsAndDeletes", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		ct := "1.2.840.10008.5.1.4.1.1.2"
		sr := "1.2.840.10008.5.1.4.1.1.88.11"
		mustPut(t, x, Record("1.2.3", "1.2.3.1", "1.2.3.1.1", map[string]any{dicomcodec.TagModality: "CT"}))
		mustPut(t, x, Record("1.2.3", "1.2.3.1", "1.2.3.1.2", map[string]any{dicomcodec.TagModality: "CT"}))
		r := Record("1.2.3", "1.2.3.2", "1.2.3.2.1", map[string]any{dicomcodec.TagModality: "SR", dicomcodec.TagSOPClassUID: sr})
		r.SOPClassUID = sr
		mustPut(t, x, r)
		assertCounts(t, x, "1.2.3", 2, 3)
		if got, want := studyValues(t, x, "1.2.3", dicomcodec.TagModalitiesInStudy), []string{"CT", "SR"}; !slices.Equal(got, want) {
			t.Fatalf("ModalitiesInStudy=%v, want %v", got, want)
		}
		if got, want := studyValues(t, x, "1.2.3", gateway.TagSOPClassesInStudy), []string{ct, sr}; !slices.Equal(got, want) {
			t.Fatalf("SOPClassesInStudy=%v, want %v", got, want)
		}
		if err := x.DeleteInstance(ctx, "1.2.3.1.1"); err != nil {
			t.Fatal(err)
		}
		assertCounts(t, x, "1.2.3", 2, 2)
		if err := x.DeleteInstance(ctx, "1.2.3.2.1"); err != nil {
			t.Fatal(err)
		}
		assertCounts(t, x, "1.2.3", 1, 1)
		if got, want := studyValues(t, x, "1.2.3", gateway.TagSOPClassesInStudy), []string{ct}; !slices.Equal(got, want) {
			t.Fatalf("SOPClassesInStudy=%v, want %v", got, want)
		}
		res, err := x.Search(ctx, &gateway.Query{Level: gateway.LevelSeries, StudyInstanceUID: "1.2.3"})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Items) != 1 || res.Items[0].String(dicomcodec.TagSeriesInstanceUID) != "1.2.3.1" {
			t.Fatalf("series after delete: %v, want only 1.2.3.1", res.Items)
		}
		if got, want := intValue(res.Items[0], gateway.TagNumberOfSeriesRelatedInstances), int64(1); got != want {
			t.Fatalf("NumberOfSeriesRelatedInstances=%d, want %d", got, want)
		}
	})
	t.Run("LockExcludes", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		unlock, err := x.Lock(ctx, "1.2.3.1.1", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		if _, err := x.Lock(short, "1.2.3.1.1", time.Minute); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("second Lock while held: err=%v, want context.DeadlineExceeded", err)
		}
		other, err := x.Lock(ctx, "1.2.3.1.2", time.Minute)
		if err != nil {
			t.Fatalf("Lock of another UID: %v", err)
		}
		other()
		unlock()
		again, err := x.Lock(ctx, "1.2.3.1.1", time.Minute)
		if err != nil {
			t.Fatalf("Lock after unlock: %v", err)
		}
		again()
	})
	t.Run("LockWaitsForUnlock", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		unlock, err := x.Lock(ctx, "1.2.3.1.1", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		time.AfterFunc(50*time.Millisecond, unlock)
		second, err := x.Lock(ctx, "1.2.3.1.1", time.Minute)
		if err != nil {
			t.Fatalf("Lock waiting for unlock: %v", err)
		}
		second()
	})
	t.Run("LockRenewedWhileHeld", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		// A ttl long enough that a renewal (every ttl/3) is never late on a
		// loaded 2-core machine: 60 ms flaked under a load of 12.
		unlock, err := x.Lock(ctx, "1.2.3.1.1", 300*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		// Several ttls later the live holder still holds it: a long upload
		// keeps its lease.
		short, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		defer cancel()
		if _, err := x.Lock(short, "1.2.3.1.1", time.Minute); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Lock while a live holder renews: err=%v, want context.DeadlineExceeded", err)
		}
		unlock()
		next, err := x.Lock(ctx, "1.2.3.1.1", time.Minute)
		if err != nil {
			t.Fatalf("Lock after unlock: %v", err)
		}
		next()
	})
	TestMetadataReader(t, newIndex)
	testStudyLookups(t, newIndex)
	t.Run("ReplaceRewritesSearchValues", func(t *testing.T) {
		// A study with two modalities whose patient ID, date and one
		// modality change: every search set follows (in Redis the write
		// touches sets of the old values it only learns from what is stored).
		x, ctx := newIndex(t), t.Context()
		attrs := func(pid, date, mod string) map[string]any {
			return map[string]any{dicomcodec.TagPatientID: pid, dicomcodec.TagStudyDate: date, dicomcodec.TagModality: mod}
		}
		mustPut(t, x, Record("1.2.3", "1.2.3.1", "1.2.3.1.1", attrs("P1", "20200101", "CT")))
		mustPut(t, x, Record("1.2.3", "1.2.3.2", "1.2.3.2.1", attrs("P1", "20200101", "SR")))
		if err := x.ReplaceInstance(ctx, Record("1.2.3", "1.2.3.1", "1.2.3.1.1", attrs("P2", "20210101", "MR"))); err != nil {
			t.Fatal(err)
		}
		for raw, want := range map[string]int{
			"PatientID=P1": 0, "PatientID=P2": 1,
			"ModalitiesInStudy=SR&StudyDate=20210101": 1, "ModalitiesInStudy=SR&StudyDate=20200101": 0,
			"ModalitiesInStudy=MR&StudyDate=20210101": 1, "ModalitiesInStudy=CT": 0,
			"StudyDate=20210101": 1, "StudyDate=20200101": 0,
		} {
			res, err := x.Search(ctx, parseQuery(t, gateway.LevelStudy, "", "", raw))
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Items) != want {
				t.Errorf("%s: %d studies, want %d", raw, len(res.Items), want)
			}
		}
	})
	t.Run("LaterInstancesKeepOrMoveSearchValues", func(t *testing.T) {
		// More instances of a study with the same study-level values keep
		// it found by each of them (Redis leaves its entries alone then);
		// one with other values moves the study to those (the last
		// instance's study attributes are the study's).
		x, ctx := newIndex(t), t.Context()
		attrs := func(pid, name, acc, date string) map[string]any {
			return map[string]any{dicomcodec.TagPatientID: pid, dicomcodec.TagPatientName: dicomcodec.PersonName{Alphabetic: name},
				dicomcodec.TagAccessionNumber: acc, dicomcodec.TagStudyDate: date, dicomcodec.TagModality: "CT"}
		}
		search := func(want map[string]int) {
			t.Helper()
			for raw, n := range want {
				res, err := x.Search(ctx, parseQuery(t, gateway.LevelStudy, "", "", raw))
				if err != nil {
					t.Fatal(err)
				}
				if len(res.Items) != n {
					t.Errorf("%s: %d studies, want %d", raw, len(res.Items), n)
				}
			}
		}
		for i := range 3 {
			mustPut(t, x, Record("1.2.3", "1.2.3.1", fmt.Sprintf("1.2.3.1.%d", i+1), attrs("P1", "DOE^JOHN", "A1", "20200101")))
		}
		search(map[string]int{"PatientID=P1": 1, "PatientName=DOE*": 1, "PatientName=D*": 1, "AccessionNumber=A1": 1,
			"StudyDate=20200101": 1, "ModalitiesInStudy=CT": 1, "PatientName=SMITH*": 0})
		mustPut(t, x, Record("1.2.3", "1.2.3.2", "1.2.3.2.1", attrs("P2", "SMITH^ANN", "A2", "20210101")))
		search(map[string]int{"PatientID=P1": 0, "PatientName=DOE*": 0, "PatientName=D*": 0, "AccessionNumber=A1": 0,
			"StudyDate=20200101": 0, "PatientID=P2": 1, "PatientName=SMITH*": 1, "AccessionNumber=A2": 1,
			"StudyDate=20210101": 1, "ModalitiesInStudy=CT&StudyDate=20210101": 1})
	})
	t.Run("IdentityConflictFoundByBothPatients", func(t *testing.T) {
		// A study that holds instances of two patient identities (the
		// Ingester flags the later ones, naming the other identity) is
		// found by a search for either patient, at study and series level,
		// whichever instance came last, by Patient ID or by the name the
		// flag gives the other; a third identity finds nothing.
		x, ctx := newIndex(t), t.Context()
		attrs := func(pid, issuer string) map[string]any {
			return map[string]any{dicomcodec.TagPatientID: pid, gateway.TagIssuerOfPatientID: issuer, dicomcodec.TagStudyDate: "20200101", dicomcodec.TagModality: "CT"}
		}
		search := func(level gateway.QueryLevel, want map[string]int) {
			t.Helper()
			for raw, n := range want {
				res, err := x.Search(ctx, parseQuery(t, level, "", "", raw))
				if err != nil {
					t.Fatal(err)
				}
				if len(res.Items) != n {
					t.Errorf("%s %s: %d matches, want %d", level, raw, len(res.Items), n)
				}
			}
		}
		named := func(rec *gateway.InstanceRecord, name string) *gateway.InstanceRecord {
			rec.Metadata[dicomcodec.TagPatientName] = dicomcodec.Attribute{VR: "PN", Value: []any{dicomcodec.PersonName{Alphabetic: name}}}
			return rec
		}
		// withNames gives the flag's other identity its name, as the
		// Ingester does (gateway.TagIdentityConflictNames).
		withNames := func(rec *gateway.InstanceRecord, name string) *gateway.InstanceRecord {
			rec.Metadata[gateway.TagIdentityConflictNames] = dicomcodec.Attribute{VR: "PN", Value: []any{dicomcodec.PersonName{Alphabetic: name}}}
			return rec
		}
		mustPut(t, x, named(Record("1.2.7", "1.2.7.1", "1.2.7.1.1", attrs("S100", "SURREY")), "Surrey^Sam"))
		mustPut(t, x, withNames(Flagged(named(Record("1.2.7", "1.2.7.2", "1.2.7.2.1", attrs("H200", "HAMPSHIRE")), "Hants^Hal"),
			gateway.PatientIdentity{ID: "S100", Issuer: "SURREY"}), "Surrey^Sam"))
		both := map[string]int{"PatientID=S100": 1, "PatientID=H200": 1, "PatientID=S100&IssuerOfPatientID=SURREY": 1,
			"PatientID=S100&IssuerOfPatientID=HAMPSHIRE": 0, "PatientID=H200&IssuerOfPatientID=HAMPSHIRE": 1,
			"PatientID=S1*": 1, "PatientID=X300": 0, "PatientID=S100&StudyDate=20200101": 1, "PatientID=S100&StudyDate=20210101": 0,
			"PatientName=Surrey*": 1, "PatientName=surrey^sam": 1, "PatientName=Hants*": 1, "PatientName=Kent*": 0,
			"PatientName=Surrey*&PatientID=S100": 1, "PatientName=Surrey*&PatientID=H200": 0,
			"PatientName=Surry&fuzzymatching=true": 1}
		search(gateway.LevelStudy, both)
		search(gateway.LevelSeries, map[string]int{"PatientID=S100": 2, "PatientID=H200": 2, "PatientID=X300": 0})
		// The first patient's instance arrives again last: the flag now
		// names the second, and both are still found.
		mustPut(t, x, withNames(Flagged(named(Record("1.2.7", "1.2.7.1", "1.2.7.1.2", attrs("S100", "SURREY")), "Surrey^Sam"),
			gateway.PatientIdentity{ID: "H200", Issuer: "HAMPSHIRE"}), "Hants^Hal"))
		search(gateway.LevelStudy, both)
	})
	t.Run("IdentityConflictNamesStayWithTheirFlag", func(t *testing.T) {
		// An instance flagged without names (by an earlier version) in a
		// study whose latest instance's flag carries names in another
		// order, one of them unknown (an empty value): each instance row
		// shows the study's flag as its patient sees it, names aligned,
		// never its record's own, nor the latest patient's issuer or birth
		// date; a name search returns each name under its own patient's
		// ID, and the unknown name's position is kept.
		x, ctx := newIndex(t), t.Context()
		attrs := func(pid, name string) map[string]any {
			return map[string]any{dicomcodec.TagPatientID: pid, dicomcodec.TagPatientName: dicomcodec.PersonName{Alphabetic: name}, dicomcodec.TagModality: "CT"}
		}
		s100, h200 := gateway.PatientIdentity{ID: "S100"}, gateway.PatientIdentity{ID: "H200"}
		mustPut(t, x, Record("1.2.9", "1.2.9.1", "1.2.9.1.1", attrs("S100", "Surrey^Sam")))
		mustPut(t, x, Flagged(Record("1.2.9", "1.2.9.2", "1.2.9.2.1", attrs("H200", "Hants^Hal")), s100))
		latest := Flagged(Record("1.2.9", "1.2.9.3", "1.2.9.3.1", attrs("K300", "Kent^Kay")), h200, s100)
		latest.Metadata[gateway.TagIssuerOfPatientID] = dicomcodec.Attribute{VR: "LO", Value: []any{"KENT"}}
		latest.Metadata[dicomcodec.TagPatientBirthDate] = dicomcodec.Attribute{VR: "DA", Value: []any{"19700101"}}
		latest.Metadata[gateway.TagIdentityConflictNames] = dicomcodec.Attribute{VR: "PN",
			Value: []any{nil, dicomcodec.PersonName{Alphabetic: "Surrey^Sam"}}} // H200's name not known
		mustPut(t, x, latest)
		res, err := x.Search(ctx, parseQuery(t, gateway.LevelInstance, "1.2.9", "", "includefield=all"))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Items) != 3 {
			t.Fatalf("%d instances, want 3", len(res.Items))
		}
		nameOf := map[string]string{"S100": "Surrey^Sam", "H200": "", "K300": "Kent^Kay"} // as the study's flag knows them
		for _, d := range res.Items {
			sop := d.String(dicomcodec.TagSOPInstanceUID)
			others, flagged := gateway.IdentityConflicts(d)
			if !flagged || len(others) != 2 {
				t.Errorf("instance %s: flag %v naming %v, want the study's two other identities", sop, flagged, others)
			}
			if pid := d.String(dicomcodec.TagPatientID); pid != "K300" && (d.String(gateway.TagIssuerOfPatientID) != "" || d.String(dicomcodec.TagPatientBirthDate) != "") {
				t.Errorf("instance %s of %s shows the latest patient's issuer %q or birth date %q", sop, pid,
					d.String(gateway.TagIssuerOfPatientID), d.String(dicomcodec.TagPatientBirthDate))
			}
			names := d[gateway.TagIdentityConflictNames].Value
			for j, o := range others {
				if o.ID == d.String(dicomcodec.TagPatientID) {
					t.Errorf("instance %s: the flag names its own patient", sop)
				}
				name := ""
				if j < len(names) {
					if pns := gateway.PersonNamesOf(dicomcodec.Attribute{VR: "PN", Value: names[j : j+1]}); len(pns) == 1 {
						name = pns[0].Alphabetic
					}
				}
				if name != nameOf[o.ID] {
					t.Errorf("instance %s: the flag's %s is named %q, want %q", sop, o.ID, name, nameOf[o.ID])
				}
			}
		}
		// Asked for alone, the names come with their private creator.
		res, err = x.Search(ctx, parseQuery(t, gateway.LevelInstance, "1.2.9", "", "includefield=00091002"))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range res.Items {
			if _, ok := d[gateway.TagIdentityConflictNames]; ok && d.String(gateway.TagGatewayPrivateCreator) != gateway.GatewayPrivateCreator {
				t.Errorf("instance %s: names without their private creator", d.String(dicomcodec.TagSOPInstanceUID))
			}
		}
		for name, pid := range map[string]string{"Surrey*": "S100", "Hants*": "", "Kent*": "K300"} {
			res, err := x.Search(ctx, parseQuery(t, gateway.LevelStudy, "", "", "PatientName="+name))
			if err != nil {
				t.Fatal(err)
			}
			if pid == "" {
				if len(res.Items) != 0 {
					t.Errorf("PatientName=%s: %d studies, want none (the flag does not know the name)", name, len(res.Items))
				}
				continue
			}
			if len(res.Items) != 1 || res.Items[0].String(dicomcodec.TagPatientID) != pid {
				t.Errorf("PatientName=%s: %d studies, want 1 shown as %s", name, len(res.Items), pid)
			} else if got := gateway.PersonNamesOf(res.Items[0][dicomcodec.TagPatientName]); len(got) != 1 || got[0].Alphabetic != nameOf[pid] {
				t.Errorf("PatientName=%s shows %v, want %s", name, got, nameOf[pid])
			}
		}
	})
	t.Run("Queries", func(t *testing.T) { TestIndexQueries(t, newIndex) })
}

func mustPut(t *testing.T, x gateway.Index, rec *gateway.InstanceRecord) {
	t.Helper()
	if _, created, err := x.PutInstance(t.Context(), rec); err != nil || !created {
		t.Fatalf("PutInstance(%s) = created %v, err %v", rec.SOPInstanceUID, created, err)
	}
}

func recordSOPs(recs []*gateway.InstanceRecord) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.SOPInstanceUID
	}
	return out
}

func studyDataset(t *testing.T, x gateway.Index, study string) dicomcodec.Dataset {
	t.Helper()
	res, err := x.Search(t.Context(), &gateway.Query{Level: gateway.LevelStudy, StudyInstanceUID: study, IncludeAll: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Items) != 1 {
		t.Fatalf("study %s: %d results, want 1", study, len(res.Items))
	}
	return res.Items[0]
}

func studyValues(t *testing.T, x gateway.Index, study, tag string) []string {
	t.Helper()
	var out []string
	for _, v := range studyDataset(t, x, study)[tag].Value {
		out = append(out, fmt.Sprint(v))
	}
	return out
}

func intValue(d dicomcodec.Dataset, tag string) int64 {
	a := d[tag]
	if len(a.Value) == 0 {
		return -1
	}
	switch v := a.Value[0].(type) {
	case int64:
		return v
	case float64:
		return int64(v)
	}
	return -1
}

func assertCounts(t *testing.T, x gateway.Index, study string, series, instances int64) {
	t.Helper()
	d := studyDataset(t, x, study)
	if got := intValue(d, gateway.TagNumberOfStudyRelatedSeries); got != series {
		t.Errorf("study %s NumberOfStudyRelatedSeries=%d, want %d", study, got, series)
	}
	if got := intValue(d, gateway.TagNumberOfStudyRelatedInstances); got != instances {
		t.Errorf("study %s NumberOfStudyRelatedInstances=%d, want %d", study, got, instances)
	}
}

// Study UIDs of the query fixture. Their order in every study result is
// newest StudyDate first: S4, S5, S2, S1, S3, then S6 (no date).
const (
	qS1 = "1.2.826.0.1.1"
	qS2 = "1.2.826.0.1.2"
	qS3 = "1.2.826.0.1.3"
	qS4 = "1.2.826.0.1.4"
	qS5 = "1.2.826.0.1.5"
	qS6 = "1.2.826.0.1.6"

	classCT = "1.2.840.10008.5.1.4.1.1.2"
	classSR = "1.2.840.10008.5.1.4.1.1.88.11"
)

type fixtureStudy struct {
	uid        string
	name       any
	pid        string
	date, time string
	accession  string
	sex        string
	series     []fixtureSeries
	extra      map[string]any
}

type fixtureSeries struct {
	modality  string
	number    int64
	class     string
	instances int
}

var queryFixture = []fixtureStudy{
	{uid: qS1, name: dicomcodec.PersonName{Alphabetic: "Smith^John"}, pid: "P001", date: "20200115", time: "101500", accession: "A100", sex: "M",
		series: []fixtureSeries{{"CT", 1, classCT, 2}, {"SR", 2, classSR, 1}},
		extra: map[string]any{
			"00081030": "CT CHEST",
			"00081110": []any{dicomcodec.Dataset{
				"00081150": {VR: "UI", Value: []any{"1.2.840.10008.3.1.2.3.1"}},
				"00081155": {VR: "UI", Value: []any{"1.2.3.99.1"}},
			}},
		}},
	{uid: qS2, name: dicomcodec.PersonName{Alphabetic: "Smyth^Jane"}, pid: "P002", date: "20200301", time: "083000", accession: "A200", sex: "F",
		series: []fixtureSeries{{"MR", 1, classCT, 1}}},
	{uid: qS3, name: dicomcodec.PersonName{Alphabetic: "Müller^Hans"}, pid: "P003", date: "20191231", time: "235959", accession: "A300", sex: "M",
		series: []fixtureSeries{{"CT", 1, classCT, 1}}},
	{uid: qS4, name: dicomcodec.PersonName{Alphabetic: "Yamada^Tarou", Ideographic: "山田^太郎", Phonetic: "やまだ^たろう"}, pid: "P004", date: "20210610", time: "120000", accession: "A400", sex: "M",
		series: []fixtureSeries{{"US", 1, classCT, 1}}},
	{uid: qS5, name: dicomcodec.PersonName{Alphabetic: "Smith^John"}, pid: "P001", date: "20210101", accession: "A500", sex: "M",
		series: []fixtureSeries{{"MR", 2, classCT, 1}, {"CT", 1, classCT, 1}}},
	{uid: qS6, name: dicomcodec.PersonName{Alphabetic: "O'Brien^Pat"}, pid: "P006", sex: "O",
		series: []fixtureSeries{{"MG", 1, classCT, 1}}},
}

// seriesUID and sopUID name the fixture's series (by position, from 1) and
// instances.
func seriesUID(study string, i int) string { return fmt.Sprintf("%s.%d", study, i) }
func sopUID(study string, i, j int) string { return fmt.Sprintf("%s.%d.%d", study, i, j) }

// LoadQueryFixture puts the query suite's studies into x.
func LoadQueryFixture(t *testing.T, x gateway.Index) {
	t.Helper()
	for _, st := range queryFixture {
		for i, se := range st.series {
			for j := 1; j <= se.instances; j++ {
				attrs := map[string]any{
					dicomcodec.TagPatientName:          st.name,
					dicomcodec.TagPatientID:            st.pid,
					dicomcodec.TagPatientSex:           st.sex,
					dicomcodec.TagAccessionNumber:      st.accession,
					dicomcodec.TagModality:             se.modality,
					dicomcodec.TagSeriesNumber:         se.number,
					dicomcodec.TagInstanceNumber:       int64(j),
					dicomcodec.TagSOPClassUID:          se.class,
					dicomcodec.TagRows:                 int64(256 * j),
					dicomcodec.TagSpecificCharacterSet: "ISO_IR 192",
				}
				if st.date != "" {
					attrs[dicomcodec.TagStudyDate] = st.date
				}
				if st.time != "" {
					attrs[dicomcodec.TagStudyTime] = st.time
				}
				if st.accession == "" {
					delete(attrs, dicomcodec.TagAccessionNumber)
				}
				for k, v := range st.extra {
					attrs[k] = v
				}
				rec := Record(st.uid, seriesUID(st.uid, i+1), sopUID(st.uid, i+1, j), attrs)
				rec.SOPClassUID = se.class
				mustPut(t, x, rec)
			}
		}
	}
}

// TestIndexQueries is the QIDO-RS query suite: every matching type at every
// level, includefield, paging and character sets, with the expected results
// in order.
func TestIndexQueries(t *testing.T, newIndex func(t *testing.T) gateway.Index) {
	x := newIndex(t)
	LoadQueryFixture(t, x)
	all := []string{qS4, qS5, qS2, qS1, qS3, qS6}
	for _, tt := range []struct {
		name          string
		level         gateway.QueryLevel
		study, series string
		params        string
		want          []string // the level's UIDs, in order
	}{
		{"Universal", gateway.LevelStudy, "", "", "", all},
		{"UniversalEmptyValue", gateway.LevelStudy, "", "", "PatientName=", all},
		{"PatientIDSingle", gateway.LevelStudy, "", "", "PatientID=P001", []string{qS5, qS1}},
		{"PatientIDByTag", gateway.LevelStudy, "", "", "00100020=P001", []string{qS5, qS1}},
		{"PatientIDWildcard", gateway.LevelStudy, "", "", "PatientID=P00?", all},
		{"PatientIDNoMatch", gateway.LevelStudy, "", "", "PatientID=NOPE", nil},
		{"PatientIDIsCaseSensitive", gateway.LevelStudy, "", "", "PatientID=p001", nil},
		{"NameCaseInsensitive", gateway.LevelStudy, "", "", "PatientName=smith%5Ejohn", []string{qS5, qS1}},
		{"NameUnencoded", gateway.LevelStudy, "", "", "PatientName=SMITH^JOHN", []string{qS5, qS1}},
		{"NameSingleNeedsWholeName", gateway.LevelStudy, "", "", "PatientName=Smith", nil},
		{"NamePrefix", gateway.LevelStudy, "", "", "PatientName=Sm*", []string{qS5, qS2, qS1}},
		{"NameQuestionMark", gateway.LevelStudy, "", "", "PatientName=SM%3FTH*", []string{qS5, qS2, qS1}},
		{"NameInfix", gateway.LevelStudy, "", "", "PatientName=*ll*", []string{qS3}},
		{"NameLeadingStar", gateway.LevelStudy, "", "", "PatientName=*john", []string{qS5, qS1}},
		{"NameApostrophe", gateway.LevelStudy, "", "", "PatientName=o'brien*", []string{qS6}},
		{"NameUTF8Encoded", gateway.LevelStudy, "", "", "PatientName=M%C3%BCller*", []string{qS3}},
		{"NameUTF8LowerCase", gateway.LevelStudy, "", "", "PatientName=müller^hans", []string{qS3}},
		{"NameIdeographic", gateway.LevelStudy, "", "", "PatientName=山田*", []string{qS4}},
		{"NamePhonetic", gateway.LevelStudy, "", "", "PatientName=やまだ^たろう", []string{qS4}},
		{"NameAllGroups", gateway.LevelStudy, "", "", "PatientName=Yamada^Tarou=山田^太郎=やまだ^たろう", []string{qS4}},
		// John by prefix, Jane by code: both are J500 (Soundex keeps the
		// consonants only).
		{"FuzzyGivenName", gateway.LevelStudy, "", "", "PatientName=john&fuzzymatching=true", []string{qS5, qS2, qS1}},
		{"FuzzyGivenNamePrefixOnly", gateway.LevelStudy, "", "", "PatientName=joh*&fuzzymatching=true", []string{qS5, qS1}},
		{"FuzzyWordsAnyOrder", gateway.LevelStudy, "", "", "PatientName=hans%20m%C3%BCl&fuzzymatching=true", []string{qS3}},
		{"FuzzyIdeographic", gateway.LevelStudy, "", "", "PatientName=太郎&fuzzymatching=true", []string{qS4}},
		{"FuzzyOff", gateway.LevelStudy, "", "", "PatientName=john&fuzzymatching=false", nil},
		// Phonetic: Smyth and Smith are both S530, so the word matches by
		// prefix (Smyth^Jane) or by code (Smith^John).
		{"FuzzyPhonetic", gateway.LevelStudy, "", "", "PatientName=smyth&fuzzymatching=true", []string{qS5, qS2, qS1}},
		{"FuzzyPhoneticOff", gateway.LevelStudy, "", "", "PatientName=smyth", nil},
		// Both words by code, across the accent: MULER and Müller are M460,
		// HANZ and Hans H520.
		{"FuzzyPhoneticEveryWord", gateway.LevelStudy, "", "", "PatientName=muler%5Ehanz&fuzzymatching=true", []string{qS3}},
		{"FuzzyPhoneticOneWordMisses", gateway.LevelStudy, "", "", "PatientName=smyth%20hanz&fuzzymatching=true", nil},
		{"FuzzyPhoneticApostrophe", gateway.LevelStudy, "", "", "PatientName=obrian&fuzzymatching=true", []string{qS6}},
		// A word with a wildcard matches by prefix only: SMYT* is not
		// compared by code, so Smith^John does not match.
		{"FuzzyWildcardNotPhonetic", gateway.LevelStudy, "", "", "PatientName=smyt*&fuzzymatching=true", []string{qS2}},
		// The second word by code, the first by prefix (the index looks up
		// the first word only; the engine checks the rest).
		{"FuzzyPhoneticSecondWord", gateway.LevelStudy, "", "", "PatientName=ha%20mulller&fuzzymatching=true", []string{qS3}},
		{"FuzzyPhoneticLastPage", gateway.LevelStudy, "", "", "PatientName=smyth&fuzzymatching=true&limit=2&offset=1", []string{qS2, qS1}},
		{"DateSingle", gateway.LevelStudy, "", "", "StudyDate=20200115", []string{qS1}},
		{"DateClosedRange", gateway.LevelStudy, "", "", "StudyDate=20200101-20201231", []string{qS2, qS1}},
		{"DateOpenStart", gateway.LevelStudy, "", "", "StudyDate=-20200115", []string{qS1, qS3}},
		{"DateOpenEnd", gateway.LevelStudy, "", "", "StudyDate=20210101-", []string{qS4, qS5}},
		{"DateRangeSameDay", gateway.LevelStudy, "", "", "StudyDate=20191231-20191231", []string{qS3}},
		{"TimeRange", gateway.LevelStudy, "", "", "StudyTime=1000-1200", []string{qS4, qS1}},
		{"TimePartialSingle", gateway.LevelStudy, "", "", "StudyTime=08", []string{qS2}},
		{"StudyUIDList", gateway.LevelStudy, "", "", "StudyInstanceUID=" + qS1 + "%5C" + qS3, []string{qS1, qS3}},
		{"StudyUIDListComma", gateway.LevelStudy, "", "", "StudyInstanceUID=" + qS3 + "," + qS1, []string{qS1, qS3}},
		{"StudyUIDSingle", gateway.LevelStudy, "", "", "StudyInstanceUID=" + qS2, []string{qS2}},
		{"Accession", gateway.LevelStudy, "", "", "AccessionNumber=A200", []string{qS2}},
		{"AccessionWildcard", gateway.LevelStudy, "", "", "AccessionNumber=A*00", []string{qS4, qS5, qS2, qS1, qS3}},
		{"ModalitiesInStudy", gateway.LevelStudy, "", "", "ModalitiesInStudy=CT", []string{qS5, qS1, qS3}},
		{"ModalitiesInStudyList", gateway.LevelStudy, "", "", "ModalitiesInStudy=MR%5CUS", []string{qS4, qS5, qS2}},
		{"ModalitiesInStudyComma", gateway.LevelStudy, "", "", "ModalitiesInStudy=CT,MG", []string{qS5, qS1, qS3, qS6}},
		{"SequenceByTag", gateway.LevelStudy, "", "", "00081110.00081155=1.2.3.99.1", []string{qS1}},
		{"SequenceByKeyword", gateway.LevelStudy, "", "", "ReferencedStudySequence.ReferencedSOPInstanceUID=1.2.3.99.1", []string{qS1}},
		{"SequenceNoMatch", gateway.LevelStudy, "", "", "00081110.00081155=1.2.3.99.2", nil},
		{"ComputedCount", gateway.LevelStudy, "", "", "NumberOfStudyRelatedInstances=3", []string{qS1}},
		{"NotReturnedByDefault", gateway.LevelStudy, "", "", "StudyDescription=CT*", []string{qS1}},
		{"Combined", gateway.LevelStudy, "", "", "PatientName=Smith*&ModalitiesInStudy=MR", []string{qS5}},
		{"CombinedIDAndDate", gateway.LevelStudy, "", "", "PatientID=P001&StudyDate=20210101-", []string{qS5}},
		{"CombinedNameAndDate", gateway.LevelStudy, "", "", "PatientName=S*&StudyDate=-20200201", []string{qS1}},
		{"Sex", gateway.LevelStudy, "", "", "PatientSex=F", []string{qS2}},
		{"ScopedStudy", gateway.LevelStudy, qS3, "", "", []string{qS3}},
		{"SeriesLevelKeyIgnoredAtStudy", gateway.LevelStudy, "", "", "Modality=CT", all},

		{"SeriesAll", gateway.LevelSeries, "", "", "PatientID=P001", []string{seriesUID(qS5, 2), seriesUID(qS5, 1), seriesUID(qS1, 1), seriesUID(qS1, 2)}},
		{"SeriesModality", gateway.LevelSeries, "", "", "Modality=CT", []string{seriesUID(qS5, 2), seriesUID(qS1, 1), seriesUID(qS3, 1)}},
		{"SeriesModalityList", gateway.LevelSeries, "", "", "Modality=SR%5CUS", []string{seriesUID(qS4, 1), seriesUID(qS1, 2)}},
		{"SeriesOfStudy", gateway.LevelSeries, qS1, "", "", []string{seriesUID(qS1, 1), seriesUID(qS1, 2)}},
		{"SeriesOfStudyModality", gateway.LevelSeries, qS1, "", "Modality=SR", []string{seriesUID(qS1, 2)}},
		{"SeriesNumber", gateway.LevelSeries, qS1, "", "SeriesNumber=2", []string{seriesUID(qS1, 2)}},
		{"SeriesCount", gateway.LevelSeries, "", "", "NumberOfSeriesRelatedInstances=2", []string{seriesUID(qS1, 1)}},
		{"SeriesUIDList", gateway.LevelSeries, "", "", "SeriesInstanceUID=" + seriesUID(qS2, 1) + "," + seriesUID(qS3, 1), []string{seriesUID(qS2, 1), seriesUID(qS3, 1)}},
		{"SeriesStudyKey", gateway.LevelSeries, "", "", "PatientName=*ller*", []string{seriesUID(qS3, 1)}},
		{"SeriesUnknownStudy", gateway.LevelSeries, "1.2.999", "", "", nil},

		{"InstancesOfSeries", gateway.LevelInstance, qS1, seriesUID(qS1, 1), "", []string{sopUID(qS1, 1, 1), sopUID(qS1, 1, 2)}},
		{"InstancesOfStudy", gateway.LevelInstance, qS1, "", "", []string{sopUID(qS1, 1, 1), sopUID(qS1, 1, 2), sopUID(qS1, 2, 1)}},
		{"InstancesSOPClass", gateway.LevelInstance, qS1, "", "SOPClassUID=" + classSR, []string{sopUID(qS1, 2, 1)}},
		{"InstancesNumber", gateway.LevelInstance, qS1, "", "InstanceNumber=2", []string{sopUID(qS1, 1, 2)}},
		{"InstancesRows", gateway.LevelInstance, "", "", "Rows=512", []string{sopUID(qS1, 1, 2)}},
		{"InstancesAllStudyAndSeriesKeys", gateway.LevelInstance, "", "", "PatientID=P001&Modality=MR", []string{sopUID(qS5, 1, 1)}},
		{"InstancesSOPUID", gateway.LevelInstance, "", "", "SOPInstanceUID=" + sopUID(qS3, 1, 1), []string{sopUID(qS3, 1, 1)}},
		{"InstancesName", gateway.LevelInstance, "", "", "PatientName=山田^太郎", []string{sopUID(qS4, 1, 1)}},
		{"InstancesUnknownSeries", gateway.LevelInstance, qS1, "1.2.999", "", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := parseQuery(t, tt.level, tt.study, tt.series, tt.params)
			res, err := x.Search(t.Context(), q)
			if err != nil {
				t.Fatal(err)
			}
			if got := levelUIDs(tt.level, res.Items); !slices.Equal(got, tt.want) {
				t.Fatalf("%s: got %v, want %v", tt.params, got, tt.want)
			}
			if res.More {
				t.Fatalf("More=true without a limit")
			}
		})
	}

	t.Run("Paging", func(t *testing.T) {
		var got []string
		for offset := 0; offset < 6; offset += 2 {
			q := parseQuery(t, gateway.LevelStudy, "", "", fmt.Sprintf("limit=2&offset=%d", offset))
			res, err := x.Search(t.Context(), q)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := len(res.Items), 2; got != want {
				t.Fatalf("offset %d: %d items, want %d", offset, got, want)
			}
			if got, want := res.More, offset < 4; got != want {
				t.Fatalf("offset %d: More=%v, want %v", offset, got, want)
			}
			got = append(got, levelUIDs(gateway.LevelStudy, res.Items)...)
		}
		if want := all; !slices.Equal(got, want) {
			t.Fatalf("pages joined: %v, want %v", got, want)
		}
		q := parseQuery(t, gateway.LevelStudy, "", "", "limit=10&offset=6")
		res, err := x.Search(t.Context(), q)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Items) != 0 || res.More {
			t.Fatalf("past the end: %d items, More=%v; want 0, false", len(res.Items), res.More)
		}
	})
	t.Run("PagingInstances", func(t *testing.T) {
		var got []string
		for offset := 0; offset < 9; offset += 4 {
			res, err := x.Search(t.Context(), parseQuery(t, gateway.LevelInstance, "", "", fmt.Sprintf("limit=4&offset=%d", offset)))
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, levelUIDs(gateway.LevelInstance, res.Items)...)
		}
		res, err := x.Search(t.Context(), parseQuery(t, gateway.LevelInstance, "", "", ""))
		if err != nil {
			t.Fatal(err)
		}
		if want := levelUIDs(gateway.LevelInstance, res.Items); !slices.Equal(got, want) || len(want) != 9 {
			t.Fatalf("pages joined: %v, want %v (9 instances)", got, want)
		}
	})
	t.Run("PagingRemaining", func(t *testing.T) {
		// The matches after a page are those of the unpaged search minus
		// the page and what offset skipped.
		for _, tt := range []struct {
			level         gateway.QueryLevel
			filter        string
			limit, offset int
		}{
			{gateway.LevelStudy, "", 2, 0},
			{gateway.LevelStudy, "", 2, 2},
			{gateway.LevelStudy, "", 2, 4},
			{gateway.LevelStudy, "PatientID=P001", 1, 0},
			{gateway.LevelSeries, "", 1, 0},
			{gateway.LevelSeries, "", 3, 4},
			{gateway.LevelSeries, "Modality=CT", 1, 1},
			{gateway.LevelInstance, "", 4, 0},
			{gateway.LevelInstance, "", 4, 4},
			{gateway.LevelInstance, "", 9, 0},
		} {
			all, err := x.Search(t.Context(), parseQuery(t, tt.level, "", "", tt.filter))
			if err != nil {
				t.Fatal(err)
			}
			want := max(0, len(all.Items)-tt.offset-tt.limit)
			params := fmt.Sprintf("%s&limit=%d&offset=%d", tt.filter, tt.limit, tt.offset)
			res, err := x.Search(t.Context(), parseQuery(t, tt.level, "", "", params))
			if err != nil {
				t.Fatal(err)
			}
			if len(all.Items) < 2 {
				t.Fatalf("level %d %s: %d matches in all, the case tests nothing", tt.level, tt.filter, len(all.Items))
			}
			if res.Remaining != want || res.More != (want > 0) || res.RemainingAtLeast {
				t.Errorf("level %d %s: Remaining=%d More=%v RemainingAtLeast=%v, want %d, %v, false",
					tt.level, params, res.Remaining, res.More, res.RemainingAtLeast, want, want > 0)
			}
		}
	})
	t.Run("PagingRemainingBounded", func(t *testing.T) {
		testRemainingBounded(t, newIndex(t))
	})
	t.Run("ReturnedAttributes", func(t *testing.T) {
		res, err := x.Search(t.Context(), parseQuery(t, gateway.LevelStudy, "", "", "StudyInstanceUID="+qS1))
		if err != nil {
			t.Fatal(err)
		}
		d := res.Items[0]
		for _, tag := range []string{dicomcodec.TagStudyDate, dicomcodec.TagStudyTime, dicomcodec.TagAccessionNumber, dicomcodec.TagModalitiesInStudy,
			dicomcodec.TagPatientName, dicomcodec.TagPatientID, dicomcodec.TagPatientSex, dicomcodec.TagStudyInstanceUID,
			gateway.TagNumberOfStudyRelatedSeries, gateway.TagNumberOfStudyRelatedInstances, gateway.TagInstanceAvailability} {
			if _, ok := d[tag]; !ok {
				t.Errorf("study result lacks %s (%s)", tag, dicomcodec.TagKeyword(tag))
			}
		}
		if _, ok := d["00081030"]; ok {
			t.Errorf("StudyDescription returned without includefield")
		}
		if got, want := fmt.Sprint(d[dicomcodec.TagModalitiesInStudy].Value), "[CT SR]"; got != want {
			t.Errorf("ModalitiesInStudy=%s, want %s", got, want)
		}
		if got, want := personName(d), "Smith^John"; got != want {
			t.Errorf("PatientName=%q, want %q", got, want)
		}
	})
	t.Run("IncludeField", func(t *testing.T) {
		for _, tt := range []struct {
			params string
			tag    string
			want   bool
		}{
			{"includefield=StudyDescription", "00081030", true},
			{"includefield=00081030", "00081030", true},
			{"includefield=all", "00081030", true},
			{"includefield=all", gateway.TagSOPClassesInStudy, true},
			{"includefield=PatientSex,StudyDescription", "00081030", true},
			{"StudyDescription=CT*", "00081030", true}, // matching keys are returned
			{"", "00081030", false},
		} {
			res, err := x.Search(t.Context(), parseQuery(t, gateway.LevelStudy, qS1, "", tt.params))
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Items) != 1 {
				t.Fatalf("%s: %d items, want 1", tt.params, len(res.Items))
			}
			if _, got := res.Items[0][tt.tag]; got != tt.want {
				t.Errorf("%s: has %s=%v, want %v", tt.params, tt.tag, got, tt.want)
			}
		}
	})
	t.Run("IncludeFieldDoesNotChangeMatches", func(t *testing.T) {
		for _, p := range []string{"PatientName=Sm*", "ModalitiesInStudy=CT", "StudyDate=20200101-"} {
			a, err := x.Search(t.Context(), parseQuery(t, gateway.LevelStudy, "", "", p))
			if err != nil {
				t.Fatal(err)
			}
			b, err := x.Search(t.Context(), parseQuery(t, gateway.LevelStudy, "", "", p+"&includefield=all"))
			if err != nil {
				t.Fatal(err)
			}
			if got, want := levelUIDs(gateway.LevelStudy, b.Items), levelUIDs(gateway.LevelStudy, a.Items); !slices.Equal(got, want) {
				t.Errorf("%s: with includefield=all %v, without %v", p, got, want)
			}
		}
	})
	t.Run("SeriesReturnsStudyAttributesWhenUnscoped", func(t *testing.T) {
		res, err := x.Search(t.Context(), parseQuery(t, gateway.LevelSeries, "", "", "SeriesInstanceUID="+seriesUID(qS1, 1)))
		if err != nil {
			t.Fatal(err)
		}
		d := res.Items[0]
		if got, want := d.String(dicomcodec.TagPatientID), "P001"; got != want {
			t.Errorf("PatientID=%q, want %q", got, want)
		}
		if got, want := intValue(d, gateway.TagNumberOfSeriesRelatedInstances), int64(2); got != want {
			t.Errorf("NumberOfSeriesRelatedInstances=%d, want %d", got, want)
		}
		if got, want := d.String(dicomcodec.TagModality), "CT"; got != want {
			t.Errorf("Modality=%q, want %q", got, want)
		}
		res, err = x.Search(t.Context(), parseQuery(t, gateway.LevelSeries, qS1, "", ""))
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := res.Items[0][dicomcodec.TagPatientID]; ok {
			t.Errorf("/studies/{study}/series returned PatientID, a study attribute")
		}
	})
	t.Run("AuditFields", func(t *testing.T) {
		res, err := x.Search(t.Context(), parseQuery(t, gateway.LevelSeries, qS1, "", ""))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(res.StudyUIDs, []string{qS1}) || !slices.Equal(res.PatientIDs, []string{"P001"}) {
			t.Fatalf("StudyUIDs=%v PatientIDs=%v, want [%s] [P001]", res.StudyUIDs, res.PatientIDs, qS1)
		}
	})
}

// testRemainingBounded checks that counting the matches after a page stops
// at its bounds and says so: gateway.MaxCountedRemaining matches (one
// series holding more instances than that), and gateway.MaxCountedStudies
// studies for an instance search (more one-instance studies than that).
func testRemainingBounded(t *testing.T, x gateway.Index) {
	const big = "1.2.826.0.1.3680043.10.1017.1"
	manyInstances := gateway.MaxCountedRemaining + 5
	for j := 1; j <= manyInstances; j++ {
		mustPut(t, x, Record(big, big+".1", fmt.Sprintf("%s.1.%d", big, j), map[string]any{dicomcodec.TagPatientID: "PBIG", dicomcodec.TagStudyDate: "20300101"}))
	}
	manyStudies := gateway.MaxCountedStudies + 10
	for i := 1; i <= manyStudies; i++ {
		st := fmt.Sprintf("1.2.826.0.1.3680043.10.1017.2.%d", i)
		mustPut(t, x, Record(st, st+".1", st+".1.1", map[string]any{dicomcodec.TagPatientID: "PMANY", dicomcodec.TagStudyDate: "20250101"}))
	}
	for _, tt := range []struct {
		name   string
		level  gateway.QueryLevel
		study  string
		params string
		// the matches after the page: exact when !atLeast, else the count
		// must lie in [min, actual)
		min, actual int
		atLeast     bool
	}{
		{"InstancesOfOneSeries", gateway.LevelInstance, big, "limit=2", gateway.MaxCountedRemaining, manyInstances - 2, true},
		{"InstancesJustUnderBound", gateway.LevelInstance, big, fmt.Sprintf("limit=2&offset=%d", manyInstances-2-gateway.MaxCountedRemaining), gateway.MaxCountedRemaining, gateway.MaxCountedRemaining, false},
		{"InstancesOverManyStudies", gateway.LevelInstance, "", "PatientID=PMANY&limit=1", gateway.MaxCountedStudies, manyStudies - 1, true},
		{"StudiesCountedWithoutStudyBound", gateway.LevelStudy, "", "PatientID=PMANY&limit=1", manyStudies - 1, manyStudies - 1, false},
	} {
		res, err := x.Search(t.Context(), parseQuery(t, tt.level, tt.study, "", tt.params))
		if err != nil {
			t.Fatal(err)
		}
		if !res.More || res.RemainingAtLeast != tt.atLeast {
			t.Errorf("%s: More=%v RemainingAtLeast=%v, want true, %v", tt.name, res.More, res.RemainingAtLeast, tt.atLeast)
		}
		if tt.atLeast && (res.Remaining < tt.min || res.Remaining >= tt.actual) {
			t.Errorf("%s: Remaining=%d, want a lower bound in [%d, %d)", tt.name, res.Remaining, tt.min, tt.actual)
		}
		if !tt.atLeast && res.Remaining != tt.actual {
			t.Errorf("%s: Remaining=%d, want %d", tt.name, res.Remaining, tt.actual)
		}
	}
}

func parseQuery(t *testing.T, level gateway.QueryLevel, study, series, raw string) *gateway.Query {
	t.Helper()
	params, err := url.ParseQuery(raw)
	if err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	q, err := gateway.ParseQuery(level, study, series, params, gateway.QueryLimits{Default: 100, Max: 1000})
	if err != nil {
		t.Fatalf("ParseQuery(%s): %v", raw, err)
	}
	return q
}

func levelUIDs(level gateway.QueryLevel, items []dicomcodec.Dataset) []string {
	tag := map[gateway.QueryLevel]string{
		gateway.LevelStudy: dicomcodec.TagStudyInstanceUID, gateway.LevelSeries: dicomcodec.TagSeriesInstanceUID,
		gateway.LevelInstance: dicomcodec.TagSOPInstanceUID,
	}[level]
	var out []string
	for _, d := range items {
		out = append(out, d.String(tag))
	}
	return out
}

func personName(d dicomcodec.Dataset) string {
	pns := gateway.PersonNamesOf(d[dicomcodec.TagPatientName])
	if len(pns) == 0 {
		return ""
	}
	return pns[0].String()
}

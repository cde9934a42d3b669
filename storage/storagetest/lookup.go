package storagetest

import (
	"fmt"
	"slices"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// testStudyLookups: exact PatientID and AccessionNumber searches (which
// indexes answer from per-value lookups) find every study of the value,
// newest first, across more studies than one search batch, with date
// ranges and paging, and follow a study whose patient changes or that is
// deleted.
func testStudyLookups(t *testing.T, newIndex func(t *testing.T) gateway.Index) {
	t.Run("LookupsAcrossBatches", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		const n = 600 // more than a search batch (256)
		var recs []*gateway.InstanceRecord
		var want []string // newest first
		for i := range n {
			study := fmt.Sprintf("1.2.9.%d", i+1)
			recs = append(recs, Record(study, study+".1", study+".1.1", map[string]any{
				dicomcodec.TagPatientID:       "PAGED",
				dicomcodec.TagAccessionNumber: fmt.Sprintf("ACC%d", i%7),
				dicomcodec.TagStudyDate:       fmt.Sprintf("2020%02d%02d", 1+i/28, 1+i%28), // distinct, increasing with i
			}))
			want = append([]string{study}, want...)
		}
		for i := range 50 {
			study := fmt.Sprintf("1.2.8.%d", i+1)
			recs = append(recs, Record(study, study+".1", study+".1.1", map[string]any{
				dicomcodec.TagPatientID: "OTHER", dicomcodec.TagAccessionNumber: "ACC0", dicomcodec.TagStudyDate: "20200615",
			}))
		}
		putAll(t, x, recs)
		search := func(raw string) []string {
			t.Helper()
			res, err := x.Search(ctx, parseQuery(t, gateway.LevelStudy, "", "", raw))
			if err != nil {
				t.Fatal(err)
			}
			return levelUIDs(gateway.LevelStudy, res.Items)
		}
		if got := search("PatientID=PAGED&limit=1000"); !slices.Equal(got, want) {
			t.Fatalf("PatientID: %d studies (first %v), want %d newest first", len(got), got[:min(3, len(got))], len(want))
		}
		if got := search("PatientID=PAGED&limit=100&offset=550"); !slices.Equal(got, want[550:]) {
			t.Fatalf("PatientID page at 550: %d studies, want the last 50", len(got))
		}
		// i/28+1 is the month: months 3 and 4 are i = 56 … 111.
		if got := search("PatientID=PAGED&StudyDate=20200301-20200428&limit=1000"); !slices.Equal(got, want[n-112:n-56]) {
			t.Fatalf("PatientID with a date range: %d studies, want 56", len(got))
		}
		if got := search("AccessionNumber=ACC3&limit=1000"); len(got) != 86 || slices.ContainsFunc(got, func(s string) bool { return s[:5] != "1.2.9" }) {
			t.Fatalf("AccessionNumber: %d studies, want 86 of patient PAGED", len(got))
		}
		if got := search("AccessionNumber=ACC0&PatientID=OTHER&limit=1000"); len(got) != 50 {
			t.Fatalf("AccessionNumber and PatientID: %d studies, want 50", len(got))
		}
		// A study whose only instance is replaced under another patient
		// moves between the lookups; a deleted one leaves them.
		moved := Record("1.2.9.1", "1.2.9.1.1", "1.2.9.1.1.1", map[string]any{
			dicomcodec.TagPatientID: "MOVED", dicomcodec.TagAccessionNumber: "ACC0", dicomcodec.TagStudyDate: "20200101",
		})
		if err := x.ReplaceInstance(ctx, moved); err != nil {
			t.Fatal(err)
		}
		if err := x.DeleteInstance(ctx, "1.2.9.2.1.1"); err != nil {
			t.Fatal(err)
		}
		if got := search("PatientID=PAGED&limit=1000"); len(got) != n-2 || slices.Contains(got, "1.2.9.1") || slices.Contains(got, "1.2.9.2") {
			t.Fatalf("after a replace and a delete: %d studies for PAGED, want %d without 1.2.9.1 and 1.2.9.2", len(got), n-2)
		}
		if got := search("PatientID=MOVED"); !slices.Equal(got, []string{"1.2.9.1"}) {
			t.Fatalf("PatientID=MOVED: %v", got)
		}
	})
}

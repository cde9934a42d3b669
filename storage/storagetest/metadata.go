package storagetest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// TestMetadataReader is the part of the gateway.Index suite (TestIndex) that covers
// gateway.MetadataReader: entries follow every put, replace and delete and
// list in ListInstances order, with the digest of their record. (The
// prepared metadata they name is read by gateway.MetadataStore from the
// blob store: TestMetadataStore.)
func TestMetadataReader(t *testing.T, newIndex func(t *testing.T) gateway.Index) {
	entrySOPs := func(entries []gateway.MetadataEntry) []string {
		out := make([]string, len(entries))
		for i, e := range entries {
			out[i] = e.SOPInstanceUID
		}
		return out
	}

	t.Run("MetadataFollowsListOrder", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		recs := []*gateway.InstanceRecord{
			Record("1.2.3", "1.2.3.9", "1.2.3.9.1", map[string]any{dicomcodec.TagSeriesNumber: int64(1), dicomcodec.TagInstanceNumber: int64(10)}),
			Record("1.2.3", "1.2.3.9", "1.2.3.9.2", map[string]any{dicomcodec.TagSeriesNumber: int64(1), dicomcodec.TagInstanceNumber: int64(2)}),
			Record("1.2.3", "1.2.3.9", "1.2.3.9.3", map[string]any{dicomcodec.TagSeriesNumber: int64(1)}),
			Record("1.2.3", "1.2.3.1", "1.2.3.1.1", map[string]any{dicomcodec.TagSeriesNumber: int64(2), dicomcodec.TagInstanceNumber: int64(1)}),
			Record("1.2.3", "1.2.3.1", "1.2.3.1.2", map[string]any{dicomcodec.TagSeriesNumber: int64(2), dicomcodec.TagInstanceNumber: int64(-1)}),
		}
		recs[0].Metadata[dicomcodec.TagPixelData] = dicomcodec.Attribute{VR: "OW", BulkDataURI: "bulkdata/7FE00010"}
		for _, r := range recs {
			mustPut(t, x, r)
		}
		for _, series := range []string{"", "1.2.3.9", "1.2.3.1"} {
			listed, err := x.ListInstances(ctx, "1.2.3", series)
			if err != nil {
				t.Fatal(err)
			}
			entries, err := x.MetadataEntries(ctx, "1.2.3", series)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := entrySOPs(entries), recordSOPs(listed); !slices.Equal(got, want) {
				t.Fatalf("series %q: MetadataEntries order %v, want ListInstances order %v", series, got, want)
			}
			for i, rec := range listed {
				if entries[i].Digest != gateway.NewMetadataEntry(rec).Digest {
					t.Errorf("digest of %s is not its record's", rec.SOPInstanceUID)
				}
				if entries[i].StudyInstanceUID != "1.2.3" || entries[i].SeriesInstanceUID != rec.SeriesInstanceUID {
					t.Errorf("entry %d names study %s series %s, want 1.2.3 %s", i, entries[i].StudyInstanceUID, entries[i].SeriesInstanceUID, rec.SeriesInstanceUID)
				}
			}
		}
	})
	t.Run("MetadataUnknownIsNotFound", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		mustPut(t, x, Record("1.2.3", "1.2.3.1", "1.2.3.1.1", nil))
		for _, q := range [][2]string{{"9.9", ""}, {"1.2.3", "9.9"}} {
			if _, err := x.MetadataEntries(ctx, q[0], q[1]); !errors.Is(err, gateway.ErrNotFound) {
				t.Errorf("MetadataEntries(%q, %q): err=%v, want ErrNotFound", q[0], q[1], err)
			}
		}
	})
	t.Run("MetadataFollowsReplaceAndDelete", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		mustPut(t, x, Record("1.2.3", "1.2.3.1", "1.2.3.1.1", map[string]any{dicomcodec.TagInstanceNumber: int64(1)}))
		mustPut(t, x, Record("1.2.3", "1.2.3.1", "1.2.3.1.2", map[string]any{dicomcodec.TagInstanceNumber: int64(2)}))
		before, err := x.MetadataEntries(ctx, "1.2.3", "")
		if err != nil {
			t.Fatal(err)
		}
		replaced := Record("1.2.3", "1.2.3.1", "1.2.3.1.1", map[string]any{dicomcodec.TagInstanceNumber: int64(3), "00081030": "Replaced"})
		replaced.SHA256 = fmt.Sprintf("%x", sha256.Sum256([]byte("other bytes")))
		if err := x.ReplaceInstance(ctx, replaced); err != nil {
			t.Fatal(err)
		}
		after, err := x.MetadataEntries(ctx, "1.2.3", "")
		if err != nil {
			t.Fatal(err)
		}
		if got, want := entrySOPs(after), []string{"1.2.3.1.2", "1.2.3.1.1"}; !slices.Equal(got, want) {
			t.Fatalf("order after replace %v, want %v (instance number 3 now sorts last)", got, want)
		}
		if after[1].Digest == before[0].Digest {
			t.Fatal("digest unchanged after the instance was replaced with other metadata")
		}
		if err := x.DeleteInstance(ctx, "1.2.3.1.2"); err != nil {
			t.Fatal(err)
		}
		if got, _ := x.MetadataEntries(ctx, "1.2.3", ""); !slices.Equal(entrySOPs(got), []string{"1.2.3.1.1"}) {
			t.Fatalf("entries after a delete: %v, want [1.2.3.1.1]", entrySOPs(got))
		}
		if err := x.DeleteInstance(ctx, "1.2.3.1.1"); err != nil {
			t.Fatal(err)
		}
		if _, err := x.MetadataEntries(ctx, "1.2.3", ""); !errors.Is(err, gateway.ErrNotFound) {
			t.Fatalf("MetadataEntries after every instance was deleted: err=%v, want ErrNotFound", err)
		}
	})
	t.Run("MetadataListsLargeSeries", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		n := 2*256 + 3
		recs := make([]*gateway.InstanceRecord, n)
		for i := range recs {
			recs[i] = Record("1.2.3", "1.2.3.1", fmt.Sprintf("1.2.3.1.%d", i+1), map[string]any{dicomcodec.TagInstanceNumber: int64(n - i)})
		}
		putAll(t, x, recs)
		entries, err := x.MetadataEntries(ctx, "1.2.3", "1.2.3.1")
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != n {
			t.Fatalf("%d entries, want %d", len(entries), n)
		}
		for i, e := range entries {
			if want := fmt.Sprintf("1.2.3.1.%d", n-i); e.SOPInstanceUID != want {
				t.Fatalf("entry %d is %s, want %s (InstanceNumber order)", i, e.SOPInstanceUID, want)
			}
		}
	})
}

// putAll stores recs through the backend's batch put when it has one
// (reindex uses it), else one by one.
func putAll(t *testing.T, x gateway.Index, recs []*gateway.InstanceRecord) {
	t.Helper()
	type batcher interface {
		PutInstances(ctx context.Context, recs []*gateway.InstanceRecord) error
	}
	if b, ok := x.(batcher); ok {
		if err := b.PutInstances(t.Context(), recs); err != nil {
			t.Fatal(err)
		}
		return
	}
	for _, r := range recs {
		mustPut(t, x, r)
	}
}

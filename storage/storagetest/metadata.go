package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/filesystem"
)

// TestMetadataReader is the part of the gateway.Index suite (TestIndex) that covers
// gateway.MetadataReader: entries follow every put, replace and delete and
// list in ListInstances order, and the prepared metadata they name reads
// back through a gateway.MetadataStore (on a filesystem blob store: the
// store's own suites run it on every blob store), written as ingest writes
// it, beside the index entry.
func TestMetadataReader(t *testing.T, newIndex func(t *testing.T) gateway.Index) {
	stores := map[gateway.Index]*gateway.MetadataStore{}
	metadataOf := func(t *testing.T, x gateway.Index) *gateway.MetadataStore {
		t.Helper()
		if m, ok := stores[x]; ok {
			return m
		}
		blobs, err := filesystem.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		stores[x] = &gateway.MetadataStore{Blobs: blobs}
		return stores[x]
	}
	mustPut := func(t *testing.T, x gateway.Index, rec *gateway.InstanceRecord) {
		t.Helper()
		if err := metadataOf(t, x).Put(t.Context(), rec); err != nil {
			t.Fatal(err)
		}
		mustPut(t, x, rec)
	}
	readAll := func(t *testing.T, x gateway.Index, entries []gateway.MetadataEntry) ([]string, [][]byte) {
		t.Helper()
		var sops []string
		var values [][]byte
		err := metadataOf(t, x).Read(t.Context(), entries, func(e gateway.MetadataEntry, b []byte) error {
			sops = append(sops, e.SOPInstanceUID)
			values = append(values, bytes.Clone(b))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return sops, values
	}
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
			sops, values := readAll(t, x, entries)
			if !slices.Equal(sops, entrySOPs(entries)) {
				t.Fatalf("series %q: ReadMetadata visited %v, want %v", series, sops, entrySOPs(entries))
			}
			for i, rec := range listed {
				_, want := gateway.PrepareMetadata(rec)
				if !bytes.Equal(values[i], want) {
					t.Errorf("prepared metadata of %s:\n got %s\nwant %s", rec.SOPInstanceUID, values[i], want)
				}
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
		m := metadataOf(t, x)
		if err := m.Put(ctx, replaced); err != nil {
			t.Fatal(err)
		}
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
		_, values := readAll(t, x, after[1:])
		if !bytes.Contains(values[0], []byte("Replaced")) {
			t.Fatalf("prepared metadata after replace lacks the new description: %s", values[0])
		}
		if err := x.DeleteInstance(ctx, "1.2.3.1.2"); err != nil {
			t.Fatal(err)
		}
		if err := m.Delete(ctx, "1.2.3", "1.2.3.1", "1.2.3.1.2"); err != nil {
			t.Fatal(err)
		}
		// A list taken before the delete reads on without the deleted instance.
		sops, _ := readAll(t, x, after)
		if want := []string{"1.2.3.1.1"}; !slices.Equal(sops, want) {
			t.Fatalf("ReadMetadata of a stale list visited %v, want %v", sops, want)
		}
		if err := x.DeleteInstance(ctx, "1.2.3.1.1"); err != nil {
			t.Fatal(err)
		}
		if _, err := x.MetadataEntries(ctx, "1.2.3", ""); !errors.Is(err, gateway.ErrNotFound) {
			t.Fatalf("MetadataEntries after every instance was deleted: err=%v, want ErrNotFound", err)
		}
	})
	t.Run("MetadataReadsInBatches", func(t *testing.T) {
		x, ctx := newIndex(t), t.Context()
		n := 2*256 + 3
		recs := make([]*gateway.InstanceRecord, n)
		for i := range recs {
			recs[i] = Record("1.2.3", "1.2.3.1", fmt.Sprintf("1.2.3.1.%d", i+1), map[string]any{dicomcodec.TagInstanceNumber: int64(n - i)})
		}
		putAll(t, x, recs)
		for _, r := range recs {
			if err := metadataOf(t, x).Put(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		entries, err := x.MetadataEntries(ctx, "1.2.3", "1.2.3.1")
		if err != nil {
			t.Fatal(err)
		}
		// Twice: the first read builds the series object, the second serves it.
		readAll(t, x, entries)
		sops, values := readAll(t, x, entries)
		if len(sops) != n {
			t.Fatalf("ReadMetadata visited %d instances, want %d", len(sops), n)
		}
		for i, sop := range sops {
			if want := fmt.Sprintf("1.2.3.1.%d", n-i); sop != want {
				t.Fatalf("instance %d is %s, want %s (InstanceNumber order)", i, sop, want)
			}
			if !bytes.Contains(values[i], []byte(`"`+sop+`"`)) {
				t.Fatalf("value read for %s does not name it: %.200s", sop, values[i])
			}
		}
		stop := errors.New("stop")
		calls := 0
		err = metadataOf(t, x).Read(ctx, entries, func(gateway.MetadataEntry, []byte) error {
			calls++
			if calls == 3 {
				return stop
			}
			return nil
		})
		if !errors.Is(err, stop) || calls != 3 {
			t.Fatalf("ReadMetadata after fn failed: err=%v after %d calls, want the fn's error after 3", err, calls)
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

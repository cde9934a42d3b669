package storagetest

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// TestMetadataStore runs gateway.MetadataStore on a blob store: prepared
// metadata reads back in entry order from the per-instance objects and then
// from the series object, a series object never outlives a change of its
// series, concurrent writers to one series lose nothing, an instance stored
// before metadata objects existed is prepared from its blob, and deleted
// instances are skipped.
func TestMetadataStore(t *testing.T, newBlobs func(t *testing.T) gateway.BlobStore) {
	// store puts the instances of a synthetic series as ingest does (blob,
	// then prepared metadata) and returns their whole records in order.
	store := func(t *testing.T, blobs gateway.BlobStore, m *gateway.MetadataStore, seed uint64, n int, withMetadata bool) []*gateway.InstanceRecord {
		t.Helper()
		var recs []*gateway.InstanceRecord
		for _, in := range synth.Study(synth.StudySpec{Seed: seed, InstancesPerSeries: n}) {
			key := gateway.InstanceKey(in.StudyInstanceUID, in.SeriesInstanceUID, in.SOPInstanceUID)
			rc := in.Reader()
			_, err := blobs.Put(t.Context(), key, rc)
			rc.Close()
			if err != nil {
				t.Fatal(err)
			}
			info, err := blobs.Stat(t.Context(), key)
			if err != nil {
				t.Fatal(err)
			}
			rec, err := gateway.DescribeBlob(t.Context(), blobs, info, dicomcodec.HeaderLimits{})
			if err != nil {
				t.Fatal(err)
			}
			if withMetadata {
				if err := m.Put(t.Context(), rec); err != nil {
					t.Fatal(err)
				}
			}
			recs = append(recs, rec)
		}
		slices.SortFunc(recs, gateway.CompareInstances)
		return recs
	}
	entriesOf := func(recs []*gateway.InstanceRecord) []gateway.MetadataEntry {
		out := make([]gateway.MetadataEntry, len(recs))
		for i, r := range recs {
			out[i] = gateway.NewMetadataEntry(r)
		}
		return out
	}
	read := func(t *testing.T, m *gateway.MetadataStore, entries []gateway.MetadataEntry) (sops []string, values [][]byte) {
		t.Helper()
		err := m.Read(t.Context(), entries, func(e gateway.MetadataEntry, b []byte) error {
			sops = append(sops, e.SOPInstanceUID)
			values = append(values, bytes.Clone(b))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return sops, values
	}
	check := func(t *testing.T, recs []*gateway.InstanceRecord, sops []string, values [][]byte) {
		t.Helper()
		if len(sops) != len(recs) {
			t.Fatalf("read %d instances, want %d", len(sops), len(recs))
		}
		for i, r := range recs {
			_, want := gateway.PrepareMetadata(r)
			if sops[i] != r.SOPInstanceUID || !bytes.Equal(values[i], want) {
				t.Fatalf("instance %d: read %s (%d bytes), want %s's prepared metadata (%d bytes)", i, sops[i], len(values[i]), r.SOPInstanceUID, len(want))
			}
		}
	}
	seriesObject := func(t *testing.T, blobs gateway.BlobStore, r *gateway.InstanceRecord) bool {
		t.Helper()
		_, err := blobs.Stat(t.Context(), gateway.SeriesMetadataKey(r.StudyInstanceUID, r.SeriesInstanceUID))
		if err != nil && !errors.Is(err, gateway.ErrNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}

	t.Run("SeriesObjectFollowsChanges", func(t *testing.T) {
		blobs := newBlobs(t)
		m := &gateway.MetadataStore{Blobs: blobs}
		recs := store(t, blobs, m, 41, 5, true)
		sops, values := read(t, m, entriesOf(recs))
		check(t, recs, sops, values)
		if !seriesObject(t, blobs, recs[0]) {
			t.Fatal("no series object after the first read")
		}
		// Served from the series object: remove an instance's own object
		// and the read still has it.
		if err := blobs.Delete(t.Context(), gateway.InstanceMetadataKey(recs[2].StudyInstanceUID, recs[2].SeriesInstanceUID, recs[2].SOPInstanceUID)); err != nil {
			t.Fatal(err)
		}
		sops, values = read(t, m, entriesOf(recs))
		check(t, recs, sops, values)
		// One instance fewer in the index: the series object (built for five)
		// is not served for four.
		fewer := slices.Delete(slices.Clone(recs), 1, 2)
		sops, values = read(t, m, entriesOf(fewer))
		check(t, fewer, sops, values)
	})
	t.Run("ConcurrentWritersLoseNothing", func(t *testing.T) {
		blobs := newBlobs(t)
		m := &gateway.MetadataStore{Blobs: blobs}
		recs := store(t, blobs, m, 42, 8, false)
		read(t, m, entriesOf(recs[:2])) // a series object for two instances
		var wg sync.WaitGroup
		for _, r := range recs {
			wg.Go(func() {
				if err := m.Put(context.WithoutCancel(t.Context()), r); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		sops, values := read(t, m, entriesOf(recs))
		check(t, recs, sops, values)
	})
	t.Run("PreparedFromBlobWhenMissing", func(t *testing.T) {
		blobs := newBlobs(t)
		m := &gateway.MetadataStore{Blobs: blobs}
		recs := store(t, blobs, m, 43, 3, false) // as stored by a version that kept metadata in the index
		sops, values := read(t, m, entriesOf(recs[:1]))
		check(t, recs[:1], sops, values)
		if _, err := blobs.Stat(t.Context(), gateway.InstanceMetadataKey(recs[0].StudyInstanceUID, recs[0].SeriesInstanceUID, recs[0].SOPInstanceUID)); err != nil {
			t.Fatalf("metadata object not written after it was prepared from the blob: %v", err)
		}
		sops, values = read(t, m, entriesOf(recs))
		check(t, recs, sops, values)
	})
	t.Run("DeletedInstanceSkipped", func(t *testing.T) {
		blobs := newBlobs(t)
		m := &gateway.MetadataStore{Blobs: blobs}
		recs := store(t, blobs, m, 44, 4, true)
		gone := recs[1]
		if err := blobs.Delete(t.Context(), gone.Key()); err != nil {
			t.Fatal(err)
		}
		if err := m.Delete(t.Context(), gone.StudyInstanceUID, gone.SeriesInstanceUID, gone.SOPInstanceUID); err != nil {
			t.Fatal(err)
		}
		sops, values := read(t, m, entriesOf(recs)) // a list taken before the delete
		left := slices.Delete(slices.Clone(recs), 1, 2)
		check(t, left, sops, values)
		if seriesObject(t, blobs, recs[0]) {
			t.Fatal("a series object was written for a list naming a deleted instance")
		}
	})
	t.Run("StopsOnCallbackError", func(t *testing.T) {
		blobs := newBlobs(t)
		m := &gateway.MetadataStore{Blobs: blobs}
		recs := store(t, blobs, m, 45, 40, true)
		stop := errors.New("stop")
		calls := 0
		err := m.Read(t.Context(), entriesOf(recs), func(gateway.MetadataEntry, []byte) error {
			if calls++; calls == 3 {
				return stop
			}
			return nil
		})
		if !errors.Is(err, stop) || calls != 3 {
			t.Fatalf("err=%v after %d calls, want the callback's error after 3", err, calls)
		}
		if seriesObject(t, blobs, recs[0]) {
			t.Fatal("a series object was written by a read that stopped part way")
		}
	})
}

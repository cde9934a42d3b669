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
// metadata reads back in entry order, prepared from the instance blobs and
// then from the series object; a series object is never served for a
// series that changed, and a rebuild copies unchanged instances from the
// old object; instances added by concurrent uploads are all there; deleted
// instances are skipped; a read stopped part way writes no object.
func TestMetadataStore(t *testing.T, newBlobs func(t *testing.T) gateway.BlobStore) {
	// store puts the instances of a synthetic series as ingest does and
	// returns their whole records in order.
	store := func(t *testing.T, blobs gateway.BlobStore, seed uint64, n int) []*gateway.InstanceRecord {
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
		recs := store(t, blobs, 41, 6)
		first := recs[:5]
		sops, values := read(t, m, entriesOf(first))
		check(t, first, sops, values)
		if !seriesObject(t, blobs, recs[0]) {
			t.Fatal("no series object after the first read")
		}
		// Served from the series object: with an instance's blob gone, the
		// same list still reads whole.
		if err := blobs.Delete(t.Context(), recs[2].Key()); err != nil {
			t.Fatal(err)
		}
		sops, values = read(t, m, entriesOf(first))
		check(t, first, sops, values)
		// The series changed (an instance added): the object built for five
		// is not served for six; the rebuild copies the unchanged ones from
		// it (recs[2], whose blob is gone, can only come from there) and
		// prepares the new one from its blob.
		sops, values = read(t, m, entriesOf(recs))
		check(t, recs, sops, values)
		// One instance fewer: rebuilt again, without it.
		fewer := slices.Delete(slices.Clone(recs), 1, 2)
		sops, values = read(t, m, entriesOf(fewer))
		check(t, fewer, sops, values)
		// A replaced instance (another digest) is prepared again, not copied.
		changed := slices.Clone(fewer)
		other := *changed[0]
		other.SHA256 = "replaced"
		changed[0] = &other
		if err := blobs.Delete(t.Context(), other.Key()); err != nil {
			t.Fatal(err)
		}
		sops, values = read(t, m, entriesOf(changed))
		check(t, changed[1:], sops, values) // skipped: its blob is gone, and the old copy is of other content
	})
	t.Run("ConcurrentUploadsLoseNothing", func(t *testing.T) {
		blobs := newBlobs(t)
		m := &gateway.MetadataStore{Blobs: blobs}
		recs := store(t, blobs, 42, 12)
		// Readers racing over growing lists of one series, as uploads land
		// between reads: each sees its own list whole, and the last list
		// reads whole after all of them.
		var wg sync.WaitGroup
		for k := 2; k <= len(recs); k += 2 {
			wg.Go(func() {
				err := m.Read(context.WithoutCancel(t.Context()), entriesOf(recs[:k]), func(gateway.MetadataEntry, []byte) error { return nil })
				if err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		sops, values := read(t, m, entriesOf(recs))
		check(t, recs, sops, values)
	})
	t.Run("DeletedInstanceSkipped", func(t *testing.T) {
		blobs := newBlobs(t)
		m := &gateway.MetadataStore{Blobs: blobs}
		recs := store(t, blobs, 44, 4)
		gone := recs[1]
		if err := blobs.Delete(t.Context(), gone.Key()); err != nil {
			t.Fatal(err)
		}
		if err := m.Delete(t.Context(), gone.StudyInstanceUID, gone.SeriesInstanceUID); err != nil {
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
		recs := store(t, blobs, 45, 40)
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

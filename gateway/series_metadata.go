package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// MetadataStore keeps the prepared metadata (PrepareMetadata) of every
// instance in the blob store, beside the instances and never under their
// prefix:
//
//   - metadata/<study>/<series>/<sop>.json, one per instance, written when
//     the instance is stored (Ingest, Reindex) and removed with it (Deleter):
//     the source of truth, written by whoever stores that instance, so two
//     uploads adding to one series at once can never lose each other's;
//   - metadata/<study>/<series>/series, the series' instances in order in
//     one object, which Read streams with one GET. It is a cache, built by
//     the first read after the series changed: its header carries a hash of
//     the series' index entries (SOP Instance UIDs and digests, in order),
//     and a read whose entries hash differently rebuilds it from the
//     per-instance objects. Writers never touch it, so there is nothing to
//     lock: a stale or half-raced copy is only ever rebuilt, never served.
//
// Rebuilding on read rather than on every store keeps a 1,000-instance
// upload from rewriting a growing series object a thousand times.
type MetadataStore struct {
	Blobs BlobStore
	// HeaderLimits bound the header parse of an instance stored before
	// prepared metadata moved to the blob store (whose object is made from
	// its blob on first read).
	HeaderLimits dicomcodec.HeaderLimits
}

// InstanceMetadataKey is the key of one instance's prepared metadata.
func InstanceMetadataKey(studyUID, seriesUID, sopInstanceUID string) string {
	return seriesMetadataPrefix(studyUID, seriesUID) + mustUID(sopInstanceUID) + ".json"
}

// SeriesMetadataKey is the key of a series' cached metadata object.
func SeriesMetadataKey(studyUID, seriesUID string) string {
	return seriesMetadataPrefix(studyUID, seriesUID) + "series"
}

func seriesMetadataPrefix(studyUID, seriesUID string) string {
	return "metadata/" + mustUID(studyUID) + "/" + mustUID(seriesUID) + "/"
}

// mustUID returns uid, panicking if it is not valid: keys are built only
// from UIDs validated where they entered.
func mustUID(uid string) string {
	if err := ValidateUID(uid); err != nil {
		panic("gateway: metadata key built from an unvalidated uid: " + err.Error())
	}
	return uid
}

// Put stores the prepared metadata of rec, which must carry the whole header
// (the record as ingest or DescribeBlob built it).
func (m *MetadataStore) Put(ctx context.Context, rec *InstanceRecord) error {
	_, prepared := PrepareMetadata(rec)
	if _, err := m.Blobs.Put(ctx, InstanceMetadataKey(rec.StudyInstanceUID, rec.SeriesInstanceUID, rec.SOPInstanceUID), bytes.NewReader(prepared)); err != nil {
		return fmt.Errorf("store metadata of instance %s: %w", rec.SOPInstanceUID, err)
	}
	return nil
}

// Delete removes the prepared metadata of one instance and the cached
// object of its series (which holds it too). Absent objects are not an
// error.
func (m *MetadataStore) Delete(ctx context.Context, studyUID, seriesUID, sopInstanceUID string) error {
	for _, key := range []string{InstanceMetadataKey(studyUID, seriesUID, sopInstanceUID), SeriesMetadataKey(studyUID, seriesUID)} {
		if err := m.Blobs.Delete(ctx, key); err != nil && !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("delete metadata of instance %s: %w", sopInstanceUID, err)
		}
	}
	return nil
}

// metadataFetchAhead is how many per-instance objects a rebuild fetches at
// once: enough to hide a network store's latency, few enough that memory
// stays a few hundred KiB.
const metadataFetchAhead = 16

// seriesObjectMagic starts a series object; the version is its last byte.
var seriesObjectMagic = []byte("GWSERIESMD\x01")

// Read calls fn with the prepared JSON of each entry, in the order given,
// holding one instance's JSON (or metadataFetchAhead of them while a series
// object is rebuilt) at a time. The bytes are valid only during the call. An
// instance deleted since it was listed is skipped; an error from fn stops
// the read and is returned.
func (m *MetadataStore) Read(ctx context.Context, entries []MetadataEntry, fn func(MetadataEntry, []byte) error) error {
	runs := seriesRuns(entries)
	seen := map[string]int{}
	for _, r := range runs {
		seen[r[0].SeriesInstanceUID]++
	}
	for _, run := range runs {
		// A series split over several runs (instances disagreeing on their
		// SeriesNumber) would make its runs overwrite each other's object.
		cache := len(run) > 1 && seen[run[0].SeriesInstanceUID] == 1
		if err := m.readRun(ctx, run, cache, fn); err != nil {
			return err
		}
	}
	return nil
}

// seriesRuns splits entries into runs of one series each.
func seriesRuns(entries []MetadataEntry) [][]MetadataEntry {
	var runs [][]MetadataEntry
	start := 0
	for i := 1; i <= len(entries); i++ {
		if i == len(entries) || entries[i].SeriesInstanceUID != entries[start].SeriesInstanceUID {
			runs = append(runs, entries[start:i])
			start = i
		}
	}
	return runs
}

// seriesVersion is the hash a series object carries: of the entries it was
// built from, in order.
func seriesVersion(run []MetadataEntry) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(preparedFormat))
	for _, e := range run {
		h.Write([]byte{0})
		h.Write([]byte(e.SOPInstanceUID))
		h.Write(e.Digest[:])
	}
	var v [sha256.Size]byte
	copy(v[:], h.Sum(nil))
	return v
}

// readRun reads one series' entries: from its series object when that is
// current, else from the per-instance objects, writing a new series object
// as it goes when cache is set.
func (m *MetadataStore) readRun(ctx context.Context, run []MetadataEntry, cache bool, fn func(MetadataEntry, []byte) error) error {
	study, series := run[0].StudyInstanceUID, run[0].SeriesInstanceUID
	if !cache {
		return m.readInstances(ctx, run, nil, fn)
	}
	version := seriesVersion(run)
	served, err := m.readSeriesObject(ctx, study, series, version, run, fn)
	if served || err != nil {
		return err
	}
	pr, pw := io.Pipe()
	putDone := make(chan error, 1)
	go func() {
		_, err := m.Blobs.Put(context.WithoutCancel(ctx), SeriesMetadataKey(study, series), pr)
		pr.CloseWithError(err) // unblocks the writer if Put gave up early
		putDone <- err
	}()
	w := bufio.NewWriterSize(pw, 64<<10)
	w.Write(seriesObjectMagic)
	w.Write(version[:])
	w.Write(binary.AppendUvarint(nil, uint64(len(run))))
	err = m.readInstances(ctx, run, w, fn)
	if err == nil && w.Flush() == nil {
		pw.Close()
	} else {
		pw.CloseWithError(errSeriesObjectAbandoned) // Put leaves nothing
	}
	// A series object that could not be written is rebuilt by the next
	// read: the response does not depend on it.
	<-putDone
	if errors.Is(err, errSeriesObjectAbandoned) {
		return nil
	}
	return err
}

// errSeriesObjectAbandoned aborts the write of a series object that would
// not match its version (an instance vanished while it was built).
var errSeriesObjectAbandoned = errors.New("series metadata object abandoned")

// readSeriesObject serves run from the series object if its version is
// version. served is false, with a nil error, when there is no such
// object or it is stale: nothing was passed to fn.
func (m *MetadataStore) readSeriesObject(ctx context.Context, study, series string, version [sha256.Size]byte, run []MetadataEntry, fn func(MetadataEntry, []byte) error) (served bool, err error) {
	rc, err := m.Blobs.Get(ctx, SeriesMetadataKey(study, series), 0, -1)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read metadata of series %s: %w", series, err)
	}
	defer rc.Close()
	br := bufio.NewReaderSize(rc, 64<<10)
	head := make([]byte, len(seriesObjectMagic)+sha256.Size)
	if _, err := io.ReadFull(br, head); err != nil || !bytes.Equal(head[:len(seriesObjectMagic)], seriesObjectMagic) || !bytes.Equal(head[len(seriesObjectMagic):], version[:]) {
		return false, nil // stale, from another version, or cut short: rebuild
	}
	n, err := binary.ReadUvarint(br)
	if err != nil || n != uint64(len(run)) {
		return false, nil
	}
	corrupt := func(what string) error {
		return fmt.Errorf("metadata object of series %s is corrupt (%s): %w", series, what, ErrUnavailable)
	}
	var buf []byte
	for _, e := range run {
		sop, err := readChunk(br, buf[:0], 64)
		if err != nil || string(sop) != e.SOPInstanceUID {
			return true, corrupt("instance UID")
		}
		buf, err = readChunk(br, buf[:0], 1<<30)
		if err != nil {
			return true, corrupt("instance metadata")
		}
		if err := fn(e, buf); err != nil {
			return true, err
		}
	}
	return true, nil
}

// readChunk reads a uvarint length (at most limit) and that many bytes into
// buf.
func readChunk(br *bufio.Reader, buf []byte, limit uint64) ([]byte, error) {
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return nil, err
	}
	if n > limit {
		return nil, errors.New("chunk too long")
	}
	if uint64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	_, err = io.ReadFull(br, buf)
	return buf, err
}

// readInstances reads run from the per-instance objects, metadataFetchAhead
// at a time, calling fn and appending each to the series object w (if not
// nil). An instance whose object is missing (stored before prepared
// metadata moved to the blob store) is prepared from its blob, and its
// object written; an instance whose blob is gone too was deleted since it was
// listed: it is skipped, and the series object abandoned.
func (m *MetadataStore) readInstances(ctx context.Context, run []MetadataEntry, w *bufio.Writer, fn func(MetadataEntry, []byte) error) error {
	type fetched struct {
		b   []byte
		err error
	}
	abandoned := false
	for len(run) > 0 {
		batch := run[:min(len(run), metadataFetchAhead)]
		run = run[len(batch):]
		got := make([]fetched, len(batch))
		var wg sync.WaitGroup
		for i, e := range batch {
			wg.Go(func() {
				got[i].b, got[i].err = m.instance(ctx, e)
			})
		}
		wg.Wait()
		for i, e := range batch {
			if errors.Is(got[i].err, ErrNotFound) {
				abandoned = true
				continue
			}
			if got[i].err != nil {
				return got[i].err
			}
			if w != nil && !abandoned {
				w.Write(binary.AppendUvarint(nil, uint64(len(e.SOPInstanceUID))))
				w.WriteString(e.SOPInstanceUID)
				w.Write(binary.AppendUvarint(nil, uint64(len(got[i].b))))
				w.Write(got[i].b)
			}
			if err := fn(e, got[i].b); err != nil {
				return err
			}
		}
	}
	if abandoned && w != nil {
		return errSeriesObjectAbandoned
	}
	return nil
}

// instance returns the prepared JSON of one instance: its object, or, for an
// instance stored before there were such objects, the JSON prepared from its
// blob (and written as its object for next time). ErrNotFound when neither
// exists.
func (m *MetadataStore) instance(ctx context.Context, e MetadataEntry) ([]byte, error) {
	rc, err := m.Blobs.Get(ctx, InstanceMetadataKey(e.StudyInstanceUID, e.SeriesInstanceUID, e.SOPInstanceUID), 0, -1)
	if err == nil {
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			return nil, fmt.Errorf("read metadata of instance %s: %w", e.SOPInstanceUID, err)
		}
		return b, nil
	}
	if !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("read metadata of instance %s: %w", e.SOPInstanceUID, err)
	}
	rc, err = m.Blobs.Get(ctx, InstanceKey(e.StudyInstanceUID, e.SeriesInstanceUID, e.SOPInstanceUID), 0, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	h, err := dicomcodec.ParseHeader(rc, m.HeaderLimits)
	if err != nil {
		return nil, fmt.Errorf("prepare metadata of instance %s from its blob: %w", e.SOPInstanceUID, FromCodec(err))
	}
	rec := &InstanceRecord{StudyInstanceUID: e.StudyInstanceUID, SeriesInstanceUID: e.SeriesInstanceUID, SOPInstanceUID: e.SOPInstanceUID, Metadata: h.Dataset}
	_, prepared := PrepareMetadata(rec)
	// Best effort: without the object the next read prepares it again.
	_, _ = m.Blobs.Put(ctx, InstanceMetadataKey(e.StudyInstanceUID, e.SeriesInstanceUID, e.SOPInstanceUID), bytes.NewReader(prepared))
	return prepared, nil
}

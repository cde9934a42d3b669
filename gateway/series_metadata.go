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

// MetadataStore serves the prepared metadata (PrepareMetadata) of a
// series from one object in the blob store, metadata/<study>/<series>/series,
// beside the instances and never under their prefix. The object is a cache
// of what the instance blobs hold: it is built by the first read of the
// series and rebuilt by the first read after the series changed, never
// written on the store path, so storing an instance costs no extra write
// and two uploads into one series have nothing to race on. Its header
// carries a hash of the series' index entries (SOP Instance UIDs and
// digests, in order) and a table of the entries it holds: a read whose
// entries hash the same streams it with one GET; a read whose entries
// differ rebuilds it, copying the instances that did not change from the old
// object and preparing only the new or replaced ones from their blobs
// (their headers, not their pixel data). A stale object is never served.
type MetadataStore struct {
	Blobs BlobStore
	// HeaderLimits bound the header parse of an instance blob.
	HeaderLimits dicomcodec.HeaderLimits
}

// SeriesMetadataKey is the key of a series' metadata object.
func SeriesMetadataKey(studyUID, seriesUID string) string {
	return "metadata/" + mustUID(studyUID) + "/" + mustUID(seriesUID) + "/series"
}

// mustUID returns uid, panicking if it is not valid: keys are built only
// from UIDs validated where they entered.
func mustUID(uid string) string {
	if err := ValidateUID(uid); err != nil {
		panic("gateway: metadata key built from an unvalidated uid: " + err.Error())
	}
	return uid
}

// Delete removes a series' metadata object, which holds the metadata of
// instances being deleted. Absent is not an error.
func (m *MetadataStore) Delete(ctx context.Context, studyUID, seriesUID string) error {
	if err := m.Blobs.Delete(ctx, SeriesMetadataKey(studyUID, seriesUID)); err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("delete metadata of series %s: %w", seriesUID, err)
	}
	return nil
}

// metadataFetchAhead is how many instances a rebuild prepares at once:
// enough to hide a network store's latency, few enough that memory stays a
// few hundred KiB.
const metadataFetchAhead = 16

// seriesObjectMagic starts a series object; the version is its last byte.
// After it: the hash of the entries it holds (seriesVersion), their count,
// per entry its SOP Instance UID and digest, then per entry its prepared
// JSON; strings and JSON are each preceded by their length as a uvarint.
var seriesObjectMagic = []byte("GWSERIESMD\x02")

// Read calls fn with the prepared JSON of each entry, in the order given,
// holding one instance's JSON (metadataFetchAhead of them while a series
// object is rebuilt) at a time. The bytes are valid only during the call.
// An instance deleted since it was listed is skipped; an error from fn
// stops the read and is returned.
func (m *MetadataStore) Read(ctx context.Context, entries []MetadataEntry, fn func(MetadataEntry, []byte) error) error {
	runs := seriesRuns(entries)
	seen := map[string]int{}
	for _, r := range runs {
		seen[r[0].SeriesInstanceUID]++
	}
	for _, run := range runs {
		// A series split over several runs (instances disagreeing on their
		// SeriesNumber) would make its runs overwrite each other's object;
		// one instance is prepared as fast as an object is read.
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

// readRun reads one series' entries: from its object when that is current,
// else by rebuilding it (when cache is set) while serving.
func (m *MetadataStore) readRun(ctx context.Context, run []MetadataEntry, cache bool, fn func(MetadataEntry, []byte) error) error {
	if !cache {
		return m.readInstances(ctx, run, nil, nil, fn)
	}
	study, series := run[0].StudyInstanceUID, run[0].SeriesInstanceUID
	version := seriesVersion(run)
	old, err := m.openSeriesObject(ctx, study, series)
	if err != nil {
		return err
	}
	if old != nil {
		defer old.rc.Close()
		if old.version == version && len(old.toc) == len(run) {
			var buf []byte
			for i, e := range run {
				if buf, err = old.body(i, buf[:0]); err != nil {
					return fmt.Errorf("metadata object of series %s is corrupt: %w", series, ErrUnavailable)
				}
				if err := fn(e, buf); err != nil {
					return err
				}
			}
			return nil
		}
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
	for _, e := range run {
		w.Write(binary.AppendUvarint(nil, uint64(len(e.SOPInstanceUID))))
		w.WriteString(e.SOPInstanceUID)
		w.Write(e.Digest[:])
	}
	err = m.readInstances(ctx, run, old, w, fn)
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

// seriesObject is a series object open for reading, its header read.
type seriesObject struct {
	rc      io.ReadCloser
	br      *bufio.Reader
	version [sha256.Size]byte
	toc     []tocEntry
	next    int // the entry whose body br is at
}

type tocEntry struct {
	sop    string
	digest [16]byte
}

// openSeriesObject opens a series' object and reads its header. It returns
// nil, with no error, when there is none or it is not one this version
// reads: a rebuild then prepares every instance.
func (m *MetadataStore) openSeriesObject(ctx context.Context, study, series string) (*seriesObject, error) {
	rc, err := m.Blobs.Get(ctx, SeriesMetadataKey(study, series), 0, -1)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read metadata of series %s: %w", series, err)
	}
	o := &seriesObject{rc: rc, br: bufio.NewReaderSize(rc, 64<<10)}
	if !o.readHeader() {
		rc.Close()
		return nil, nil
	}
	return o, nil
}

// readHeader reads the magic, version and table of o, reporting whether
// they are well formed.
func (o *seriesObject) readHeader() bool {
	magic := make([]byte, len(seriesObjectMagic))
	if _, err := io.ReadFull(o.br, magic); err != nil || !bytes.Equal(magic, seriesObjectMagic) {
		return false
	}
	if _, err := io.ReadFull(o.br, o.version[:]); err != nil {
		return false
	}
	n, err := binary.ReadUvarint(o.br)
	if err != nil || n > 1<<24 {
		return false
	}
	o.toc = make([]tocEntry, 0, min(n, 4096))
	for range n {
		sop, err := readChunk(o.br, nil, 64)
		if err != nil {
			return false
		}
		t := tocEntry{sop: string(sop)}
		if _, err := io.ReadFull(o.br, t.digest[:]); err != nil {
			return false
		}
		o.toc = append(o.toc, t)
	}
	return true
}

// body returns the prepared JSON of entry i of the table, which must not be
// before the last one read, skipping the bodies in between.
func (o *seriesObject) body(i int, buf []byte) ([]byte, error) {
	for ; o.next < i; o.next++ {
		n, err := binary.ReadUvarint(o.br)
		if err != nil {
			return nil, err
		}
		if _, err := o.br.Discard(int(min(n, 1<<30))); err != nil {
			return nil, err
		}
	}
	o.next++
	return readChunk(o.br, buf, 1<<30)
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

// readInstances reads run, metadataFetchAhead at a time, calling fn and
// appending each instance's JSON to the series object w (if not nil): an
// instance that old holds with the same digest is copied from it (the
// instances old and run share sort the same way, so old is read once, front
// to back); any other is prepared from its blob. An instance whose blob is
// gone was deleted since it was listed: it is skipped, and the series object
// abandoned.
func (m *MetadataStore) readInstances(ctx context.Context, run []MetadataEntry, old *seriesObject, w *bufio.Writer, fn func(MetadataEntry, []byte) error) error {
	kept := make([]int, len(run)) // index in old's table, or -1
	var inOld map[string]int
	if old != nil {
		inOld = make(map[string]int, len(old.toc))
		for i, t := range old.toc {
			inOld[t.sop] = i
		}
	}
	last := -1
	for i, e := range run {
		kept[i] = -1
		if j, ok := inOld[e.SOPInstanceUID]; ok && j > last && old.toc[j].digest == e.Digest {
			kept[i], last = j, j
		}
	}
	type fetched struct {
		b   []byte
		err error
	}
	abandoned := false
	for start := 0; start < len(run); start += metadataFetchAhead {
		batch := run[start:min(len(run), start+metadataFetchAhead)]
		got := make([]fetched, len(batch))
		var wg sync.WaitGroup
		for i, e := range batch {
			if kept[start+i] < 0 {
				wg.Go(func() { got[i].b, got[i].err = m.instance(ctx, e) })
			}
		}
		for i, e := range batch {
			if j := kept[start+i]; j >= 0 {
				if got[i].b, got[i].err = old.body(j, nil); got[i].err != nil {
					got[i].b, got[i].err = m.instance(ctx, e) // old object cut short: prepare it
				}
			}
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

// instance prepares one instance's metadata from its blob, reading its
// header only. ErrNotFound when the blob is gone.
func (m *MetadataStore) instance(ctx context.Context, e MetadataEntry) ([]byte, error) {
	rc, err := m.Blobs.Get(ctx, InstanceKey(e.StudyInstanceUID, e.SeriesInstanceUID, e.SOPInstanceUID), 0, -1)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("read instance %s for its metadata: %w", e.SOPInstanceUID, err)
	}
	defer rc.Close()
	h, err := dicomcodec.ParseHeader(rc, m.HeaderLimits)
	if err != nil {
		return nil, fmt.Errorf("prepare metadata of instance %s: %w", e.SOPInstanceUID, FromCodec(err))
	}
	_, prepared := PrepareMetadata(&InstanceRecord{Metadata: h.Dataset})
	return prepared, nil
}

package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// MaxFramesPerRequest bounds the frame numbers one WADO-RS frames request may
// list, so a hostile list cannot make the server queue millions of reads.
const MaxFramesPerRequest = 10000

// Retriever reads stored instances for WADO-RS and WADO-URI. It resolves
// study, series and instance records from the Index, validating every UID
// before it is used, and opens byte ranges of their blobs. It keeps no state
// of its own and is safe for concurrent use.
type Retriever struct {
	Blobs BlobStore
	Index Index
}

// Study returns the records of every instance of a study, in Index order
// (series, instance number). ErrInvalid for a malformed UID, ErrNotFound for a
// study with no instances.
func (r *Retriever) Study(ctx context.Context, studyUID string) ([]*InstanceRecord, error) {
	if err := ValidateUID(studyUID); err != nil {
		return nil, fmt.Errorf("study: %w", err)
	}
	recs, err := r.Index.ListInstances(ctx, studyUID, "")
	if err == nil && len(recs) == 0 {
		err = ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("study %s: %w", studyUID, err)
	}
	return recs, nil
}

// Series returns the records of every instance of one series of a study.
func (r *Retriever) Series(ctx context.Context, studyUID, seriesUID string) ([]*InstanceRecord, error) {
	if err := ValidateUID(studyUID); err != nil {
		return nil, fmt.Errorf("study: %w", err)
	}
	if err := ValidateUID(seriesUID); err != nil {
		return nil, fmt.Errorf("series: %w", err)
	}
	recs, err := r.Index.ListInstances(ctx, studyUID, seriesUID)
	if err == nil && len(recs) == 0 {
		err = ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("series %s of study %s: %w", seriesUID, studyUID, err)
	}
	return recs, nil
}

// MetadataEntries returns the prepared-metadata entries of a study's
// instances, or of one series' when seriesUID is not empty, in
// ListInstances order (see MetadataReader). ErrInvalid for a malformed UID,
// ErrNotFound when there are no instances.
func (r *Retriever) MetadataEntries(ctx context.Context, studyUID, seriesUID string) ([]MetadataEntry, error) {
	if err := ValidateUID(studyUID); err != nil {
		return nil, fmt.Errorf("study: %w", err)
	}
	if seriesUID != "" {
		if err := ValidateUID(seriesUID); err != nil {
			return nil, fmt.Errorf("series: %w", err)
		}
	}
	entries, err := r.Index.MetadataEntries(ctx, studyUID, seriesUID)
	if err == nil && len(entries) == 0 {
		err = ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("metadata of study %s series %q: %w", studyUID, seriesUID, err)
	}
	return entries, nil
}

// Instance returns the record of one instance. The instance must belong to
// the study and series named in the request: a SOP Instance UID found under
// another study is ErrNotFound, so a URL cannot reach an instance through a
// study the caller did not name.
func (r *Retriever) Instance(ctx context.Context, studyUID, seriesUID, sopInstanceUID string) (*InstanceRecord, error) {
	for _, u := range []struct{ name, uid string }{{"study", studyUID}, {"series", seriesUID}, {"instance", sopInstanceUID}} {
		if err := ValidateUID(u.uid); err != nil {
			return nil, fmt.Errorf("%s: %w", u.name, err)
		}
	}
	rec, err := r.Index.GetInstance(ctx, sopInstanceUID)
	if err == nil && (rec.StudyInstanceUID != studyUID || rec.SeriesInstanceUID != seriesUID) {
		err = ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("instance %s of series %s, study %s: %w", sopInstanceUID, seriesUID, studyUID, err)
	}
	return rec, nil
}

// Open returns a reader over the whole stored object of rec; the caller
// closes it. The reader fails with io.ErrUnexpectedEOF if the blob holds
// fewer bytes than the record says, so truncation is never silent.
func (r *Retriever) Open(ctx context.Context, rec *InstanceRecord) (io.ReadCloser, error) {
	return r.OpenRanges(ctx, rec, []dicomcodec.ByteRange{{Offset: 0, Length: rec.Size}})
}

// OpenAs returns a reader over rec's instance in transfer syntax ts: the
// stored bytes when ts is the stored syntax, else a streaming transcode
// (CanTranscode), whose length is not known in advance. The blob is opened
// before OpenAs returns, so a missing blob is reported here; the transcode
// runs in a goroutine that ends when the reader is read to the end or
// closed.
func (r *Retriever) OpenAs(ctx context.Context, rec *InstanceRecord, ts string) (io.ReadCloser, error) {
	if ts == "" || ts == rec.TransferSyntaxUID {
		return r.Open(ctx, rec)
	}
	if !dicomcodec.CanTranscode(rec.TransferSyntaxUID, ts) {
		return nil, fmt.Errorf("instance %s is stored as %s and cannot be transcoded to %s: %w", rec.SOPInstanceUID, rec.TransferSyntaxUID, ts, ErrNotAcceptable)
	}
	src, err := r.Open(ctx, rec)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	go func() {
		_, err := dicomcodec.TranscodeToExplicitLE(pw, src)
		src.Close()
		pw.CloseWithError(FromCodec(err))
	}()
	return pr, nil
}

// OpenRanges returns one reader over the given byte ranges of rec's blob, one
// after another, each read with a ranged Get. The first range is opened
// before OpenRanges returns, so a missing blob is reported here (ErrNotFound)
// rather than after a response has started; the rest are opened as the
// reader reaches them. Each range must deliver exactly its Length bytes.
func (r *Retriever) OpenRanges(ctx context.Context, rec *InstanceRecord, ranges []dicomcodec.ByteRange) (io.ReadCloser, error) {
	rr := &rangeReader{ctx: ctx, blobs: r.Blobs, key: rec.Key(), ranges: ranges}
	if err := rr.next(); err != nil {
		return nil, err
	}
	return rr, nil
}

// rangeReader reads several ranges of one blob in sequence.
type rangeReader struct {
	ctx    context.Context
	blobs  BlobStore
	key    string
	ranges []dicomcodec.ByteRange
	cur    io.ReadCloser
	left   int64 // bytes still expected from cur
}

// next closes the current range and opens the following one (cur = nil when
// there are no more).
func (rr *rangeReader) next() error {
	if rr.cur != nil {
		err := rr.cur.Close()
		rr.cur = nil
		if err != nil {
			return err
		}
	}
	for len(rr.ranges) > 0 && rr.ranges[0].Length == 0 {
		rr.ranges = rr.ranges[1:]
	}
	if len(rr.ranges) == 0 {
		return nil
	}
	br := rr.ranges[0]
	rr.ranges = rr.ranges[1:]
	rc, err := rr.blobs.Get(rr.ctx, rr.key, br.Offset, br.Length)
	if err != nil {
		return fmt.Errorf("read %d bytes at %d of %s: %w", br.Length, br.Offset, rr.key, err)
	}
	rr.cur, rr.left = rc, br.Length
	return nil
}

func (rr *rangeReader) Read(p []byte) (int, error) {
	for {
		if rr.cur == nil {
			return 0, io.EOF
		}
		if rr.left == 0 {
			if err := rr.next(); err != nil {
				return 0, err
			}
			continue
		}
		if int64(len(p)) > rr.left {
			p = p[:rr.left]
		}
		n, err := rr.cur.Read(p)
		rr.left -= int64(n)
		if err == io.EOF {
			if rr.left > 0 {
				return n, fmt.Errorf("%s: blob ended %d bytes early: %w", rr.key, rr.left, io.ErrUnexpectedEOF)
			}
			err = nil
		}
		if n > 0 || err != nil {
			return n, err
		}
	}
}

func (rr *rangeReader) Close() error {
	rr.ranges = nil
	if rr.cur != nil {
		err := rr.cur.Close()
		rr.cur = nil
		return err
	}
	return nil
}

// ParseFrameList parses a WADO-RS frame list ("1,3,5"): frame numbers start
// at 1, appear in the order asked and may repeat. An empty list, a number
// that is not a positive decimal integer or more than MaxFramesPerRequest
// numbers is ErrInvalid.
func ParseFrameList(s string) ([]int, error) {
	if s == "" {
		return nil, fmt.Errorf("frame list is empty: %w", ErrInvalid)
	}
	parts := strings.Split(s, ",")
	if len(parts) > MaxFramesPerRequest {
		return nil, fmt.Errorf("frame list has %d numbers, more than %d: %w", len(parts), MaxFramesPerRequest, ErrInvalid)
	}
	frames := make([]int, 0, len(parts))
	for _, p := range parts {
		p = strings.TrimSpace(p)
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || p[0] == '+' {
			return nil, fmt.Errorf("frame list %q: %q is not a frame number (1, 2, …): %w", printable(s), printable(p), ErrInvalid)
		}
		frames = append(frames, n)
	}
	return frames, nil
}

// Frames returns the number of frames of rec's pixel data: NumberOfFrames,
// or 1 for single-frame images that omit it; 0 without pixel data.
func (rec *InstanceRecord) Frames() int {
	if rec.PixelData == nil {
		return 0
	}
	if rec.NumberOfFrames > 0 {
		return rec.NumberOfFrames
	}
	if n := len(rec.PixelData.Frames); n > 0 {
		return n
	}
	return 1
}

// FrameRanges returns where frame n (1 = first) lies in rec's blob: one range
// for native pixel data, the fragments' values for encapsulated data.
// ErrNotFound when the instance has no pixel data or n is beyond its frames;
// ErrNotAcceptable when the frame cannot be located without decoding (a
// deflated dataset, or bit-packed frames that do not start on a byte).
func (rec *InstanceRecord) FrameRanges(n int) ([]dicomcodec.ByteRange, error) {
	pd := rec.PixelData
	if pd == nil {
		return nil, noPixelData(rec)
	}
	total := rec.Frames()
	if n < 1 || n > total {
		return nil, fmt.Errorf("frame %d of instance %s: it has %d frame(s): %w", n, rec.SOPInstanceUID, total, ErrNotFound)
	}
	if n <= len(pd.Frames) {
		return pd.Frames[n-1], nil
	}
	if pd.Encapsulated || pd.ValueLength < 0 || rec.TransferSyntaxUID == dicomcodec.TSDeflatedExplicitLE {
		return nil, fmt.Errorf("frame %d of instance %s cannot be located in its %s pixel data: %w", n, rec.SOPInstanceUID, rec.TransferSyntaxUID, ErrNotAcceptable)
	}
	size, err := nativeFrameSize(rec.Metadata)
	if err != nil {
		return nil, fmt.Errorf("instance %s: %w", rec.SOPInstanceUID, err)
	}
	off := int64(n-1) * size
	if off+size > pd.ValueLength {
		return nil, fmt.Errorf("frame %d of instance %s lies beyond its pixel data (%d bytes): %w", n, rec.SOPInstanceUID, pd.ValueLength, ErrNotFound)
	}
	return []dicomcodec.ByteRange{{Offset: pd.ValueOffset + off, Length: size}}, nil
}

// noPixelData explains why rec has no pixel data layout: it has none
// (ErrNotFound), or its dataset is deflated, so the pixel data exists but
// cannot be located without inflating the whole object (ErrNotAcceptable).
func noPixelData(rec *InstanceRecord) error {
	for _, t := range []string{dicomcodec.TagPixelData, "7FE00008", "7FE00009"} {
		if _, ok := rec.Metadata[t]; ok {
			return fmt.Errorf("instance %s: pixel data of a %s dataset cannot be located without inflating it (fetch the instance, or its bulkdata/7FE00010 whole): %w",
				rec.SOPInstanceUID, rec.TransferSyntaxUID, ErrNotAcceptable)
		}
	}
	return fmt.Errorf("instance %s has no pixel data: %w", rec.SOPInstanceUID, ErrNotFound)
}

// nativeFrameSize is Rows × Columns × SamplesPerPixel × BitsAllocated / 8,
// ErrNotAcceptable when frames do not start on a byte boundary.
func nativeFrameSize(md dicomcodec.Dataset) (int64, error) {
	rows, _ := md.Number(dicomcodec.TagRows, 0)
	cols, _ := md.Number(dicomcodec.TagColumns, 0)
	bits, _ := md.Number(dicomcodec.TagBitsAllocated, 0)
	spp, ok := md.Number(dicomcodec.TagSamplesPerPixel, 0)
	if !ok {
		spp = 1
	}
	if rows <= 0 || cols <= 0 || bits <= 0 || spp <= 0 {
		return 0, fmt.Errorf("rows, columns or bits allocated missing: frame size unknown: %w", ErrNotAcceptable)
	}
	frameBits := rows * cols * spp * bits
	if frameBits > math.MaxInt64/2 || math.Mod(frameBits, 8) != 0 {
		return 0, fmt.Errorf("frames of %v bits do not start on byte boundaries: %w", frameBits, ErrNotAcceptable)
	}
	return int64(frameBits / 8), nil
}

// OpenFrame returns a reader over frame n of rec (see FrameRanges) and its
// length in bytes.
func (r *Retriever) OpenFrame(ctx context.Context, rec *InstanceRecord, n int) (io.ReadCloser, int64, error) {
	ranges, err := rec.FrameRanges(n)
	if err != nil {
		return nil, 0, err
	}
	var size int64
	for _, br := range ranges {
		size += br.Length
	}
	rc, err := r.OpenRanges(ctx, rec, ranges)
	return rc, size, err
}

// PixelDataRanges returns the byte ranges of the whole Pixel Data value of
// rec: the value for native data, the fragments of every frame in order for
// encapsulated data (without item headers or the offset table).
func (rec *InstanceRecord) PixelDataRanges() ([]dicomcodec.ByteRange, error) {
	pd := rec.PixelData
	if pd == nil {
		return nil, noPixelData(rec)
	}
	if !pd.Encapsulated && pd.ValueLength >= 0 && rec.TransferSyntaxUID != dicomcodec.TSDeflatedExplicitLE {
		return []dicomcodec.ByteRange{{Offset: pd.ValueOffset, Length: pd.ValueLength}}, nil
	}
	if len(pd.Frames) == 0 {
		return nil, fmt.Errorf("pixel data of instance %s cannot be located: %w", rec.SOPInstanceUID, ErrNotAcceptable)
	}
	var all []dicomcodec.ByteRange
	for _, f := range pd.Frames {
		all = append(all, f...)
	}
	return all, nil
}

// errIsNotFound reports whether err is ErrNotFound; used where a missing blob
// or record means the work is already done.
func errIsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// DescribeBlob reads a stored instance once, streaming, and returns the
// index record it should have: the same header parse, SHA-256 and pixel data
// layout as ingest, with StoredAt taken from the blob's modification time.
// It is how the index is rebuilt from object storage, the source of truth.
func DescribeBlob(ctx context.Context, blobs BlobStore, info BlobInfo, lim dicomcodec.HeaderLimits) (*InstanceRecord, error) {
	study, series, sop, ok := ParseInstanceKey(info.Key)
	if !ok {
		return nil, fmt.Errorf("%s is not an instance key: %w", info.Key, ErrInvalid)
	}
	rc, err := blobs.Get(ctx, info.Key, 0, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var head bytes.Buffer
	h, err := dicomcodec.ParseHeader(io.TeeReader(rc, &head), lim)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", info.Key, FromCodec(err))
	}
	if h.StudyInstanceUID != study || h.SeriesInstanceUID != series || h.SOPInstanceUID != sop {
		return nil, fmt.Errorf("%s holds instance %s of study %s series %s: %w", info.Key, h.SOPInstanceUID, h.StudyInstanceUID, h.SeriesInstanceUID, ErrConflict)
	}
	body := &checkedReader{r: io.MultiReader(&head, rc), sum: sha256.New(), tail: h.Tail(), headerLeft: h.HeaderLength}
	defer body.tail.Close()
	if _, err := io.Copy(io.Discard, body); err != nil {
		return nil, fmt.Errorf("%s: %w", info.Key, body.failure(err))
	}
	return &InstanceRecord{
		StudyInstanceUID:  h.StudyInstanceUID,
		SeriesInstanceUID: h.SeriesInstanceUID,
		SOPInstanceUID:    h.SOPInstanceUID,
		SOPClassUID:       h.SOPClassUID,
		TransferSyntaxUID: h.TransferSyntaxUID,
		Size:              body.n,
		SHA256:            body.sha(),
		NumberOfFrames:    h.NumberOfFrames,
		PixelData:         body.layout,
		StoredAt:          info.ModTime.UTC(),
		Metadata:          withoutForeignFlag(h.Dataset), // identity_conflict.go
	}, nil
}

// ReindexProgress is reported after each blob.
type ReindexProgress struct {
	Seen, Indexed, Failed int
	Bytes                 int64
	Key                   string
	Err                   error // the failure of Key, if it failed
}

// Reindex rebuilds index entries for every instance blob in blobs: each one
// is described (DescribeBlob) and its lean record (IndexRecord) written
// with ReplaceInstance, so running it
// twice, or over an index that already holds some entries, gives the same
// index. A blob that cannot be described is reported and skipped; an index
// that cannot be written stops the run.
func Reindex(ctx context.Context, blobs BlobStore, index Index, lim dicomcodec.HeaderLimits, progress func(ReindexProgress)) (ReindexProgress, error) {
	var p ReindexProgress
	err := blobs.Walk(ctx, "studies/", func(info BlobInfo) error {
		if _, _, _, ok := ParseInstanceKey(info.Key); !ok {
			return nil
		}
		p.Seen++
		p.Key, p.Err = info.Key, nil
		rec, err := DescribeBlob(ctx, blobs, info, lim)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, ErrUnavailable) {
				return err
			}
			p.Failed++
			p.Err = err
		} else {
			if err := index.ReplaceInstance(ctx, IndexRecord(rec)); err != nil {
				return fmt.Errorf("index %s: %w", info.Key, err)
			}
			p.Indexed++
			p.Bytes += rec.Size
		}
		if progress != nil {
			progress(p)
		}
		return nil
	})
	return p, err
}

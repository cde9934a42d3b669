package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// BulkData locates the value of the element a BulkDataURI path names
// ("bulkdata/<path>" relative to the instance) in rec's stored bytes, by
// reading the header from the start of the blob up to that element (it stops
// there: pixel data after it is not read). Paths into sequences give the
// 0-based item index between tags. ErrNotFound when the element is absent;
// ErrNotAcceptable for a deflated dataset or an element of undefined length.
func (r *Retriever) BulkData(ctx context.Context, rec *InstanceRecord, path string) (dicomcodec.ByteRange, error) {
	steps, err := dicomcodec.ParseBulkDataPath(path)
	if err != nil {
		return dicomcodec.ByteRange{}, FromCodec(err)
	}
	if rec.TransferSyntaxUID == dicomcodec.TSDeflatedExplicitLE {
		return dicomcodec.ByteRange{}, fmt.Errorf("bulk data of a deflated dataset has no byte range: %w", ErrNotAcceptable)
	}
	rc, err := r.Blobs.Get(ctx, rec.Key(), 0, -1)
	if err != nil {
		return dicomcodec.ByteRange{}, err
	}
	defer rc.Close()
	br, err := dicomcodec.FindElement(rc, rec.TransferSyntaxUID, steps)
	if err != nil {
		return dicomcodec.ByteRange{}, notFoundAtEOF(FromCodec(err), rec, path)
	}
	return br, nil
}

func notFoundAtEOF(err error, rec *InstanceRecord, path string) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("element %s of instance %s: %w", path, rec.SOPInstanceUID, ErrNotFound)
	}
	return err
}

// OpenBulkData returns a reader over the value of the element a bulk data
// path names, and its length. Stored datasets are read with one ranged Get
// (see BulkData); a Deflated Explicit VR Little Endian dataset is inflated
// from its start up to the element, which is then streamed: no byte range
// exists in the compressed object.
func (r *Retriever) OpenBulkData(ctx context.Context, rec *InstanceRecord, path string) (io.ReadCloser, int64, error) {
	if rec.TransferSyntaxUID != dicomcodec.TSDeflatedExplicitLE {
		br, err := r.BulkData(ctx, rec, path)
		if err != nil {
			return nil, 0, err
		}
		rc, err := r.OpenRanges(ctx, rec, []dicomcodec.ByteRange{br})
		return rc, br.Length, err
	}
	steps, err := dicomcodec.ParseBulkDataPath(path)
	if err != nil {
		return nil, 0, FromCodec(err)
	}
	rc, err := r.Blobs.Get(ctx, rec.Key(), 0, -1)
	if err != nil {
		return nil, 0, err
	}
	value, length, inflater, err := dicomcodec.OpenDeflatedElement(rc, steps)
	if err != nil {
		rc.Close()
		return nil, 0, notFoundAtEOF(FromCodec(err), rec, path)
	}
	return &limitedReadCloser{Reader: value, closers: []io.Closer{inflater, rc}}, length, nil
}

type limitedReadCloser struct {
	io.Reader
	closers []io.Closer
}

func (l *limitedReadCloser) Close() error {
	var errs []error
	for _, c := range l.closers {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

package gateway

import (
	"fmt"
	"image"
	"io"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// CheckRenderable reports, without reading pixel data, whether Render can
// decode rec (dicomcodec.CheckRenderable says which instances it can).
// Otherwise it returns ErrNotAcceptable (the frame can still be fetched with
// /frames) or ErrNotFound when rec has no pixel data.
func CheckRenderable(rec *InstanceRecord) error {
	if rec.PixelData == nil {
		return noPixelData(rec)
	}
	return renderFailure(rec, dicomcodec.CheckRenderable(rec.Metadata, rec.TransferSyntaxUID))
}

// Render decodes one frame of rec, read from frame (size bytes, as returned
// by Retriever.OpenFrame), into an 8-bit image (dicomcodec.Render), with
// CheckRenderable's errors.
func Render(rec *InstanceRecord, frame io.Reader, size int64, opts dicomcodec.RenderOptions) (image.Image, error) {
	if rec.PixelData == nil {
		return nil, noPixelData(rec)
	}
	img, err := dicomcodec.Render(rec.Metadata, rec.TransferSyntaxUID, frame, size, opts)
	return img, renderFailure(rec, err)
}

// renderFailure names the instance in a codec error and translates it.
func renderFailure(rec *InstanceRecord, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("instance %s: %w", rec.SOPInstanceUID, FromCodec(err))
}

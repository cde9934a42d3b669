package gateway_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"image"
	"image/jpeg"
	"runtime"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// jpegFrame encodes a w×h greyscale JPEG, then rewrites the dimensions in
// its SOF0 header to claimW×claimH (the entropy-coded data stays that of
// the small image).
func jpegFrame(t *testing.T, w, h, claimW, claimH int) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := jpeg.Encode(&b, image.NewGray(image.Rect(0, 0, w, h)), nil); err != nil {
		t.Fatal(err)
	}
	data := b.Bytes()
	i := bytes.Index(data, []byte{0xFF, 0xC0})
	if i < 0 {
		t.Fatal("no SOF0 marker")
	}
	// FFC0, length (2), precision (1), height (2), width (2)
	binary.BigEndian.PutUint16(data[i+5:], uint16(claimH))
	binary.BigEndian.PutUint16(data[i+7:], uint16(claimW))
	return data
}

// TestRenderJPEGChecksItsDimensions (issue 16, finding 3): a JPEG frame is
// rendered only when its own dimensions are the header's Rows × Columns.
// One whose SOF claims 20000×20000 under an 8×8 header is refused before
// the decoder allocates the image (it cost 593 MB and 4.7 s a request).
func TestRenderJPEGChecksItsDimensions(t *testing.T) {
	rec := nativeRecord(8, 8, 1, 8, dicomcodec.TSJPEGBaseline, nil)
	rec.PixelData.Encapsulated = true

	good := jpegFrame(t, 8, 8, 8, 8)
	if img, err := gateway.Render(rec, bytes.NewReader(good), int64(len(good)), dicomcodec.RenderOptions{}); err != nil || img.Bounds().Dx() != 8 {
		t.Fatalf("matching 8×8 JPEG: %v", err)
	}

	for _, tt := range []struct {
		name           string
		claimW, claimH int
	}{
		{"20000×20000 under an 8×8 header", 20000, 20000},
		{"16×8 under an 8×8 header", 16, 8},
	} {
		t.Run(tt.name, func(t *testing.T) {
			frame := jpegFrame(t, 8, 8, tt.claimW, tt.claimH)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := gateway.Render(rec, bytes.NewReader(frame), int64(len(frame)), dicomcodec.RenderOptions{})
			runtime.ReadMemStats(&after)
			if !errors.Is(err, gateway.ErrNotAcceptable) {
				t.Fatalf("err = %v, want ErrNotAcceptable", err)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
				t.Errorf("refusing it allocated %d MiB", alloc>>20)
			}
		})
	}
}

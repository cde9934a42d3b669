package dicomcodec

import (
	"bytes"
	"encoding/binary"
	"runtime"
	"testing"
)

// TestRenderRLETooShortForItsHeader: a 128-byte RLE frame under a header of
// 8192 × 8192 RGB 16-bit pixels is refused before anything is allocated by
// the header's size (384 MiB before: PackBits can expand at most 64-fold,
// so a segment this short can never fill the frame).
func TestRenderRLETooShortForItsHeader(t *testing.T) {
	md := Dataset{
		TagRows:                      {VR: "US", Value: []any{float64(8192)}},
		TagColumns:                   {VR: "US", Value: []any{float64(8192)}},
		TagBitsAllocated:             {VR: "US", Value: []any{float64(16)}},
		TagBitsStored:                {VR: "US", Value: []any{float64(16)}},
		TagSamplesPerPixel:           {VR: "US", Value: []any{float64(3)}},
		TagPhotometricInterpretation: {VR: "CS", Value: []any{"RGB"}},
	}
	frame := make([]byte, 128)
	binary.LittleEndian.PutUint32(frame, 6)
	for i := range 6 {
		binary.LittleEndian.PutUint32(frame[4+4*i:], uint32(64+8*i))
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := Render(md, TSRLELossless, bytes.NewReader(frame), int64(len(frame)), RenderOptions{MaxWidth: 128, MaxHeight: 128})
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Error("a 128-byte RLE frame rendered as 8192 × 8192")
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Errorf("rendering a %d-byte RLE frame allocated %d MiB", len(frame), alloc>>20)
	}
}

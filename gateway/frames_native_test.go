package gateway_test

import (
	"bytes"
	"io"
	"runtime"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// TestManyTinyNativeFrames: an instance of 2,000,000 one-pixel native
// frames (4 MB) is stored without listing a range per frame in its index
// record (before: 357 MiB at ingest, a 60 MiB record read by every WADO
// request on it), and its frames are still served, computed from the frame
// size: the first, one in the middle and the last.
func TestManyTinyNativeFrames(t *testing.T) {
	b := backendtest.Open(t, backendtest.Embedded, backendtest.Options{})
	in := &gateway.Ingester{Blobs: b.Blobs, Index: b.Index}
	inst := synth.Instance{PatientID: "TF1", StudyInstanceUID: synth.UIDRoot + ".77.1", SeriesInstanceUID: synth.UIDRoot + ".77.1.1",
		SOPInstanceUID: synth.UIDRoot + ".77.1.1.1", Rows: 1, Columns: 1, Frames: 2_000_000}
	var buf bytes.Buffer
	if _, err := inst.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	rec, err := in.Store(t.Context(), bytes.NewReader(data), gateway.StoreOptions{})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
		t.Errorf("storing a %d-byte instance allocated %d MiB", len(data), alloc>>20)
	}
	got, err := b.Index.GetInstance(t.Context(), inst.SOPInstanceUID)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(got.PixelData.Frames); n != 0 {
		t.Errorf("the index record lists %d frame ranges, want none (computed when read)", n)
	}
	if got.Frames() != 2_000_000 {
		t.Errorf("Frames() = %d, want 2000000", got.Frames())
	}
	r := &gateway.Retriever{Blobs: b.Blobs, Index: b.Index}
	pixels := data[rec.PixelData.ValueOffset:]
	for _, n := range []int{1, 1_000_000, 2_000_000} {
		rc, size, err := r.OpenFrame(t.Context(), got, n)
		if err != nil {
			t.Fatalf("frame %d: %v", n, err)
		}
		frame, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || size != 2 || !bytes.Equal(frame, pixels[2*(n-1):2*n]) {
			t.Errorf("frame %d: %x (%d bytes, %v), want %x", n, frame, size, err, pixels[2*(n-1):2*n])
		}
	}
}

package gateway_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"image"
	"slices"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

func TestParseFrameList(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want []int
	}{
		{"1", []int{1}},
		{"1,3,5", []int{1, 3, 5}},
		{"5,1,5", []int{5, 1, 5}},
		{" 2 , 4", []int{2, 4}},
		{"", nil}, {"0", nil}, {"-1", nil}, {"1,,2", nil}, {"a", nil}, {"1;2", nil},
		{"+1", nil}, {"1.5", nil}, {"99999999999999999999", nil},
		{strings.Repeat("1,", gateway.MaxFramesPerRequest) + "1", nil},
	} {
		got, err := gateway.ParseFrameList(tt.in)
		if tt.want == nil {
			if !errors.Is(err, gateway.ErrInvalid) {
				t.Errorf("ParseFrameList(%.20q) = %v, %v; want ErrInvalid", tt.in, got, err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("ParseFrameList(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

// nativeRecord is a record of a native image with the given geometry, its
// Pixel Data value at offset 1000.
func nativeRecord(rows, cols, frames, bits int, ts string, extra dicomcodec.Dataset) *gateway.InstanceRecord {
	md := dicomcodec.Dataset{
		dicomcodec.TagRows:                      {VR: "US", Value: []any{float64(rows)}},
		dicomcodec.TagColumns:                   {VR: "US", Value: []any{int64(cols)}},
		dicomcodec.TagBitsAllocated:             {VR: "US", Value: []any{float64(bits)}},
		dicomcodec.TagSamplesPerPixel:           {VR: "US", Value: []any{float64(1)}},
		dicomcodec.TagPhotometricInterpretation: {VR: "CS", Value: []any{"MONOCHROME2"}},
	}
	for k, v := range extra {
		md[k] = v
	}
	size := int64(rows * cols * bits / 8 * frames)
	return &gateway.InstanceRecord{
		StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.4", SOPInstanceUID: "1.2.3.4.5",
		TransferSyntaxUID: ts, NumberOfFrames: frames,
		PixelData: &dicomcodec.PixelDataLayout{ValueOffset: 1000, ValueLength: size},
		Metadata:  md,
	}
}

func TestFrameRanges(t *testing.T) {
	rec := nativeRecord(4, 3, 5, 16, dicomcodec.TSExplicitLE, nil)
	for n := 1; n <= 5; n++ {
		got, err := rec.FrameRanges(n)
		want := []dicomcodec.ByteRange{{Offset: 1000 + int64(n-1)*24, Length: 24}}
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("FrameRanges(%d) = %v, %v; want %v", n, got, err, want)
		}
	}
	for _, n := range []int{0, 6} {
		if _, err := rec.FrameRanges(n); !errors.Is(err, gateway.ErrNotFound) {
			t.Errorf("FrameRanges(%d) err=%v, want ErrNotFound", n, err)
		}
	}
	// A recorded layout wins over the computed one.
	rec.PixelData.Frames = [][]dicomcodec.ByteRange{{{Offset: 7, Length: 1}}, {{Offset: 9, Length: 2}, {Offset: 20, Length: 3}}}
	rec.NumberOfFrames = 2
	if got, err := rec.FrameRanges(2); err != nil || len(got) != 2 || got[1].Offset != 20 {
		t.Errorf("FrameRanges(2) with layout = %v, %v", got, err)
	}
	noPixels := &gateway.InstanceRecord{SOPInstanceUID: "1.2"}
	if _, err := noPixels.FrameRanges(1); !errors.Is(err, gateway.ErrNotFound) {
		t.Errorf("no pixel data: err=%v, want ErrNotFound", err)
	}
	bitPacked := nativeRecord(3, 3, 2, 1, dicomcodec.TSExplicitLE, nil)
	if _, err := bitPacked.FrameRanges(2); !errors.Is(err, gateway.ErrNotAcceptable) {
		t.Errorf("bit-packed 3x3 frame: err=%v, want ErrNotAcceptable", err)
	}
	encaps := nativeRecord(4, 4, 2, 8, "1.2.840.10008.1.2.4.50", nil)
	encaps.PixelData.Encapsulated, encaps.PixelData.ValueLength = true, -1
	if _, err := encaps.FrameRanges(1); !errors.Is(err, gateway.ErrNotAcceptable) {
		t.Errorf("encapsulated without layout: err=%v, want ErrNotAcceptable", err)
	}
}

func le16(vals ...int) []byte {
	b := make([]byte, 2*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint16(b[2*i:], uint16(int16(v)))
	}
	return b
}

func TestRenderGreyscale(t *testing.T) {
	num := func(v float64) dicomcodec.Attribute { return dicomcodec.Attribute{VR: "DS", Value: []any{v}} }
	signed := dicomcodec.Dataset{
		dicomcodec.TagPixelRepresentation: {VR: "US", Value: []any{float64(1)}},
		dicomcodec.TagBitsStored:          {VR: "US", Value: []any{float64(16)}},
		dicomcodec.TagRescaleSlope:        num(2),
		dicomcodec.TagRescaleIntercept:    num(-100),
		dicomcodec.TagWindowCenter:        num(0),
		dicomcodec.TagWindowWidth:         num(201),
	}
	// Modality values: 2*v-100 → -300, -100, 0, 100, 300, 50
	data := le16(-100, 0, 50, 100, 200, 75)
	for _, tt := range []struct {
		name string
		rec  *gateway.InstanceRecord
		opts dicomcodec.RenderOptions
		want []uint8
	}{
		{"header window", nativeRecord(2, 3, 1, 16, dicomcodec.TSExplicitLE, signed), dicomcodec.RenderOptions{}, []uint8{0, 0, 128, 255, 255, 191}},
		{"explicit window", nativeRecord(2, 3, 1, 16, dicomcodec.TSExplicitLE, signed), dicomcodec.RenderOptions{Window: true, WindowCenter: 0, WindowWidth: 601}, []uint8{0, 85, 128, 170, 255, 149}},
		{"min max default", nativeRecord(2, 3, 1, 16, dicomcodec.TSImplicitLE, dicomcodec.Dataset{
			dicomcodec.TagPixelRepresentation: {VR: "US", Value: []any{float64(1)}},
		}), dicomcodec.RenderOptions{}, []uint8{0, 85, 127, 170, 255, 148}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			img, err := gateway.Render(tt.rec, bytes.NewReader(data), int64(len(data)), tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			g, ok := img.(*image.Gray)
			if !ok {
				t.Fatalf("image is %T, want *image.Gray", img)
			}
			if got := g.Pix; !closeBytes(got, tt.want, 1) {
				t.Errorf("pixels=%v, want %v (±1)", got, tt.want)
			}
		})
	}
	mono1 := nativeRecord(1, 2, 1, 8, dicomcodec.TSExplicitLE, dicomcodec.Dataset{
		dicomcodec.TagPhotometricInterpretation: {VR: "CS", Value: []any{"MONOCHROME1"}},
	})
	img, err := gateway.Render(mono1, bytes.NewReader([]byte{0, 255}), 2, dicomcodec.RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := img.(*image.Gray).Pix, []uint8{255, 0}; !slices.Equal(got, want) {
		t.Errorf("MONOCHROME1 pixels=%v, want %v", got, want)
	}
}

func closeBytes(a, b []uint8, tol int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if d := int(a[i]) - int(b[i]); d > tol || d < -tol {
			return false
		}
	}
	return true
}

func TestRenderColourAndFit(t *testing.T) {
	rgb := nativeRecord(2, 2, 1, 8, dicomcodec.TSExplicitLE, dicomcodec.Dataset{
		dicomcodec.TagSamplesPerPixel:           {VR: "US", Value: []any{float64(3)}},
		dicomcodec.TagPhotometricInterpretation: {VR: "CS", Value: []any{"RGB"}},
		dicomcodec.TagPlanarConfiguration:       {VR: "US", Value: []any{float64(1)}},
	})
	// planar: RRRR GGGG BBBB
	data := []byte{10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120}
	img, err := gateway.Render(rgb, bytes.NewReader(data), int64(len(data)), dicomcodec.RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r, g, b, _ := img.At(1, 0).RGBA()
	if got, want := []uint32{r >> 8, g >> 8, b >> 8}, []uint32{20, 60, 100}; !slices.Equal(got, want) {
		t.Errorf("pixel (1,0)=%v, want %v", got, want)
	}
	small, err := gateway.Render(rgb, bytes.NewReader(data), int64(len(data)), dicomcodec.RenderOptions{MaxWidth: 1, MaxHeight: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got := small.Bounds().Size(); got != (image.Point{1, 1}) {
		t.Errorf("fitted size=%v, want 1x1", got)
	}
	r, _, _, _ = small.At(0, 0).RGBA()
	if got, want := r>>8, uint32(25); got != want {
		t.Errorf("averaged red=%d, want %d", got, want)
	}
}

func TestRenderRefuses(t *testing.T) {
	j2k := nativeRecord(2, 2, 1, 16, "1.2.840.10008.1.2.4.90", nil)
	if err := gateway.CheckRenderable(j2k); !errors.Is(err, gateway.ErrNotAcceptable) {
		t.Errorf("JPEG 2000: err=%v, want ErrNotAcceptable", err)
	}
	palette := nativeRecord(2, 2, 1, 8, dicomcodec.TSExplicitLE, dicomcodec.Dataset{
		dicomcodec.TagPhotometricInterpretation: {VR: "CS", Value: []any{"PALETTE COLOR"}},
	})
	if err := gateway.CheckRenderable(palette); !errors.Is(err, gateway.ErrNotAcceptable) {
		t.Errorf("palette: err=%v, want ErrNotAcceptable", err)
	}
	if err := gateway.CheckRenderable(&gateway.InstanceRecord{}); !errors.Is(err, gateway.ErrNotFound) {
		t.Errorf("no pixel data: err=%v, want ErrNotFound", err)
	}
}

// rleFrame encodes 16-bit little-endian samples as an RLE Lossless frame
// (PS3.5 Annex G): a high-byte segment, then a low-byte segment, the first
// as one literal run, the second as a replicate run when all bytes match.
func rleFrame(samples []uint16) []byte {
	var hi, lo []byte
	for _, v := range samples {
		hi, lo = append(hi, byte(v>>8)), append(lo, byte(v))
	}
	seg1 := append([]byte{byte(len(hi) - 1)}, hi...)
	var seg2 []byte
	if bytes.Count(lo, lo[:1]) == len(lo) {
		seg2 = []byte{byte(1 - len(lo)), lo[0]} // replicate run: -(n-1)
	} else {
		seg2 = append([]byte{byte(len(lo) - 1)}, lo...)
	}
	head := make([]byte, 64)
	binary.LittleEndian.PutUint32(head, 2)
	binary.LittleEndian.PutUint32(head[4:], 64)
	binary.LittleEndian.PutUint32(head[8:], uint32(64+len(seg1)))
	return append(append(head, seg1...), seg2...)
}

// TestRenderRLE: an RLE frame renders exactly as the same samples stored
// natively.
func TestRenderRLE(t *testing.T) {
	for _, samples := range [][]uint16{{0, 300, 600, 1200, 2400, 4800}, {0x100, 0x200, 0x300, 0x400, 0x500, 0x600}} {
		native := make([]byte, 2*len(samples))
		for i, v := range samples {
			binary.LittleEndian.PutUint16(native[2*i:], v)
		}
		want, err := gateway.Render(nativeRecord(2, 3, 1, 16, dicomcodec.TSExplicitLE, nil), bytes.NewReader(native), int64(len(native)), dicomcodec.RenderOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rle := rleFrame(samples)
		rec := nativeRecord(2, 3, 1, 16, dicomcodec.TSRLELossless, nil)
		rec.PixelData.Encapsulated = true
		got, err := gateway.Render(rec, bytes.NewReader(rle), int64(len(rle)), dicomcodec.RenderOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if g, w := got.(*image.Gray).Pix, want.(*image.Gray).Pix; !slices.Equal(g, w) {
			t.Errorf("RLE rendered %v, native %v", g, w)
		}
	}
	rec := nativeRecord(2, 3, 1, 16, dicomcodec.TSRLELossless, nil)
	if _, err := gateway.Render(rec, bytes.NewReader(make([]byte, 10)), 10, dicomcodec.RenderOptions{}); !errors.Is(err, gateway.ErrNotAcceptable) {
		t.Errorf("truncated RLE frame: err=%v, want ErrNotAcceptable", err)
	}
}

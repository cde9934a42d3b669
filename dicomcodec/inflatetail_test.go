package dicomcodec_test

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// appendExplicit appends one Explicit VR Little Endian element
// (explicitElement, in append form).
func appendExplicit(b []byte, tag uint32, vr string, value []byte) []byte {
	return append(b, explicitElement(uint16(tag>>16), uint16(tag), vr, value)...)
}

func evenUID(s string) []byte {
	if len(s)%2 == 1 {
		s += "\x00"
	}
	return []byte(s)
}

// deflatedInstance returns a Deflated Explicit VR Little Endian instance
// whose pixel data is pixelBytes long, and the inflated dataset. The
// deflate level is chosen by the caller (NoCompression makes the stored
// size grow with the pixel data, as a noisy image would).
func deflatedInstance(t testing.TB, pixelBytes, level int) (file, dataset []byte) {
	t.Helper()
	const class, sop = "1.2.840.10008.5.1.4.1.1.7", "1.2.826.0.1.3680043.10.1466.16.1"
	var m []byte
	m = appendExplicit(m, 0x00020001, "OB", []byte{0, 1})
	m = appendExplicit(m, 0x00020002, "UI", evenUID(class))
	m = appendExplicit(m, 0x00020003, "UI", evenUID(sop))
	m = appendExplicit(m, 0x00020010, "UI", evenUID("1.2.840.10008.1.2.1.99"))
	file = append(make([]byte, 128), "DICM"...)
	file = appendExplicit(file, 0x00020000, "UL", binary.LittleEndian.AppendUint32(nil, uint32(len(m))))
	file = append(file, m...)

	var d []byte
	d = appendExplicit(d, 0x00080016, "UI", evenUID(class))
	d = appendExplicit(d, 0x00080018, "UI", evenUID(sop))
	d = appendExplicit(d, 0x0020000D, "UI", evenUID("1.2.826.0.1.3680043.10.1466.16.2"))
	d = appendExplicit(d, 0x0020000E, "UI", evenUID("1.2.826.0.1.3680043.10.1466.16.3"))
	d = appendExplicit(d, 0x00280010, "US", binary.LittleEndian.AppendUint16(nil, 1))
	d = appendExplicit(d, 0x00280011, "US", binary.LittleEndian.AppendUint16(nil, uint16(pixelBytes)))
	pixels := make([]byte, pixelBytes)
	for i := range pixels {
		pixels[i] = byte(i * 7)
	}
	d = appendExplicit(d, 0x7FE00010, "OB", pixels)
	d = appendExplicit(d, 0xFFFCFFFC, "OB", make([]byte, 8)) // an element after the pixel data

	var z bytes.Buffer
	fw, err := flate.NewWriter(&z, level)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = fw.Write(d)
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	return append(file, z.Bytes()...), d
}

// TestDeflatedHeaderStopsAtPixelData: ParseHeader reads a deflated
// instance only up to its pixel data, as it does any other, so ingest holds
// the header, not the whole instance (issue 16, finding 1: a 768 MiB
// deflated upload was held whole). The rest, fed to Tail, is inflated and
// checked as it passes.
func TestDeflatedHeaderStopsAtPixelData(t *testing.T) {
	data, _ := deflatedInstance(t, 8<<20, flate.NoCompression)
	h, layout, err := parseFile(t, data)
	if err != nil {
		t.Fatal(err)
	}
	if h.HeaderLength > 1<<20 {
		t.Errorf("HeaderLength = %d of %d bytes: the header parse read the pixel data", h.HeaderLength, len(data))
	}
	if h.SOPInstanceUID != "1.2.826.0.1.3680043.10.1466.16.1" || h.StudyInstanceUID == "" || h.NumberOfFrames != 1 {
		t.Errorf("header = sop %q study %q frames %d", h.SOPInstanceUID, h.StudyInstanceUID, h.NumberOfFrames)
	}
	if a := h.Dataset[dicomcodec.TagPixelData]; a.BulkDataURI == "" {
		t.Errorf("pixel data attribute = %+v, want a BulkDataURI", a)
	}
	if layout != nil {
		t.Errorf("layout = %+v: offsets inside a deflate stream are no byte ranges", layout)
	}
}

// TestDeflatedTailRefusesBrokenRest: what the header parse no longer reads
// is still checked: an instance cut inside its pixel data, corrupt deflate
// data after the header, or a dataset structure broken after the pixel
// data are refused by Tail.
func TestDeflatedTailRefusesBrokenRest(t *testing.T) {
	data, _ := deflatedInstance(t, 1<<20, flate.NoCompression)
	corrupt := bytes.Clone(data)
	// Stored blocks are at most 65,535 bytes: a byte in a block header
	// near the end of the stream makes its LEN and NLEN disagree.
	for i := len(corrupt) / 2; i+3 < len(corrupt); i++ {
		if corrupt[i] == 0xff && corrupt[i+1] == 0xff && corrupt[i+2] == 0x00 && corrupt[i+3] == 0x00 {
			corrupt[i+2] = 0x01
			break
		}
	}
	for _, tt := range []struct {
		name string
		data []byte
	}{
		{"cut inside the pixel data", data[:len(data)-300<<10]},
		{"cut before the end of the deflate stream", data[:len(data)-3]},
		{"corrupt block after the header", corrupt},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h, _, err := parseFile(t, tt.data)
			if h == nil {
				t.Fatalf("header refused (%v): the damage is after it", err)
			}
			if !errors.Is(err, dicomcodec.ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed (refused with 0xC000)", err)
			}
		})
	}
}

// TestDeflatedHeaderBoundsCompressedBytes: deflate blocks that inflate to
// nothing cannot make the header parse read (and ingest hold) compressed
// input without bound.
func TestDeflatedHeaderBoundsCompressedBytes(t *testing.T) {
	file, _ := deflatedInstance(t, 16, flate.BestSpeed)
	// Keep the meta group, replace the dataset by empty stored blocks.
	metaEnd := 132 + 12 + int(binary.LittleEndian.Uint32(file[140:144]))
	empty := []byte{0x00, 0x00, 0x00, 0xff, 0xff} // BFINAL=0, stored, LEN 0, NLEN 0xFFFF
	data := append(bytes.Clone(file[:metaEnd]), bytes.Repeat(empty, (2<<20)/len(empty))...)
	_, err := dicomcodec.ParseHeader(bytes.NewReader(data), dicomcodec.HeaderLimits{MaxHeaderBytes: 1 << 20})
	if !errors.Is(err, dicomcodec.ErrLimit) {
		t.Fatalf("err = %v, want ErrLimit (compressed header over the limit)", err)
	}
}

// TestDeflatedTailCloseEndsInflater: a scanner abandoned mid-stream (an
// upload that failed) is released by Close, and further writes fail.
func TestDeflatedTailCloseEndsInflater(t *testing.T) {
	data, _ := deflatedInstance(t, 1<<20, flate.NoCompression)
	h, err := dicomcodec.ParseHeader(bytes.NewReader(data), dicomcodec.HeaderLimits{})
	if err != nil {
		t.Fatal(err)
	}
	tail := h.Tail()
	if _, err := tail.Write(data[h.HeaderLength : h.HeaderLength+1000]); err != nil {
		t.Fatal(err)
	}
	tail.Close()
	if _, err := tail.Write(data[h.HeaderLength+1000:]); err == nil {
		t.Fatal("Write after Close succeeded")
	}
}

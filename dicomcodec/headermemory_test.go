package dicomcodec_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// headerInstance is an Explicit VR Little Endian instance without pixel
// data: the identifying elements, then extra.
func headerInstance(sop string, extra []byte) []byte {
	const class = "1.2.840.10008.5.1.4.1.1.7"
	var m []byte
	m = appendExplicit(m, 0x00020001, "OB", []byte{0, 1})
	m = appendExplicit(m, 0x00020002, "UI", evenUID(class))
	m = appendExplicit(m, 0x00020003, "UI", evenUID(sop))
	m = appendExplicit(m, 0x00020010, "UI", evenUID("1.2.840.10008.1.2.1"))
	out := append(make([]byte, 128), "DICM"...)
	out = appendExplicit(out, 0x00020000, "UL", binary.LittleEndian.AppendUint32(nil, uint32(len(m))))
	out = append(out, m...)
	out = appendExplicit(out, 0x00080016, "UI", evenUID(class))
	out = appendExplicit(out, 0x00080018, "UI", evenUID(sop))
	out = appendExplicit(out, 0x0020000D, "UI", evenUID("1.2.826.0.1.3680043.10.1466.16.12"))
	out = appendExplicit(out, 0x0020000E, "UI", evenUID("1.2.826.0.1.3680043.10.1466.16.13"))
	return append(out, extra...)
}

// emptyElementItems is a sequence (0040,A730) of defined-length items of
// nine empty elements each: about n elements in 8 bytes each, the cheapest
// way to make the parser build map entries.
func emptyElementItems(n int) []byte {
	var item []byte
	for k := range uint32(9) {
		item = appendExplicit(item, 0x00080100+2*k, "SH", nil)
	}
	var seq []byte
	for range n / 10 {
		seq = binary.LittleEndian.AppendUint32(seq, 0xE000FFFE)
		seq = binary.LittleEndian.AppendUint32(seq, uint32(len(item)))
		seq = append(seq, item...)
	}
	return appendExplicit(nil, 0x0040A730, "SQ", seq)
}

// TestParseHeaderBoundsParsedMemory (issue 16, finding 7): what a header
// costs once parsed is bounded, not only its bytes and element count. A 4 MB header of 499,000 empty elements (one
// took 527 MB under the old 500,000-element limit) and 6 MB of US values
// (each 2-byte value becomes a boxed int64) are refused; the largest real
// headers (the corpus test) still parse.
func TestParseHeaderBoundsParsedMemory(t *testing.T) {
	var usValues []byte
	for i := range uint32(100) {
		usValues = appendExplicit(usValues, 0x00091000+i, "US", make([]byte, 60_000))
	}
	for _, tt := range []struct {
		name string
		data []byte
		want string
	}{
		{"499,000 empty elements", headerInstance("1.2.826.0.1.3680043.10.1466.16.14", emptyElementItems(499_000)), "elements"},
		{"6 MB of US values", headerInstance("1.2.826.0.1.3680043.10.1466.16.15", append(appendExplicit(nil, 0x00090010, "LO", []byte("PROBE ")), usValues...)), "memory"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := dicomcodec.ParseHeader(bytes.NewReader(tt.data), dicomcodec.HeaderLimits{})
			if !errors.Is(err, dicomcodec.ErrLimit) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("%d bytes: err = %v, want ErrLimit naming %s", len(tt.data), err, tt.want)
			}
		})
	}

	// Within the bounds, the same shapes parse.
	small := headerInstance("1.2.826.0.1.3680043.10.1466.16.16", emptyElementItems(20_000))
	if _, err := dicomcodec.ParseHeader(bytes.NewReader(small), dicomcodec.HeaderLimits{}); err != nil {
		t.Errorf("20,000 elements: %v", err)
	}
	// MaxDatasetMemory follows MaxElements unless set.
	if _, err := dicomcodec.ParseHeader(bytes.NewReader(small), dicomcodec.HeaderLimits{MaxElements: 30_000, MaxDatasetMemory: 1 << 20}); err == nil {
		t.Errorf("20,000 elements within a 1 MiB parsed-memory bound")
	}
}

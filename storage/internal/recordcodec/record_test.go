package recordcodec_test

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/testcorpus"
	"github.com/dicom-gateway/gateway/storage/internal/recordcodec"
)

// TestRecordCodecRoundTrip: for every corpus header, the stored record form
// reads back equal to what the earlier all-JSON form reads back (the index
// contract), encodes deterministically, and the all-JSON form still decodes.
func TestRecordCodecRoundTrip(t *testing.T) {
	n := 0
	for _, file := range testcorpus.Files(t) {
		data, err := os.ReadFile(file.Path)
		if err != nil {
			t.Fatal(err)
		}
		h, layout, err := parseFile(t, data)
		if err != nil {
			continue // refused inputs have no record
		}
		rec := &gateway.InstanceRecord{
			StudyInstanceUID: h.StudyInstanceUID, SeriesInstanceUID: h.SeriesInstanceUID, SOPInstanceUID: h.SOPInstanceUID,
			SOPClassUID: h.SOPClassUID, TransferSyntaxUID: h.TransferSyntaxUID, Size: int64(len(data)), SHA256: "ab",
			NumberOfFrames: h.NumberOfFrames, PixelData: layout, StoredAt: time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC), Metadata: h.Dataset,
		}
		js, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		var want gateway.InstanceRecord
		if err := json.Unmarshal(js, &want); err != nil {
			t.Fatal(err)
		}
		enc, err := recordcodec.Encode(rec)
		if err != nil {
			t.Fatalf("%s: %v", file.Name, err)
		}
		again, _ := recordcodec.Encode(rec)
		if !bytes.Equal(enc, again) {
			t.Errorf("%s: two encodings of one record differ", file.Name)
		}
		got, err := recordcodec.Decode(enc)
		if err != nil {
			t.Fatalf("%s: %v", file.Name, err)
		}
		if !reflect.DeepEqual(got, &want) {
			t.Errorf("%s: decoded record differs from the JSON round trip", file.Name)
		}
		legacy, err := recordcodec.Decode(js)
		if err != nil || !reflect.DeepEqual(legacy, &want) {
			t.Errorf("%s: all-JSON form: %v", file.Name, err)
		}
		n++
	}
	if n == 0 && len(testcorpus.Files(t)) > 0 {
		t.Fatal("no corpus file made a record: the test proved nothing")
	}
	for _, bad := range [][]byte{nil, {0x01}, {0x01, 0xFF}, {0x02, 0, 0}, []byte("{")} {
		if _, err := recordcodec.Decode(bad); err == nil {
			t.Errorf("Decode(%q) accepted malformed input", bad)
		}
	}
}

// parseFile parses a whole file: the header with dicomcodec.ParseHeader
// and the rest through Tail, as ingest does (the codec's tests have the
// same helper).
func parseFile(t testing.TB, data []byte) (*dicomcodec.Header, *dicomcodec.PixelDataLayout, error) {
	t.Helper()
	h, err := dicomcodec.ParseHeader(bytes.NewReader(data), dicomcodec.HeaderLimits{})
	if err != nil {
		return nil, nil, err
	}
	if h.HeaderLength > int64(len(data)) {
		t.Fatalf("HeaderLength %d beyond the %d bytes of input", h.HeaderLength, len(data))
	}
	tail := h.Tail()
	// Feed the tail in small uneven pieces: the scanner must not depend on
	// how the stream is cut.
	rest := data[h.HeaderLength:]
	for i := 0; len(rest) > 0; i++ {
		n := min(len(rest), 1+(i*7919)%4099)
		if _, err := tail.Write(rest[:n]); err != nil {
			return h, nil, err
		}
		rest = rest[n:]
	}
	layout, err := tail.Finish()
	return h, layout, err
}

package recordcodec

import (
	"reflect"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// TestPlainFormStillDecodes: records stored before records were deflated
// (version 1) read back as the deflated form of the same record does, and
// the deflated form is smaller.
func TestPlainFormStillDecodes(t *testing.T) {
	rec := &gateway.InstanceRecord{
		StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.4", SOPInstanceUID: "1.2.3.4.5", SOPClassUID: "1.2.840.10008.5.1.4.1.1.2",
		TransferSyntaxUID: "1.2.840.10008.1.2.1", Size: 1234, SHA256: "ab", StoredAt: time.Date(2026, 12, 5, 2, 0, 0, 0, time.UTC),
		Metadata: dicomcodec.Dataset{
			dicomcodec.TagModality:    {VR: "CS", Value: []any{"CT"}},
			dicomcodec.TagPatientName: {VR: "PN", Value: []any{dicomcodec.PersonName{Alphabetic: "Doe^Jane"}}},
			dicomcodec.TagRows:        {VR: "US", Value: []any{int64(512)}},
		},
	}
	plain, err := encodePlain(rec)
	if err != nil {
		t.Fatal(err)
	}
	deflated, err := Encode(rec)
	if err != nil {
		t.Fatal(err)
	}
	if plain[0] != recordVersion || deflated[0] != recordVersionDeflate {
		t.Fatalf("versions %#x and %#x, want %#x and %#x", plain[0], deflated[0], recordVersion, recordVersionDeflate)
	}
	if len(deflated) >= len(plain) {
		t.Errorf("deflated record %d bytes, plain %d", len(deflated), len(plain))
	}
	a, err := Decode(plain)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Decode(deflated)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("plain form decodes to %+v, deflated to %+v", a, b)
	}
	if _, err := Decode(deflated[:len(deflated)/2]); err == nil {
		t.Error("a truncated deflated record decoded without error")
	}
}

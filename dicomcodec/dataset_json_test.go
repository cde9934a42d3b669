package dicomcodec_test

import (
	"encoding/json"
	"os"
	"reflect"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/internal/testcorpus"
)

// TestDatasetJSONRoundTrip checks that every corpus header survives
// JSON encoding and decoding with identical typed values, as the index
// backends rely on.
func TestDatasetJSONRoundTrip(t *testing.T) {
	for _, f := range testcorpus.Files(t) {
		data, err := os.ReadFile(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		h, _, err := parseFile(t, data)
		if err != nil {
			continue
		}
		b, err := json.Marshal(h.Dataset)
		if err != nil {
			t.Fatalf("%s: marshal: %v", f.Name, err)
		}
		var got dicomcodec.Dataset
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%s: unmarshal: %v", f.Name, err)
		}
		if !reflect.DeepEqual(got, h.Dataset) {
			for k, want := range h.Dataset {
				if !reflect.DeepEqual(got[k], want) {
					t.Errorf("%s: %s = %#v, want %#v", f.Name, k, got[k], want)
				}
			}
		}
	}
}

func TestAttributeJSON(t *testing.T) {
	for _, tt := range []struct {
		in   dicomcodec.Attribute
		want string
	}{
		{dicomcodec.Attribute{VR: "PN", Value: []any{dicomcodec.PersonName{Alphabetic: "Doe^Jane"}, nil}}, `{"vr":"PN","Value":[{"Alphabetic":"Doe^Jane"},null]}`},
		{dicomcodec.Attribute{VR: "IS", Value: []any{int64(-3), int64(9007199254740993)}}, `{"vr":"IS","Value":[-3,9007199254740993]}`},
		{dicomcodec.Attribute{VR: "UV", Value: []any{uint64(1<<64 - 1)}}, `{"vr":"UV","Value":[18446744073709551615]}`},
		{dicomcodec.Attribute{VR: "DS", Value: []any{0.5, 1e300}}, `{"vr":"DS","Value":[0.5,1e+300]}`},
		{dicomcodec.Attribute{VR: "AT", Value: []any{"00100010"}}, `{"vr":"AT","Value":["00100010"]}`},
		{dicomcodec.Attribute{VR: "LO"}, `{"vr":"LO"}`},
		{dicomcodec.Attribute{VR: "OB", BulkDataURI: "bulkdata/7FE00010"}, `{"vr":"OB","BulkDataURI":"bulkdata/7FE00010"}`},
		{dicomcodec.Attribute{VR: "SQ", Value: []any{dicomcodec.Dataset{"00080100": {VR: "SH", Value: []any{"T-1"}}}, dicomcodec.Dataset{}}}, `{"vr":"SQ","Value":[{"00080100":{"vr":"SH","Value":["T-1"]}},{}]}`},
	} {
		b, err := json.Marshal(tt.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(b); got != tt.want {
			t.Errorf("Marshal(%#v) = %s, want %s", tt.in, got, tt.want)
		}
		var back dicomcodec.Attribute
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back, tt.in) {
			t.Errorf("round trip of %s = %#v, want %#v", tt.want, back, tt.in)
		}
	}
}

package recordcodec

import (
	"encoding/json"
	"math"
	"reflect"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// TestCompactRoundTrip checks that DecodeCompact(AppendCompact(d)) is what a
// DICOM JSON round trip of d gives, including the attributes the compact
// form keeps as JSON.
func TestCompactRoundTrip(t *testing.T) {
	d := dicomcodec.Dataset{
		dicomcodec.TagPatientName:    {VR: "PN", Value: []any{dicomcodec.PersonName{Alphabetic: "Müller^Hans", Ideographic: "山田^太郎"}, dicomcodec.PersonName{}}},
		dicomcodec.TagPatientID:      {VR: "LO", Value: []any{"PID1", nil, ""}},
		dicomcodec.TagStudyDate:      {VR: "DA", Value: []any{"20200101"}},
		"00101010":                   {VR: "AS"},
		"00101020":                   {VR: "DS", Value: []any{1.75, math.Copysign(0, -1), 1e300}},
		"00101030":                   {VR: "DS", Value: []any{int64(70)}}, // decodes as float64
		"00201208":                   {VR: "IS", Value: []any{int64(-3), uint64(7), uint64(math.MaxUint64)}},
		"00281050":                   {VR: "DS", Value: []any{math.NaN()}}, // written as null
		"00081030":                   {VR: "LO", Value: []any{"bad \xff utf-8"}},
		"00081110":                   {VR: "SQ", Value: []any{dicomcodec.Dataset{"00081155": {VR: "UI", Value: []any{"1.2.3"}}}}},
		"00091001":                   {VR: "OB", InlineBinary: "AAEC"},
		dicomcodec.TagSOPInstanceUID: {VR: "UI", Value: []any{}},
		"00200052":                   {VR: "", Value: []any{"x"}},
	}
	b, err := AppendCompact(nil, d)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeCompact(string(b))
	if err != nil {
		t.Fatal(err)
	}
	j, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var want dicomcodec.Dataset
	if err := json.Unmarshal(j, &want); err != nil {
		t.Fatal(err)
	}
	for tag := range want {
		if !reflect.DeepEqual(got[tag], want[tag]) {
			t.Errorf("%s = %#v, want %#v", tag, got[tag], want[tag])
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d attributes, want %d", len(got), len(want))
	}
	for i := range len(b) { // every truncation fails cleanly
		if _, err := DecodeCompact(string(b[:i])); err == nil {
			t.Fatalf("DecodeCompact of %d of %d bytes: no error", i, len(b))
		}
	}
}

func TestCompactStudy(t *testing.T) {
	want := &gateway.StudySummary{
		StudyInstanceUID: "1.2.3", Series: 2, Instances: 5,
		Attrs:      dicomcodec.Dataset{dicomcodec.TagPatientID: {VR: "LO", Value: []any{"P1"}}},
		Modalities: map[string]int{"CT": 3, "MR": 2}, SOPClasses: map[string]int{"1.2.840.10008.5.1.4.1.1.2": 5},
	}
	b, err := AppendStudy(nil, want)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeStudy(string(b))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("DecodeStudy = %#v, want %#v", got, want)
	}
	for i := range len(b) {
		if _, err := DecodeStudy(string(b[:i])); err == nil {
			t.Fatalf("DecodeStudy of %d of %d bytes: no error", i, len(b))
		}
	}
}

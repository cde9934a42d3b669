package gateway_test

import (
	"errors"
	"net/url"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

func TestLookupAttribute(t *testing.T) {
	for _, tt := range []struct {
		name, tag, vr string
		ok            bool
	}{
		{"PatientName", "00100010", "PN", true},
		{"00100010", "00100010", "PN", true},
		{"0020000d", "0020000D", "UI", true},
		{"ModalitiesInStudy", "00080061", "CS", true},
		{"RetrieveURL", "00081190", "UR", true},
		{"00091001", "00091001", "UN", true}, // private: a tag, no dictionary entry
		{"NoSuchKeyword", "", "", false},
		{"0010001", "", "", false},
	} {
		e, ok := dicomcodec.LookupAttribute(tt.name)
		if ok != tt.ok || e.Tag != tt.tag || e.VR != tt.vr {
			t.Errorf("LookupAttribute(%q) = %+v, %v; want tag %s vr %s ok %v", tt.name, e, ok, tt.tag, tt.vr, tt.ok)
		}
	}
}

func TestWildcard(t *testing.T) {
	for _, tt := range []struct {
		pattern, s string
		fold, want bool
	}{
		{"Sm*", "Smith^John", false, true},
		{"sm*", "Smith^John", false, false},
		{"sm*", "Smith^John", true, true},
		{"SM?TH*", "Smyth^Jane", true, true},
		{"*ll*", "Müller^Hans", true, true},
		{"M?ller*", "Müller", false, true}, // ? is one character, not one byte
		{"山田*", "山田^太郎", false, true},
		{"*", "", false, true},
		{"?", "", false, false},
		{"a*b*c", "aXbYc", false, true},
		{"a*b*c", "aXbY", false, false},
	} {
		if got := gateway.Wildcard(tt.pattern, tt.s, tt.fold); got != tt.want {
			t.Errorf("Wildcard(%q, %q, %v) = %v, want %v", tt.pattern, tt.s, tt.fold, got, tt.want)
		}
	}
}

func TestParseQueryRejects(t *testing.T) {
	for _, raw := range []string{
		"StudyDate=2020", "StudyDate=20200230", "StudyDate=20200101-2020", "StudyDate=20200102-20200101",
		"StudyTime=2400", "StudyTime=12345", "limit=x", "offset=-2", "fuzzymatching=yes please",
		"StudyInstanceUID=1.2.3,1..2", "SOPInstanceUID=1.2*", "SeriesNumber=one", "ReferencedStudySequence=1",
	} {
		params, err := url.ParseQuery(raw)
		if err != nil {
			t.Fatal(err)
		}
		_, err = gateway.ParseQuery(gateway.LevelInstance, "", "", params, gateway.QueryLimits{Default: 10, Max: 100})
		if !errors.Is(err, gateway.ErrInvalid) {
			t.Errorf("ParseQuery(%s) = %v, want ErrInvalid", raw, err)
		}
	}
}

func TestParseQueryWarnsAndLimits(t *testing.T) {
	params, _ := url.ParseQuery("limit=500&foo=1&Rows=512")
	q, err := gateway.ParseQuery(gateway.LevelStudy, "", "", params, gateway.QueryLimits{Default: 10, Max: 100})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := q.Limit, 100; got != want {
		t.Errorf("Limit=%d, want %d", got, want)
	}
	if got, want := len(q.Warnings), 3; got != want { // limit cut, foo unknown, Rows not study-level
		t.Errorf("Warnings=%q, want %d", q.Warnings, want)
	}
	if got := len(q.Conditions); got != 0 {
		t.Errorf("%d conditions, want 0", got)
	}
}

// FuzzQIDOQuery checks that no query string makes ParseQuery or matching
// panic, and that every failure is ErrInvalid.
func FuzzQIDOQuery(f *testing.F) {
	for _, s := range []string{"PatientName=Sm*", "StudyDate=20200101-", "00081110.00081155=1.2.3",
		"ModalitiesInStudy=CT%5CMR", "StudyTime=1030-", "limit=10&offset=5", "PatientName=*?*&fuzzymatching=true"} {
		f.Add(s)
	}
	d := dicomcodec.Dataset{
		dicomcodec.TagPatientName: {VR: "PN", Value: []any{dicomcodec.PersonName{Alphabetic: "Smith^John", Ideographic: "山田"}}},
		dicomcodec.TagStudyDate:   {VR: "DA", Value: []any{"20200115"}},
		dicomcodec.TagStudyTime:   {VR: "TM", Value: []any{"101500.5"}},
		"00081110":                {VR: "SQ", Value: []any{dicomcodec.Dataset{"00081155": {VR: "UI", Value: []any{"1.2.3"}}}}},
	}
	f.Fuzz(func(t *testing.T, raw string) {
		params, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		for _, level := range []gateway.QueryLevel{gateway.LevelStudy, gateway.LevelInstance} {
			q, err := gateway.ParseQuery(level, "", "", params, gateway.QueryLimits{Default: 10, Max: 100})
			if err != nil {
				if !errors.Is(err, gateway.ErrInvalid) {
					t.Fatalf("ParseQuery(%q) = %v, not ErrInvalid", raw, err)
				}
				continue
			}
			for _, c := range q.Conditions {
				c.Matches(d, q.FuzzyMatching)
			}
		}
	})
}

package fhir

import (
	"errors"
	"net/http"
	"net/url"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
)

func TestStartedRange(t *testing.T) {
	for _, tt := range []struct {
		in, low, high string
		ok            bool
	}{
		{"2024-03-10", "20240310", "20240310", true},
		{"eq2024-03", "20240301", "20240331", true},
		{"eq2024-02", "20240201", "20240229", true}, // leap year
		{"2023", "20230101", "20231231", true},
		{"ge2024-03-10", "20240310", "", true},
		{"gt2024-03-10", "20240311", "", true},
		{"gt2024-03", "20240401", "", true},
		{"le2024-03-10T10:00:00+01:00", "", "20240310", true},
		{"lt2024-03-01", "", "20240229", true},
		{"ne2024-03-01", "", "", false},
		{"sa2024", "", "", false},
		{"2024-13-01", "", "", false},
		{"20240301", "", "", false},
		{"", "", "", false},
	} {
		low, high, err := startedRange(tt.in)
		if (err == nil) != tt.ok || low != tt.low || high != tt.high {
			t.Errorf("startedRange(%q) = %q, %q, %v; want %q, %q, ok=%v", tt.in, low, high, err, tt.low, tt.high, tt.ok)
		}
		if err != nil && !errors.Is(err, gateway.ErrInvalid) {
			t.Errorf("startedRange(%q): %v is not ErrInvalid", tt.in, err)
		}
	}
}

func TestDateTime(t *testing.T) {
	for _, tt := range []struct{ da, tm, tz, want string }{
		{"20240310", "101530.123", "+0100", "2024-03-10T10:15:30+01:00"},
		{"20240310", "1015", "-0500", "2024-03-10T10:15:00-05:00"},
		{"20240310", "101530", "", "2024-03-10"}, // FHIR needs an offset with a time
		{"20240310", "", "+0000", "2024-03-10"},
		{"2024031", "101530", "+0000", ""},
		{"", "", "", ""},
	} {
		if got := dateTime(tt.da, tt.tm, tt.tz); got != tt.want {
			t.Errorf("dateTime(%q, %q, %q) = %q, want %q", tt.da, tt.tm, tt.tz, got, tt.want)
		}
	}
}

func TestParseSearch(t *testing.T) {
	for _, tt := range []struct {
		query    string
		qido     url.Values
		national string
		ok       bool
	}{
		{"patient.identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919", url.Values{}, "9434765919", true},
		{"patient.identifier=H1", url.Values{"PatientID": {"H1"}}, "", true},
		{"patient.identifier=urn:oid:1.2.3|H1", url.Values{"PatientID": {"H1"}, "IssuerOfPatientID": {"1.2.3"}}, "", true},
		{"patient.identifier=|H*", nil, "", false},
		{"patient.identifier=a&patient.identifier=b", nil, "", false},
		{"identifier=urn:oid:1.2.3", url.Values{"StudyInstanceUID": {"1.2.3"}}, "", true},
		{"identifier=urn:oid:1.2.3&_id=1.2.4", nil, "", false},
		{"identifier=urn:oid:1..2", nil, "", false},
		{"modality=CT,MR", url.Values{"ModalitiesInStudy": {"CT,MR"}}, "", true},
		{"modality=http://loinc.org|CT", nil, "", false},
		{"started=ge2024-01-01&started=lt2024-02-01", url.Values{"StudyDate": {"20240101-20240131"}}, "", true},
		{"started=ge2024-02-01&started=lt2024-01-01", url.Values{"StudyDate": {"99991231-99991231"}}, "", true},
		{"_count=-1", nil, "", false},
		{"_offset=10001", nil, "", false},
		{"unknown=1", url.Values{}, "", true},
	} {
		params, _ := url.ParseQuery(tt.query)
		s, err := parseSearch(params)
		if (err == nil) != tt.ok {
			t.Errorf("%s: err = %v, want ok=%v", tt.query, err, tt.ok)
			continue
		}
		if err != nil {
			continue
		}
		if s.qido.Encode() != tt.qido.Encode() || s.national != tt.national {
			t.Errorf("%s: qido %v national %q, want %v %q", tt.query, s.qido, s.national, tt.qido, tt.national)
		}
	}
}

func TestAcceptsJSON(t *testing.T) {
	for _, tt := range []struct {
		url, accept string
		want        bool
	}{
		{"/fhir/metadata", "", true},
		{"/fhir/metadata", "*/*", true},
		{"/fhir/metadata", "application/fhir+json;q=0.9, application/fhir+xml", true},
		{"/fhir/metadata", "application/fhir+xml", false},
		{"/fhir/metadata", "application/fhir+json;q=0", false},
		{"/fhir/metadata?_format=json", "application/fhir+xml", true},
		{"/fhir/metadata?_format=xml", "", false},
	} {
		r, _ := http.NewRequest(http.MethodGet, tt.url, nil)
		if tt.accept != "" {
			r.Header.Set("Accept", tt.accept)
		}
		if got := acceptsJSON(r); got != tt.want {
			t.Errorf("%s Accept %q: %v, want %v", tt.url, tt.accept, got, tt.want)
		}
	}
}

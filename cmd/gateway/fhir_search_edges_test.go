package main

import (
	"net/url"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// TestFHIRTotalPastTheEnd: a search page past the last match has no total
// (nothing says how many there are); before, total was the offset: 50 for
// one matching study.
func TestFHIRTotalPastTheEnd(t *testing.T) {
	_, root := centre(t, "surrey", "")
	stowOK(t, root+"/dicomweb", []synth.Instance{{PatientID: "A", StudyInstanceUID: synth.UID(92, 1), SeriesInstanceUID: synth.UID(92, 1, 1),
		SOPInstanceUID: synth.UID(92, 1, 1, 1), Rows: 4, Columns: 4, StudyDate: "20240101"}})
	for q, want := range map[string]int{"_count=10": 1, "_offset=50&_count=10": -1} {
		b := searchBundle(t, root+"/fhir/ImagingStudy?"+q)
		got := -1
		if b.Total != nil {
			got = *b.Total
		}
		if got != want {
			t.Errorf("%s: total %d, want %d (-1: none)", q, got, want)
		}
	}
}

// TestFHIRNationalIssuerCase: an NHS number held as the Patient ID under
// Issuer "nHs" (any case is national to the rest of the gateway) is found
// by the search by NHS number. Before, the index matched "NHS" exactly.
func TestFHIRNationalIssuerCase(t *testing.T) {
	_, root := centre(t, "surrey", "")
	stowOK(t, root+"/dicomweb", []synth.Instance{{PatientName: "Doe^Jane", PatientID: testNHSNumber, IssuerOfPatientID: "nHs",
		StudyInstanceUID: synth.UID(96, 1), SeriesInstanceUID: synth.UID(96, 1, 1), SOPInstanceUID: synth.UID(96, 1, 1, 1), Rows: 4, Columns: 4, StudyDate: "20240101"}})
	b := searchBundle(t, root+"/fhir/ImagingStudy?patient.identifier="+url.QueryEscape(gateway.NHSNumberSystem+"|"+testNHSNumber))
	if studies, _ := b.matches(t); len(studies) != 1 {
		t.Errorf("search by NHS number: %d studies, want the one held under issuer nhs", len(studies))
	}
}

package gateway

import (
	"strings"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// Patient identity across centres. Each trust files images under its own
// local patient ID (Patient ID with the trust's Issuer of Patient ID); the
// NHS number is the one identifier every centre shares. In DICOM it
// travels either as the Patient ID itself, with an issuer naming the NHS,
// or as an item of the Other Patient IDs Sequence (0010,1002) carrying its
// own Patient ID and Issuer of Patient ID. The FHIR facade searches by it
// and identity coercion maps local IDs through it.

// Tags of the patient identity attributes.
const (
	TagIssuerOfPatientID       = "00100021"
	TagOtherPatientIDsSequence = "00101002"
)

// NHS number in FHIR and DICOM.
const (
	// NHSNumberSystem is the FHIR Identifier.system of the NHS number.
	NHSNumberSystem = "https://fhir.nhs.uk/Id/nhs-number"
	// NHSNumberIssuer is the Issuer of Patient ID this gateway writes for
	// the NHS number.
	NHSNumberIssuer = "NHS"
	// NHSNumberOID is the ISO OID of the NHS number, which some senders
	// put in Issuer of Patient ID instead of the text "NHS".
	NHSNumberOID = "2.16.840.1.113883.2.1.4.1"
)

// NationalIssuers are the Issuer of Patient ID values that mark an NHS
// number, in the form a QIDO list match takes (LO values separated by \).
var NationalIssuers = []string{NHSNumberIssuer, NHSNumberOID}

// IsNationalIssuer reports whether issuer (an Issuer of Patient ID value)
// names the NHS number. Case and surrounding spaces (LO padding) do not
// matter.
func IsNationalIssuer(issuer string) bool {
	issuer = strings.TrimSpace(issuer)
	for _, n := range NationalIssuers {
		if strings.EqualFold(issuer, n) {
			return true
		}
	}
	return false
}

// NationalID returns the NHS number an instance's (or study's) metadata
// carries: its Patient ID when the Issuer of Patient ID is national, else
// the Patient ID of the first Other Patient IDs Sequence item whose issuer
// is. ok is false when it carries none.
func NationalID(md dicomcodec.Dataset) (id string, ok bool) {
	if IsNationalIssuer(md.String(TagIssuerOfPatientID)) {
		if v := strings.TrimSpace(md.String(dicomcodec.TagPatientID)); v != "" {
			return v, true
		}
	}
	for _, item := range ItemsOf(md[TagOtherPatientIDsSequence]) {
		if !IsNationalIssuer(item.String(TagIssuerOfPatientID)) {
			continue
		}
		if v := strings.TrimSpace(item.String(dicomcodec.TagPatientID)); v != "" {
			return v, true
		}
	}
	return "", false
}

// CarriesNationalID reports whether md carries the NHS number nhs, as
// NationalID finds it or in any other national item of its Other Patient
// IDs Sequence.
func CarriesNationalID(md dicomcodec.Dataset, nhs string) bool {
	if IsNationalIssuer(md.String(TagIssuerOfPatientID)) && strings.TrimSpace(md.String(dicomcodec.TagPatientID)) == nhs {
		return true
	}
	for _, item := range ItemsOf(md[TagOtherPatientIDsSequence]) {
		if IsNationalIssuer(item.String(TagIssuerOfPatientID)) && strings.TrimSpace(item.String(dicomcodec.TagPatientID)) == nhs {
			return true
		}
	}
	return false
}

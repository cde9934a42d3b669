package gateway

import (
	"bytes"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// TestPatientPseudonymMatchesTheAudit: the pseudonym the codec writes for
// an instance's own Patient ID is the one the audit records, from the
// index: a Patient ID of two values (padded per value on the wire) too.
// Without a Patient ID in the index, two other patients' IDs met inside
// sequences get two pseudonyms, never one shared one.
func TestPatientPseudonymMatchesTheAudit(t *testing.T) {
	d, err := NewDeidentifier(nil, bytes.Repeat([]byte{7}, MinDeidentifyKeyBytes), nil)
	if err != nil {
		t.Fatal(err)
	}
	rule := DeidentifyRule{Profile: ProfileBasic}
	rec := &InstanceRecord{Metadata: dicomcodec.Dataset{
		dicomcodec.TagPatientID: {VR: "LO", Value: []any{"123", "456"}},
		TagIssuerOfPatientID:    {VR: "LO", Value: []any{"HAMPSHIRE"}},
	}}
	issuer, id := patientOf(rec)
	audited := d.MapPatientID("surrey", issuer, id)
	if got := d.options("surrey", rule, rec).MapPatientID(`123 \456`); got != audited {
		t.Errorf("two-valued Patient ID sent as %s, audited as %s", got, audited)
	}
	if other := d.options("surrey", rule, rec).MapPatientID("999"); other == audited {
		t.Errorf("another patient's ID in a sequence got this patient's pseudonym")
	}
	// An empty value of a Patient ID is nil in the index, "" on the wire.
	empty := &InstanceRecord{Metadata: dicomcodec.Dataset{dicomcodec.TagPatientID: {VR: "LO", Value: []any{"123", nil}}}}
	if issuer, id := patientOf(empty); id != `123\` || d.options("surrey", rule, empty).MapPatientID(`123\`) != d.MapPatientID("surrey", issuer, id) {
		t.Errorf("a Patient ID with an empty value: indexed as %q, sent as another pseudonym than audited", id)
	}
	none := d.options("surrey", rule, &InstanceRecord{})
	if a, b := none.MapPatientID("M\xfcller1"), none.MapPatientID("M\xfcller2"); a == b {
		t.Errorf("two non-ASCII IDs without an indexed Patient ID share the pseudonym %s", a)
	}
}

package fhirschema_test

import (
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/internal/fhirschema"
)

// TestSchemaRejectsInvalidResources proves the validator can fail: each
// resource breaks one R4 rule the schema states.
func TestSchemaRejectsInvalidResources(t *testing.T) {
	valid := `{"resourceType":"ImagingStudy","status":"available","subject":{"reference":"Patient/1"}}`
	if err := fhirschema.Validate(t, []byte(valid)); err != nil {
		t.Fatalf("valid ImagingStudy refused: %v", err)
	}
	for name, body := range map[string]string{
		"unknown property":    `{"resourceType":"ImagingStudy","status":"available","subject":{"reference":"Patient/1"},"studyUid":"1.2"}`,
		"status not in set":   `{"resourceType":"ImagingStudy","status":"done","subject":{"reference":"Patient/1"}}`,
		"bad dateTime":        `{"resourceType":"ImagingStudy","status":"available","subject":{"reference":"Patient/1"},"started":"2020-13-45T25:00"}`,
		"number as string":    `{"resourceType":"ImagingStudy","status":"available","subject":{"reference":"Patient/1"},"numberOfSeries":"2"}`,
		"unknown resource":    `{"resourceType":"ImagingStudies","status":"available"}`,
		"bad id":              `{"resourceType":"Endpoint","id":"a b","status":"active","connectionType":{"code":"dicom-wado-rs"},"payloadType":[{"text":"DICOM"}],"address":"http://x/dicomweb"}`,
		"bundle type bogus":   `{"resourceType":"Bundle","type":"results"}`,
		"severity not in set": `{"resourceType":"OperationOutcome","issue":[{"severity":"fatal-ish","code":"invalid"}]}`,
	} {
		if err := fhirschema.Validate(t, []byte(body)); err == nil {
			t.Errorf("%s: accepted %s", name, body)
		} else if strings.TrimSpace(err.Error()) == "" {
			t.Errorf("%s: empty error", name)
		}
	}
}

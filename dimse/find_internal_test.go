package dimse

import (
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// TestEncodeValueKeepsEmptyValues: an empty value among others keeps its
// place in a C-FIND response (the identity conflict flag's names are
// aligned with the identities it names by position).
func TestEncodeValueKeepsEmptyValues(t *testing.T) {
	got := strings.TrimRight(string(encodeValue("PN", []any{nil, dicomcodec.PersonName{Alphabetic: "Surrey^Sam"}, nil})), " ")
	if want := `\Surrey^Sam\`; got != want {
		t.Errorf("encoded %q, want %q", got, want)
	}
}

package dicomweb

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"reflect"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/testcorpus"
)

// TestAppendDatasetJSON checks the metadata encoder against
// gateway.Attribute.MarshalJSON on every corpus header (sequences, person
// names, every VR, BulkDataURIs in items) and on awkward strings and numbers:
// both must decode to the same JSON value.
func TestAppendDatasetJSON(t *testing.T) {
	const prefix = "https://pacs.example/dicomweb/studies/1/series/2/instances/3/"
	check := func(t *testing.T, ds gateway.Dataset) {
		t.Helper()
		want, err := json.Marshal(absolutize(ds, prefix))
		if err != nil {
			t.Fatal(err)
		}
		got := appendDatasetJSON(nil, ds, prefix)
		var g, w any
		if err := json.Unmarshal(got, &g); err != nil {
			t.Fatalf("encoder wrote invalid JSON: %v\n%s", err, got)
		}
		json.Unmarshal(want, &w)
		if !reflect.DeepEqual(g, w) {
			t.Errorf("encoder output differs from MarshalJSON:\n got %s\nwant %s", got, want)
		}
	}
	check(t, gateway.Dataset{
		"00100010": {VR: "PN", Value: []any{gateway.PersonName{Alphabetic: "Yamada^Tarou", Ideographic: "山田^太郎"}}},
		"00081030": {VR: "LO", Value: []any{"a\"b\\c\n\t\x01<&>\u2028", nil, "bad \xff utf8"}},
		"00281050": {VR: "DS", Value: []any{1e-7, 1e21, -0.5, 40.0, math.NaN(), math.Inf(1)}},
		"00280010": {VR: "US", Value: []any{int64(512)}},
		"00081115": {VR: "SQ", Value: []any{gateway.Dataset{"00091010": {VR: "OB", BulkDataURI: "bulkdata/00081115/0/00091010"}}}},
		"7FE00010": {VR: "OW", BulkDataURI: "bulkdata/7FE00010"},
		"00091011": {VR: "OB", InlineBinary: "AAEC"},
		"00091012": {VR: "OB", BulkDataURI: "https://elsewhere/x"},
	})
	for _, f := range testcorpus.Files(t) {
		data, err := os.ReadFile(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		h, err := gateway.ParseHeader(bytes.NewReader(data), gateway.HeaderLimits{})
		if err != nil {
			continue
		}
		t.Run(f.Name, func(t *testing.T) { check(t, h.Dataset) })
	}
}

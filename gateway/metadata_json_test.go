package gateway

import (
	"bytes"
	"encoding/json"
	"maps"
	"math"
	"os"
	"reflect"
	"testing"

	"github.com/dicom-gateway/gateway/internal/testcorpus"
)

// TestAppendDatasetJSON checks the metadata encoder against
// Attribute.MarshalJSON on every corpus header (sequences, person
// names, every VR, BulkDataURIs in items) and on awkward strings and numbers:
// both must decode to the same JSON value.
func TestAppendDatasetJSON(t *testing.T) {
	const prefix = "https://pacs.example/dicomweb/studies/1/series/2/instances/3/"
	check := func(t *testing.T, ds Dataset) {
		t.Helper()
		want, err := json.Marshal(absolutize(ds, prefix))
		if err != nil {
			t.Fatal(err)
		}
		got := AppendDatasetJSON(nil, ds, prefix)
		var g, w any
		if err := json.Unmarshal(got, &g); err != nil {
			t.Fatalf("encoder wrote invalid JSON: %v\n%s", err, got)
		}
		json.Unmarshal(want, &w)
		if !reflect.DeepEqual(g, w) {
			t.Errorf("encoder output differs from MarshalJSON:\n got %s\nwant %s", got, want)
		}
	}
	check(t, Dataset{
		"00100010": {VR: "PN", Value: []any{PersonName{Alphabetic: "Yamada^Tarou", Ideographic: "山田^太郎"}}},
		"00081030": {VR: "LO", Value: []any{"a\"b\\c\n\t\x01<&>\u2028", nil, "bad \xff utf8"}},
		"00281050": {VR: "DS", Value: []any{1e-7, 1e21, -0.5, 40.0, math.NaN(), math.Inf(1)}},
		"00280010": {VR: "US", Value: []any{int64(512)}},
		"00081115": {VR: "SQ", Value: []any{Dataset{"00091010": {VR: "OB", BulkDataURI: "bulkdata/00081115/0/00091010"}}}},
		"7FE00010": {VR: "OW", BulkDataURI: "bulkdata/7FE00010"},
		"00091011": {VR: "OB", InlineBinary: "AAEC"},
		"00091012": {VR: "OB", BulkDataURI: "https://elsewhere/x"},
	})
	for _, f := range testcorpus.Files(t) {
		data, err := os.ReadFile(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		h, err := ParseHeader(bytes.NewReader(data), HeaderLimits{})
		if err != nil {
			continue
		}
		t.Run(f.Name, func(t *testing.T) { check(t, h.Dataset) })
	}
}

// absolutize returns ds with every relative BulkDataURI (also inside
// sequence items) prefixed with prefix, for encoders that marshal the
// Dataset itself (QIDO-RS). Datasets without one are returned as they are;
// changed ones are copied, so index records are never modified.
func absolutize(ds Dataset, prefix string) Dataset {
	out, _ := absolutizeDataset(ds, prefix)
	return out
}

// absolutizeDataset is absolutize that also reports whether it copied.
func absolutizeDataset(ds Dataset, prefix string) (Dataset, bool) {
	var out Dataset
	for tag, a := range ds {
		if na, changed := absolutizeAttr(a, prefix); changed {
			if out == nil {
				out = maps.Clone(ds)
			}
			out[tag] = na
		}
	}
	if out == nil {
		return ds, false
	}
	return out, true
}

func absolutizeAttr(a Attribute, prefix string) (Attribute, bool) {
	changed := false
	if relativeURI(a.BulkDataURI) {
		a.BulkDataURI = prefix + a.BulkDataURI
		changed = true
	}
	var items []any
	for i, v := range a.Value {
		item, ok := v.(Dataset)
		if !ok {
			continue
		}
		nv, ch := absolutizeDataset(item, prefix)
		if !ch {
			continue
		}
		if items == nil {
			items = append([]any(nil), a.Value...)
		}
		items[i] = nv
	}
	if items != nil {
		a.Value = items
		changed = true
	}
	return a, changed
}

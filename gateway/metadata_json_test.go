package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"math"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/internal/testcorpus"
)

// TestAppendDatasetJSON checks the metadata encoder against
// Attribute.MarshalJSON on every corpus header (sequences, person
// names, every VR, BulkDataURIs in items) and on awkward strings and numbers:
// both must decode to the same JSON value.
func TestAppendDatasetJSON(t *testing.T) {
	const prefix = "https://pacs.example/dicomweb/studies/1/series/2/instances/3/"
	check := func(t *testing.T, ds dicomcodec.Dataset) {
		t.Helper()
		want, err := json.Marshal(absolutize(ds, prefix))
		if err != nil {
			t.Fatal(err)
		}
		got := dicomcodec.AppendDatasetJSON(nil, ds, prefix)
		var g, w any
		if err := json.Unmarshal(got, &g); err != nil {
			t.Fatalf("encoder wrote invalid JSON: %v\n%s", err, got)
		}
		json.Unmarshal(want, &w)
		if !reflect.DeepEqual(g, w) {
			t.Errorf("encoder output differs from MarshalJSON:\n got %s\nwant %s", got, want)
		}
		// Prepared metadata, once its markers are replaced, is the same
		// bytes as the direct encoding under the instance's URL.
		rec := &InstanceRecord{StudyInstanceUID: "1", SeriesInstanceUID: "2", SOPInstanceUID: "3", Metadata: ds}
		_, prepared := PrepareMetadata(rec)
		if n := bytes.Count(prepared, []byte{dicomcodec.MetadataURLMarker}); n != bytes.Count(got, []byte(prefix)) {
			t.Errorf("prepared metadata has %d URL markers, want one per relative BulkDataURI (%d)", n, bytes.Count(got, []byte(prefix)))
		}
		if expanded := AppendPreparedMetadata(nil, prepared, strings.TrimSuffix(prefix, "/")); !bytes.Equal(expanded, got) {
			t.Errorf("prepared metadata expands to\n%s\nwant\n%s", expanded, got)
		}
	}
	check(t, dicomcodec.Dataset{
		"00100010": {VR: "PN", Value: []any{dicomcodec.PersonName{Alphabetic: "Yamada^Tarou", Ideographic: "山田^太郎"}}},
		"00081030": {VR: "LO", Value: []any{"a\"b\\c\n\t\x01<&>\u2028", nil, "bad \xff utf8"}},
		"00281050": {VR: "DS", Value: []any{1e-7, 1e21, -0.5, 40.0, math.NaN(), math.Inf(1)}},
		"00280010": {VR: "US", Value: []any{int64(512)}},
		"00081115": {VR: "SQ", Value: []any{dicomcodec.Dataset{"00091010": {VR: "OB", BulkDataURI: "bulkdata/00081115/0/00091010"}}}},
		"7FE00010": {VR: "OW", BulkDataURI: "bulkdata/7FE00010"},
		"00091011": {VR: "OB", InlineBinary: "AAEC"},
		"00091012": {VR: "OB", BulkDataURI: "https://elsewhere/x"},
	})
	for _, f := range testcorpus.Files(t) {
		data, err := os.ReadFile(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		h, err := dicomcodec.ParseHeader(bytes.NewReader(data), dicomcodec.HeaderLimits{})
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
func absolutize(ds dicomcodec.Dataset, prefix string) dicomcodec.Dataset {
	out, _ := absolutizeDataset(ds, prefix)
	return out
}

// absolutizeDataset is absolutize that also reports whether it copied.
func absolutizeDataset(ds dicomcodec.Dataset, prefix string) (dicomcodec.Dataset, bool) {
	var out dicomcodec.Dataset
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

func absolutizeAttr(a dicomcodec.Attribute, prefix string) (dicomcodec.Attribute, bool) {
	changed := false
	if relativeURI(a.BulkDataURI) {
		a.BulkDataURI = prefix + a.BulkDataURI
		changed = true
	}
	var items []any
	for i, v := range a.Value {
		item, ok := v.(dicomcodec.Dataset)
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

// TestPreparedMetadataHostileURL: a public URL taken from a client's
// X-Forwarded-Prefix cannot break out of the JSON string.
func TestPreparedMetadataHostileURL(t *testing.T) {
	rec := &InstanceRecord{Metadata: dicomcodec.Dataset{"7FE00010": {VR: "OW", BulkDataURI: "bulkdata/7FE00010"}}}
	_, prepared := PrepareMetadata(rec)
	out := AppendPreparedMetadata(nil, prepared, `https://h/x","vr":"PN"}\`+"\x00")
	var v map[string]map[string]any
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("expanded metadata is not JSON: %v\n%s", err, out)
	}
	if got, want := v["7FE00010"]["BulkDataURI"], `https://h/x","vr":"PN"}\`+"\x00/bulkdata/7FE00010"; got != want {
		t.Fatalf("BulkDataURI %q, want %q", got, want)
	}
}

// TestMetadataOrder: entries round-trip through their stored form and sort
// exactly as CompareInstances sorts the records.
func TestMetadataOrder(t *testing.T) {
	mk := func(series, sop string, seriesNo, instNo any) *InstanceRecord {
		md := dicomcodec.Dataset{dicomcodec.TagPatientID: {VR: "LO", Value: []any{"PID-" + sop}}}
		if seriesNo != nil {
			md[dicomcodec.TagSeriesNumber] = dicomcodec.Attribute{VR: "IS", Value: []any{seriesNo}}
		}
		if instNo != nil {
			md[dicomcodec.TagInstanceNumber] = dicomcodec.Attribute{VR: "IS", Value: []any{instNo}}
		}
		return &InstanceRecord{StudyInstanceUID: "1", SeriesInstanceUID: series, SOPInstanceUID: sop, Metadata: md}
	}
	recs := []*InstanceRecord{
		mk("1.9", "1.9.1", int64(2), int64(3)), mk("1.9", "1.9.2", int64(2), nil), mk("1.9", "1.9.3", int64(2), "-1"),
		mk("1.8", "1.8.1", nil, int64(1)), mk("1.7", "1.7.1", 1.5, int64(1)), mk("1.7", "1.7.2", 1.5, 1.25),
		mk("1.6", "1.6.1", int64(2), int64(1)),
	}
	entries := make([]MetadataEntry, len(recs))
	for i, r := range recs {
		order := MetadataOrder(r)
		e, err := DecodeMetadataEntry(r.StudyInstanceUID, r.SeriesInstanceUID, r.SOPInstanceUID, order)
		if err != nil {
			t.Fatal(err)
		}
		if want := NewMetadataEntry(r); e != want {
			t.Fatalf("entry round trip: got %+v, want %+v", e, want)
		}
		if e.PatientID != "PID-"+r.SOPInstanceUID {
			t.Fatalf("PatientID %q", e.PatientID)
		}
		entries[i] = e
	}
	for i := range recs {
		for j := range recs {
			if got, want := CompareMetadataEntries(entries[i], entries[j]), CompareInstances(recs[i], recs[j]); got != want {
				t.Errorf("compare %s with %s: entries %d, records %d", recs[i].SOPInstanceUID, recs[j].SOPInstanceUID, got, want)
			}
		}
	}
	slices.SortFunc(entries, CompareMetadataEntries)
	var got []string
	for _, e := range entries {
		got = append(got, e.SOPInstanceUID)
	}
	// Series by SeriesNumber (absent last, UID breaks ties), then
	// InstanceNumber (absent last).
	if want := []string{"1.7.1", "1.7.2", "1.6.1", "1.9.3", "1.9.1", "1.9.2", "1.8.1"}; !slices.Equal(got, want) {
		t.Errorf("sorted %v, want %v", got, want)
	}
	// The NHS number, carried under a local Patient ID, round-trips too;
	// an entry written before it was kept reads with none.
	nhs := mk("1.5", "1.5.1", nil, nil)
	nhs.Metadata[TagOtherPatientIDsSequence] = dicomcodec.Attribute{VR: "SQ", Value: []any{dicomcodec.Dataset{
		dicomcodec.TagPatientID: {VR: "LO", Value: []any{"9434765919"}}, TagIssuerOfPatientID: {VR: "LO", Value: []any{NHSNumberIssuer}}}}}
	e, err := DecodeMetadataEntry("1", "1.5", "1.5.1", MetadataOrder(nhs))
	if err != nil || e.PatientID != "PID-1.5.1" || e.NationalID != "9434765919" {
		t.Errorf("entry with an NHS number read back as %q, %q (%v)", e.PatientID, e.NationalID, err)
	}
	old := NewMetadataEntry(nhs)
	old.NationalID = ""
	if e, err := DecodeMetadataEntry("1", "1.5", "1.5.1", old.EncodeOrder()); err != nil || e.PatientID != "PID-1.5.1" || e.NationalID != "" {
		t.Errorf("entry of the earlier form read back as %q, %q (%v)", e.PatientID, e.NationalID, err)
	}
	for _, bad := range [][]byte{nil, {1}, make([]byte, 33), append([]byte{2}, make([]byte, 33)...)} {
		if _, err := DecodeMetadataEntry("1", "2", "3", bad); !errors.Is(err, ErrUnavailable) {
			t.Errorf("DecodeMetadataEntry(%d bytes): err=%v, want ErrUnavailable", len(bad), err)
		}
	}
}

// relativeURI is the test of AppendDatasetJSON for a BulkDataURI it
// prefixes: not empty, not absolute, no scheme.
func relativeURI(u string) bool {
	return u != "" && !strings.HasPrefix(u, "/") && !strings.Contains(u, "://")
}

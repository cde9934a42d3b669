package dicomweb_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"maps"
	"math"
	"net/http"
	"strings"
	"testing"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// viewerTags are what a viewer needs to draw an image (OHIF shows a black or
// wrong image without them): when the instance's header has one, its
// metadata must carry the same value.
var viewerTags = []string{
	dicomcodec.TagRows, dicomcodec.TagColumns, dicomcodec.TagBitsAllocated, dicomcodec.TagBitsStored,
	dicomcodec.TagPixelRepresentation, dicomcodec.TagSamplesPerPixel, dicomcodec.TagPhotometricInterpretation,
	dicomcodec.TagRescaleIntercept, dicomcodec.TagRescaleSlope, dicomcodec.TagWindowCenter, dicomcodec.TagWindowWidth,
	dicomcodec.TagSeriesNumber, dicomcodec.TagInstanceNumber, dicomcodec.TagNumberOfFrames,
}

// TestWADOCorpus stores every corpus file the gateway accepts and checks,
// for each: instance, series and study retrieve are byte-identical to the
// file; its object in the series metadata equals its instance metadata and
// carries the viewer attributes of its header and absolute, retrievable
// BulkDataURIs; every frame equals the pixel data
// the dicom library reads from the file (native: the raw value; encapsulated:
// the fragments of the frame).
func TestWADOCorpus(t *testing.T) {
	for _, backend := range wadoBackends {
		t.Run(backend, func(t *testing.T) {
			stored := storeCorpusForWADO(t, backend)
			for _, ci := range stored {
				t.Run(ci.name, func(t *testing.T) {
					checkWADORetrieve(t, ci.g, ci)
					checkWADOMetadata(t, ci.g, ci)
					checkWADOFrames(t, ci.g, ci)
					checkWADORendered(t, ci.g, ci)
				})
			}
			t.Logf("%d corpus files stored and checked", len(stored))
			if len(stored) < 40 {
				t.Errorf("only %d corpus files were stored: STOW refused most of the corpus", len(stored))
			}
		})
	}
}

func checkWADORetrieve(t *testing.T, g *wadoGateway, ci wadoCorpusInstance) {
	rec := ci.rec
	for _, path := range []string{
		ci.path(),
		"/dicomweb/studies/" + rec.StudyInstanceUID + "/series/" + rec.SeriesInstanceUID,
		"/dicomweb/studies/" + rec.StudyInstanceUID,
	} {
		parts := readParts(t, g.get(t, path, "Accept", `multipart/related; type="application/dicom"; transfer-syntax=*`), "application/dicom")
		// Other files of the corpus may share the study or series.
		series := rec.SeriesInstanceUID
		if !strings.Contains(path, "/series/") {
			series = ""
		}
		if strings.Contains(path, "/instances/") {
			series = "-"
		}
		want := 1
		if series != "-" {
			recs, err := g.index.ListInstances(t.Context(), rec.StudyInstanceUID, series)
			if err != nil {
				t.Fatal(err)
			}
			want = len(recs)
		}
		if got := len(parts); got != want {
			t.Fatalf("GET %s: %d parts, want %d", path, got, want)
		}
		found := 0
		for _, p := range parts {
			if bytes.Equal(p.body, ci.data) {
				found++
				if got, want := p.contentType, "application/dicom; transfer-syntax="+rec.TransferSyntaxUID; got != want {
					t.Errorf("GET %s: part Content-Type %q, want %q", path, got, want)
				}
			}
		}
		if found != 1 {
			t.Errorf("GET %s: %d parts byte-identical to the stored file, want 1", path, found)
		}
	}
	// A bare application/dicom body for one instance, as stored.
	resp := g.get(t, ci.path(), "Accept", "application/dicom; transfer-syntax=*")
	if resp.StatusCode != http.StatusOK || !bytes.Equal(readBody(t, resp), ci.data) {
		t.Errorf("GET instance as application/dicom: status %d or bytes differ", resp.StatusCode)
	}
	// No syntax named: Implicit VR Little Endian and Explicit VR Big Endian
	// come transcoded to Explicit VR Little Endian, the rest as stored.
	want, wantTS := ci.data, rec.TransferSyntaxUID
	if dicomcodec.CanTranscode(rec.TransferSyntaxUID, dicomcodec.TSExplicitLE) {
		var buf bytes.Buffer
		if _, err := dicomcodec.TranscodeToExplicitLE(&buf, bytes.NewReader(ci.data)); err != nil {
			t.Fatal(err)
		}
		want, wantTS = buf.Bytes(), dicomcodec.TSExplicitLE
	}
	parts := readParts(t, g.get(t, ci.path(), "Accept", `multipart/related; type="application/dicom"`), "application/dicom")
	if len(parts) != 1 || !bytes.Equal(parts[0].body, want) {
		t.Errorf("GET instance naming no syntax (stored as %s): not the bytes in %s", rec.TransferSyntaxUID, wantTS)
	} else if got := parts[0].contentType; got != "application/dicom; transfer-syntax="+wantTS {
		t.Errorf("GET instance naming no syntax: part Content-Type %q, want %s", got, wantTS)
	}
}

func checkWADOMetadata(t *testing.T, g *wadoGateway, ci wadoCorpusInstance) {
	resp := g.get(t, ci.path()+"/metadata")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("metadata: status %d", resp.StatusCode)
	}
	if got, want := resp.Header.Get("Content-Type"), "application/dicom+json"; got != want {
		t.Errorf("metadata Content-Type %q, want %q", got, want)
	}
	var inst []json.RawMessage
	if err := json.Unmarshal(readBody(t, resp), &inst); err != nil || len(inst) != 1 {
		t.Fatalf("instance metadata: %d objects, err %v", len(inst), err)
	}
	// Viewers read series metadata (served from the prepared form): the
	// instance's object there must be the instance metadata, byte for byte.
	resp = g.get(t, "/dicomweb/studies/"+ci.rec.StudyInstanceUID+"/series/"+ci.rec.SeriesInstanceUID+"/metadata")
	var series []json.RawMessage
	if err := json.Unmarshal(readBody(t, resp), &series); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("series metadata: status %d, err %v", resp.StatusCode, err)
	}
	var fromSeries json.RawMessage
	for _, item := range series {
		if bytes.Contains(item, []byte(`"00080018":{"vr":"UI","Value":["`+ci.rec.SOPInstanceUID+`"]}`)) {
			fromSeries = item
		}
	}
	if !bytes.Equal(fromSeries, inst[0]) {
		t.Fatalf("the instance's object in series metadata differs from its instance metadata:\n%.300s\nwant\n%.300s", fromSeries, inst[0])
	}
	var arr []map[string]dicomcodec.Attribute
	if err := json.Unmarshal(append(append([]byte("["), fromSeries...), ']'), &arr); err != nil || len(arr) != 1 {
		t.Fatalf("metadata: %d objects, err %v", len(arr), err)
	}
	md := arr[0]
	for _, tg := range viewerTags {
		want, ok := ci.header.Dataset[tg]
		if !ok {
			continue
		}
		got, ok := md[tg]
		if !ok {
			t.Errorf("metadata lacks %s, which the instance has", tg)
			continue
		}
		if g, w := fmt.Sprint(normalizeValues(got.Value)), fmt.Sprint(normalizeValues(want.Value)); g != w {
			t.Errorf("metadata %s = %s, want %s", tg, g, w)
		}
	}
	prefix := g.srv.URL + ci.path() + "/bulkdata/"
	for path, uri := range bulkDataURIs(dicomcodec.Dataset(md), "") {
		if !strings.HasPrefix(uri, prefix+path) {
			t.Errorf("%s BulkDataURI %q is not absolute under %s", path, uri, prefix)
			continue
		}
		resp := g.get(t, uri, "Accept", "multipart/related; type=application/octet-stream; transfer-syntax=*")
		isPixels := path == dicomcodec.TagPixelData || path == "7FE00008" || path == "7FE00009"
		if resp.StatusCode == http.StatusNotAcceptable && (!isPixels || ci.rec.PixelData == nil) {
			t.Logf("%s: 406 %s", path, errorBody(t, resp))
			continue // an undefined-length OB, or a deflated dataset: refused with a reason
		}
		parts := readParts(t, resp, "")
		if len(parts) == 0 {
			t.Errorf("%s bulk data: no parts", path)
			continue
		}
		switch {
		case !isPixels:
			checkWADOBulkValue(t, ci, path, parts[0].body)
		case ci.rec.PixelData == nil: // deflated: served by inflating, compare the whole value
			if want, err := libraryFrames(ci, 1); err == nil && !bytes.Equal(parts[0].body, want[0]) {
				t.Errorf("%s: %d bytes differ from the library's %d bytes", path, len(parts[0].body), len(want[0]))
			} else if err != nil {
				t.Logf("%s: not compared: %v", path, err)
			}
		}
	}
}

// bulkDataURIs maps each BulkDataURI of ds, also inside sequence items, to
// its path ("7FE00010", "54000100/0/54001010").
func bulkDataURIs(ds dicomcodec.Dataset, prefix string) map[string]string {
	out := map[string]string{}
	for tg, a := range ds {
		if a.BulkDataURI != "" {
			out[prefix+tg] = a.BulkDataURI
		}
		for i, v := range a.Value {
			if item, ok := v.(dicomcodec.Dataset); ok {
				maps.Copy(out, bulkDataURIs(item, fmt.Sprintf("%s%s/%d/", prefix, tg, i)))
			}
		}
	}
	return out
}

// checkWADOBulkValue compares a bulk value (top level or inside sequence
// items) with what the dicom library reads for that element.
func checkWADOBulkValue(t *testing.T, ci wadoCorpusInstance, path string, got []byte) {
	ds, err := parseWithLibrary(ci.data, dicom.SkipPixelData())
	if err != nil {
		return
	}
	elems := ds.Elements
	segs := strings.Split(path, "/")
	var el *dicom.Element
	for i := 0; i < len(segs); i += 2 {
		var g, e uint16
		fmt.Sscanf(segs[i], "%04X%04X", &g, &e)
		el = nil
		for _, x := range elems {
			if x.Tag == (tag.Tag{Group: g, Element: e}) {
				el = x
			}
		}
		if el == nil {
			t.Logf("%s: the library has no such element", path)
			return
		}
		if i+1 < len(segs) {
			var n int
			fmt.Sscanf(segs[i+1], "%d", &n)
			items, ok := el.Value.GetValue().([]*dicom.SequenceItemValue)
			if !ok || n >= len(items) {
				return
			}
			elems = items[n].GetValue().([]*dicom.Element)
		}
	}
	want, ok := el.Value.GetValue().([]byte)
	if !ok {
		return
	}
	if ci.rec.TransferSyntaxUID == dicomcodec.TSExplicitBE && el.RawValueRepresentation == "OW" {
		return // the library re-encodes OW little-endian
	}
	if !bytes.Equal(got, want) {
		t.Errorf("bulk data %s: %d bytes differ from the library's %d bytes", path, len(got), len(want))
	}
}

// normalizeValues makes JSON-decoded and ingest-time values comparable.
func normalizeValues(vals []any) []any {
	out := make([]any, len(vals))
	for i, v := range vals {
		switch n := v.(type) {
		case int64:
			out[i] = float64(n)
		case float64:
			out[i] = n
		case json.Number:
			f, _ := n.Float64()
			out[i] = f
		default:
			out[i] = v
		}
		if f, ok := out[i].(float64); ok && f == math.Trunc(f) {
			out[i] = int64(f)
		}
	}
	return out
}

// parseWithLibrary parses data with the dicom library, turning its panics into
// errors.
func parseWithLibrary(data []byte, opts ...dicom.ParseOption) (ds dicom.Dataset, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("dicom library panic: %v", v)
		}
	}()
	return dicom.Parse(bytes.NewReader(data), int64(len(data)), nil, opts...)
}

func checkWADOFrames(t *testing.T, g *wadoGateway, ci wadoCorpusInstance) {
	rec := ci.rec
	if rec.PixelData == nil {
		want := http.StatusNotFound
		for _, tg := range []string{dicomcodec.TagPixelData, "7FE00008", "7FE00009"} {
			if _, ok := rec.Metadata[tg]; ok {
				want = http.StatusNotAcceptable // there, but not locatable (deflated)
			}
		}
		if resp := g.get(t, ci.path()+"/frames/1"); resp.StatusCode != want {
			t.Errorf("frames without a pixel data layout: status %d, want %d", resp.StatusCode, want)
		}
		return
	}
	n := rec.Frames()
	list := make([]string, n)
	for i := range list {
		list[i] = fmt.Sprint(i + 1)
	}
	framesPath := ci.path() + "/frames/" + strings.Join(list, ",")
	want, err := libraryFrames(ci, n)
	if errors.Is(err, errShortPixelData) {
		if resp := g.get(t, framesPath); resp.StatusCode != http.StatusNotFound {
			t.Errorf("frames beyond the stored pixel data: status %d, want 404", resp.StatusCode)
		}
		return
	}
	if err != nil {
		t.Logf("frames not compared: %v", err)
	}
	resp := g.get(t, framesPath, "Accept", "multipart/related; type=application/octet-stream; transfer-syntax=*")
	if resp.StatusCode == http.StatusNotAcceptable {
		t.Logf("frames: 406 %s", errorBody(t, resp))
		return
	}
	parts := readParts(t, resp, "application/octet-stream")
	if got := len(parts); got != n {
		t.Fatalf("frames: %d parts, want %d", got, n)
	}
	for i, p := range parts {
		if !strings.Contains(p.contentType, "transfer-syntax=") {
			t.Errorf("frame %d: part Content-Type %q has no transfer-syntax", i+1, p.contentType)
		}
		if want != nil && !bytes.Equal(p.body, want[i]) {
			t.Errorf("frame %d: %d bytes differ from the library's %d bytes", i+1, len(p.body), len(want[i]))
		}
	}
	// Big endian OW pixels asked for as Explicit VR Little Endian: each
	// 16-bit word swapped.
	if rec.TransferSyntaxUID == dicomcodec.TSExplicitBE && rec.Metadata[dicomcodec.TagPixelData].VR == "OW" && want != nil {
		resp := g.get(t, framesPath, "Accept", "multipart/related; type=application/octet-stream; transfer-syntax="+dicomcodec.TSExplicitLE)
		for i, p := range readParts(t, resp, "application/octet-stream") {
			w := bytes.Clone(want[i])
			for j := 0; j+1 < len(w); j += 2 {
				w[j], w[j+1] = w[j+1], w[j]
			}
			if !bytes.Equal(p.body, w) || !strings.HasSuffix(p.contentType, "transfer-syntax="+dicomcodec.TSExplicitLE) {
				t.Errorf("frame %d as Explicit VR Little Endian: %q, bytes not the swapped words", i+1, p.contentType)
			}
		}
	}
	// Beyond the last frame: 404.
	if resp := g.get(t, fmt.Sprintf("%s/frames/%d", ci.path(), n+1)); resp.StatusCode != http.StatusNotFound {
		t.Errorf("frame %d of %d: status %d, want 404", n+1, n, resp.StatusCode)
	}
}

// errShortPixelData: the file's native pixel data is shorter than its frames.
var errShortPixelData = errors.New("pixel data shorter than rows × columns × frames")

// libraryFrames reads the expected frames of ci with the dicom library.
// Native: the raw Pixel Data value cut into frames. Encapsulated: one
// fragment per frame, or every fragment for a single frame.
func libraryFrames(ci wadoCorpusInstance, n int) ([][]byte, error) {
	opts := []dicom.ParseOption{dicom.SkipProcessingPixelDataValue(), dicom.AllowMismatchPixelDataLength()}
	ds, err := parseWithLibrary(ci.data, opts...)
	if err != nil {
		return nil, err
	}
	el, err := ds.FindElementByTag(tag.PixelData)
	if err != nil {
		return nil, err
	}
	info, ok := el.Value.GetValue().(dicom.PixelDataInfo)
	if !ok {
		return nil, fmt.Errorf("pixel data value is %T", el.Value.GetValue())
	}
	if !info.IsEncapsulated {
		raw := info.UnprocessedValueData
		num := func(tg tag.Tag, def int) int {
			if el, err := ds.FindElementByTag(tg); err == nil {
				if v, ok := el.Value.GetValue().([]int); ok && len(v) > 0 {
					return v[0]
				}
			}
			return def
		}
		bits := num(tag.Rows, 0) * num(tag.Columns, 0) * num(tag.SamplesPerPixel, 1) * num(tag.BitsAllocated, 0)
		if bits == 0 || bits%8 != 0 {
			return nil, fmt.Errorf("frames of %d bits: no byte oracle", bits)
		}
		size := bits / 8
		if len(raw) < size*n {
			return nil, errShortPixelData
		}
		out := make([][]byte, n)
		for i := range out {
			out[i] = raw[i*size : (i+1)*size]
		}
		return out, nil
	}
	var frags [][]byte
	for _, f := range info.Frames {
		frags = append(frags, f.EncapsulatedData.Data)
	}
	switch {
	case len(frags) == n:
		return frags, nil
	case n == 1:
		return [][]byte{bytes.Join(frags, nil)}, nil
	case strings.HasPrefix(ci.rec.TransferSyntaxUID, "1.2.840.10008.1.2.4.5") || strings.HasPrefix(ci.rec.TransferSyntaxUID, "1.2.840.10008.1.2.4.70"):
		// JPEG: each frame's first fragment starts with an SOI marker.
		var out [][]byte
		for _, f := range frags {
			if bytes.HasPrefix(f, []byte{0xFF, 0xD8}) || len(out) == 0 {
				out = append(out, nil)
			}
			out[len(out)-1] = append(out[len(out)-1], f...)
		}
		if len(out) == n {
			return out, nil
		}
	}
	return nil, fmt.Errorf("%d fragments for %d frames: no oracle", len(frags), n)
}

// checkWADORendered: a rendered image of every image instance is a decodable
// JPEG of its size (scaled to the thumbnail box for /thumbnail), or a 406 or
// 404 with a reason; never a server error.
func checkWADORendered(t *testing.T, g *wadoGateway, ci wadoCorpusInstance) {
	for _, suffix := range []string{"/rendered", "/thumbnail"} {
		resp := g.get(t, ci.path()+suffix)
		switch resp.StatusCode {
		case http.StatusOK:
			cfg, format, err := image.DecodeConfig(bytes.NewReader(readBody(t, resp)))
			if err != nil || format != "jpeg" {
				t.Errorf("%s: not a JPEG (%s, %v)", suffix, format, err)
				continue
			}
			if suffix == "/thumbnail" && (cfg.Width > 128 || cfg.Height > 128) {
				t.Errorf("thumbnail %dx%d exceeds 128x128", cfg.Width, cfg.Height)
			}
			if rows, ok := ci.rec.Metadata.Number(dicomcodec.TagRows, 0); ok && suffix == "/rendered" && cfg.Height != int(rows) {
				t.Errorf("rendered height %d, want Rows %v", cfg.Height, rows)
			}
		case http.StatusNotAcceptable, http.StatusNotFound:
			if msg := errorBody(t, resp); msg == "" {
				t.Errorf("%s: %d without a reason", suffix, resp.StatusCode)
			} else {
				t.Logf("%s: %d %s", suffix, resp.StatusCode, msg)
			}
		default:
			t.Errorf("%s: status %d: %s", suffix, resp.StatusCode, readBody(t, resp))
		}
	}
}

package gateway_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/testcorpus"
)

// parseFile parses a whole file: the header with ParseHeader and the rest
// through Tail, as ingest does.
func parseFile(t testing.TB, data []byte) (*gateway.Header, *gateway.PixelDataLayout, error) {
	t.Helper()
	h, err := gateway.ParseHeader(bytes.NewReader(data), gateway.HeaderLimits{})
	if err != nil {
		return nil, nil, err
	}
	if h.HeaderLength > int64(len(data)) {
		t.Fatalf("HeaderLength %d beyond the %d bytes of input", h.HeaderLength, len(data))
	}
	tail := h.Tail()
	// Feed the tail in small uneven pieces: the scanner must not depend on
	// how the stream is cut.
	rest := data[h.HeaderLength:]
	for i := 0; len(rest) > 0; i++ {
		n := min(len(rest), 1+(i*7919)%4099)
		if _, err := tail.Write(rest[:n]); err != nil {
			return h, nil, err
		}
		rest = rest[n:]
	}
	layout, err := tail.Finish()
	return h, layout, err
}

// TestParseHeaderCorpus parses every corpus file: well-formed Part 10 files
// parse completely, malformed ones fail with an *InstanceError and a reason,
// and nothing panics.
func TestParseHeaderCorpus(t *testing.T) {
	for _, f := range testcorpus.Files(t) {
		t.Run(f.Name, func(t *testing.T) {
			data, err := os.ReadFile(f.Path)
			if err != nil {
				t.Fatal(err)
			}
			h, layout, err := parseFile(t, data)
			noPart10 := strings.Contains(f.TransferSyntax, "no meta")
			if err != nil {
				ie, ok := err.(*gateway.InstanceError)
				if !ok || ie.Reason == 0 {
					t.Fatalf("error %v (%T) is not an *InstanceError with a reason", err, err)
				}
				if !f.Malformed && !noPart10 {
					t.Fatalf("well-formed file refused: %v", err)
				}
				return
			}
			if noPart10 {
				t.Fatalf("file without a Part 10 header accepted")
			}
			if strings.Contains(f.Note, "truncated") || strings.Contains(f.Note, "cut") || strings.Contains(f.Note, "ends early") {
				t.Fatalf("truncated file accepted")
			}
			if h.TransferSyntaxUID == "" {
				t.Errorf("TransferSyntaxUID is empty")
			}
			if layout != nil {
				for i, fr := range layout.Frames {
					for _, r := range fr {
						if r.Offset < layout.ValueOffset || r.Offset+r.Length > int64(len(data)) {
							t.Fatalf("frame %d range %+v outside the pixel data", i+1, r)
						}
					}
				}
				if !layout.Encapsulated && layout.ValueOffset+layout.ValueLength > int64(len(data)) {
					t.Fatalf("pixel data value %+v beyond the end", layout)
				}
			}
		})
	}
}

// TestParseHeaderMatchesDcm2json compares the Dataset of every corpus file
// dcmtk can convert with dcm2json's DICOM JSON, the reference
// implementation of PS3.18 F.2 on this machine.
func TestParseHeaderMatchesDcm2json(t *testing.T) {
	if _, err := exec.LookPath("dcm2json"); err != nil {
		t.Skip("dcm2json (dcmtk) not installed")
	}
	for _, f := range testcorpus.Files(t) {
		data, err := os.ReadFile(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		h, _, err := parseFile(t, data)
		if err != nil {
			continue
		}
		out, err := exec.CommandContext(t.Context(), "dcm2json", f.Path).Output()
		if err != nil {
			continue // dcmtk cannot convert it (e.g. ISO 2022 IR 87 without iconv support)
		}
		t.Run(f.Name, func(t *testing.T) {
			var want map[string]any
			if err := json.Unmarshal(out, &want); err != nil {
				t.Skipf("dcm2json output is not JSON: %v", err)
			}
			b, err := json.Marshal(h.Dataset)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			var diffs []string
			compareJSON("", got, want, &diffs)
			if len(diffs) > 0 {
				sort.Strings(diffs)
				t.Errorf("%d differences from dcm2json:\n%s", len(diffs), strings.Join(diffs[:min(len(diffs), 20)], "\n"))
			}
		})
	}
}

// compareJSON compares two DICOM JSON objects. Our BulkDataURIs stand for
// values dcm2json inlines; number formats may differ.
func compareJSON(path string, got, want map[string]any, diffs *[]string) {
	keys := map[string]bool{}
	for k := range got {
		keys[k] = true
	}
	for k := range want {
		keys[k] = true
	}
	for k := range keys {
		g, gok := got[k].(map[string]any)
		w, wok := want[k].(map[string]any)
		p := path + k
		if strings.Compare(k, "7FE00010") > 0 && path == "" && !gok {
			continue // elements after Pixel Data (trailing padding) are not part of the header
		}
		if k == "00080005" && path != "" {
			continue // nested (0008,0005): we say ISO_IR 192 at every level, dcm2json only at the top
		}
		if !gok || !wok {
			*diffs = append(*diffs, fmt.Sprintf("%s: present ours=%v dcm2json=%v", p, gok, wok))
			continue
		}
		if g["vr"] == "UN" && len(k) == 8 && strings.IndexByte("13579BDF", k[3]) >= 0 {
			continue // a private element in implicit VR: dcmtk knows vendor dictionaries, we keep the bytes
		}
		if g["vr"] != w["vr"] {
			*diffs = append(*diffs, fmt.Sprintf("%s: vr %v, dcm2json %v", p, g["vr"], w["vr"]))
			continue
		}
		if _, bulk := g["BulkDataURI"]; bulk {
			continue
		}
		if g["InlineBinary"] != nil || w["InlineBinary"] != nil {
			gb, _ := base64.StdEncoding.DecodeString(fmt.Sprint(g["InlineBinary"]))
			wb, _ := base64.StdEncoding.DecodeString(fmt.Sprint(w["InlineBinary"]))
			if !bytes.Equal(gb, wb) {
				*diffs = append(*diffs, fmt.Sprintf("%s: InlineBinary %d bytes, dcm2json %d bytes", p, len(gb), len(wb)))
			}
			continue
		}
		gv, _ := g["Value"].([]any)
		wv, _ := w["Value"].([]any)
		if g["vr"] == "SQ" {
			if len(gv) != len(wv) {
				*diffs = append(*diffs, fmt.Sprintf("%s: %d items, dcm2json %d", p, len(gv), len(wv)))
				continue
			}
			for i := range gv {
				gi, _ := gv[i].(map[string]any)
				wi, _ := wv[i].(map[string]any)
				compareJSON(fmt.Sprintf("%s/%d/", p, i), gi, wi, diffs)
			}
			continue
		}
		if ws := fmt.Sprint(wv); strings.ContainsAny(ws, "\x1b\uFFFD") || strings.Contains(ws, "$B") {
			continue // dcmtk could not decode it (ISO 2022 code extensions)
		}
		if g["vr"] == "IS" || g["vr"] == "DS" {
			if (len(gv) == 0 || slices.Contains(gv, nil)) && len(wv) > 0 && !slices.Contains(wv, nil) {
				continue // an invalid number: dcm2json keeps the string, JSON numbers cannot
			}
		}
		if !valuesEqual(gv, wv) {
			*diffs = append(*diffs, fmt.Sprintf("%s (%v): %v, dcm2json %v", p, g["vr"], truncate(gv), truncate(wv)))
		}
	}
}

func truncate(v []any) string {
	s := fmt.Sprint(v)
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}

func valuesEqual(a, b []any) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		fa, aok := a[i].(float64)
		fb, bok := b[i].(float64)
		if aok && bok {
			if fa != fb && math.Abs(fa-fb) > 1e-6*math.Max(math.Abs(fa), math.Abs(fb)) {
				return false
			}
			continue
		}
		if !reflect.DeepEqual(a[i], b[i]) {
			return false
		}
	}
	return true
}

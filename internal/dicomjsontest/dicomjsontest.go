// Package dicomjsontest compares DICOM JSON (PS3.18 F.2) written by the
// gateway with the same instance as dcmtk's dcm2json writes it, the
// reference implementation on this machine, allowing for the differences
// the standard allows.
package dicomjsontest

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math"
	"reflect"
	"slices"
	"sort"
	"strings"
)

// Diff returns the differences between got (ours) and want (dcm2json's),
// sorted, one line each; none when they agree. BulkDataURIs stand for
// values dcm2json inlines, and number formats may differ.
func Diff(got, want map[string]any) []string {
	var diffs []string
	compareJSON("", got, want, &diffs)
	sort.Strings(diffs)
	return diffs
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

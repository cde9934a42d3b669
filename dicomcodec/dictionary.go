package dicomcodec

//go:generate go run gendictionary.go

import (
	"fmt"
	"strings"

	"github.com/suyashkumar/dicom/pkg/tag"
)

// DictEntry is what the gateway needs to know about a standard attribute:
// its tag as a Dataset key ("00100010"), its keyword and its VR (the first
// the standard lists, e.g. "US" for "US or SS").
type DictEntry struct {
	Tag     string
	Keyword string
	VR      string
}

// The dictionary is built once at init from github.com/suyashkumar/dicom/pkg/tag
// (tag.FindByKeyword scans the whole library map on every call: 20 µs).
var (
	dictByKeyword = map[string]DictEntry{}
	dictByTag     = map[string]DictEntry{}
)

func init() {
	for _, t := range dictionaryTags {
		info, err := tag.Find(tag.Tag{Group: uint16(t >> 16), Element: uint16(t)})
		if err != nil || info.Keyword == "" {
			continue
		}
		vr := "UN"
		if len(info.VRs) > 0 {
			vr = info.VRs[0]
		}
		e := DictEntry{Tag: fmt.Sprintf("%08X", t), Keyword: info.Keyword, VR: vr}
		dictByTag[e.Tag] = e
		if _, dup := dictByKeyword[e.Keyword]; !dup {
			dictByKeyword[e.Keyword] = e
		}
	}
	// Attributes QIDO-RS uses that are not in the library's dictionary.
	for _, e := range []DictEntry{
		{Tag: "00081190", Keyword: "RetrieveURL", VR: "UR"},
		{Tag: "00080056", Keyword: "InstanceAvailability", VR: "CS"},
	} {
		if _, ok := dictByTag[e.Tag]; !ok {
			dictByTag[e.Tag] = e
			dictByKeyword[e.Keyword] = e
		}
	}
}

// LookupAttribute resolves a QIDO-RS attribute name, either a keyword
// ("PatientName") or eight hexadecimal digits ("00100010", any case), to its
// dictionary entry. A well-formed tag missing from the dictionary (private
// attributes) resolves with VR "UN"; ok is false for anything else.
func LookupAttribute(name string) (DictEntry, bool) {
	if isHexTag(name) {
		t := strings.ToUpper(name)
		if e, ok := dictByTag[t]; ok {
			return e, true
		}
		return DictEntry{Tag: t, VR: "UN"}, true
	}
	e, ok := dictByKeyword[name]
	return e, ok
}

// TagKeyword returns the keyword of a Dataset key, or "" when unknown.
func TagKeyword(t string) string { return dictByTag[t].Keyword }

// TagVR returns the dictionary VR of a Dataset key, or "UN" when unknown.
func TagVR(t string) string {
	if e, ok := dictByTag[t]; ok {
		return e.VR
	}
	return "UN"
}

func isHexTag(s string) bool {
	if len(s) != 8 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

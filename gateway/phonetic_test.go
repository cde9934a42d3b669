package gateway

import (
	"net/url"
	"slices"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// TestSoundex checks the published examples of American Soundex (the US
// National Archives' "The Soundex Indexing System", Knuth TAOCP vol. 3
// 6.6) and the gateway's choices for characters outside A-Z.
func TestSoundex(t *testing.T) {
	for _, tt := range []struct{ word, want string }{
		// National Archives / Knuth.
		{"Robert", "R163"},
		{"Rupert", "R163"},
		{"Rubin", "R150"},
		{"Ashcraft", "A261"}, // H does not separate S and C
		{"Ashcroft", "A261"},
		{"Tymczak", "T522"}, // the vowel separates the two K-class letters
		{"Pfister", "P236"}, // P and F share a class but the first letter is kept
		{"Euler", "E460"},
		{"Ellery", "E460"},
		{"Gauss", "G200"},
		{"Ghosh", "G200"},
		{"Hilbert", "H416"},
		{"Heilbronn", "H416"},
		{"Knuth", "K530"},
		{"Kant", "K530"},
		{"Lloyd", "L300"},
		{"Ladd", "L300"},
		{"Lukasiewicz", "L222"},
		{"Lissajous", "L222"},
		{"Gutierrez", "G362"},
		{"Jackson", "J250"},
		{"Washington", "W252"},
		{"Lee", "L000"},
		// Gateway choices.
		{"smith", "S530"},
		{"SMYTH", "S530"},
		{"Müller", "M460"},
		{"Muller", "M460"},
		{"O'Brien", "O165"},
		{"山田", ""},
		{"やまだ", ""},
		{"", ""},
		{"123", ""},
		{"Élodie", "E430"},
		{"Wiśniewski", "W252"},
		{"Wisniewski", "W252"},
		{"Łukasz", "L220"},
		{"Strauß", "S362"},
		{"Strauss", "S362"},
		{"Fernández", "F655"},
	} {
		if got := Soundex(tt.word); got != tt.want {
			t.Errorf("Soundex(%q) = %q, want %q", tt.word, got, tt.want)
		}
	}
}

// TestMatchPersonNameFuzzy checks the fuzzy rule word by word: a match by
// prefix or by Soundex code, every query word needed, wildcards by prefix
// only, ideographic words by prefix only.
func TestMatchPersonNameFuzzy(t *testing.T) {
	smith := dicomcodec.PersonName{Alphabetic: "Smith^John"}
	yamada := dicomcodec.PersonName{Alphabetic: "Yamada^Tarou", Ideographic: "山田^太郎", Phonetic: "やまだ^たろう"}
	for _, tt := range []struct {
		query string
		pn    dicomcodec.PersonName
		want  bool
	}{
		{"smi", smith, true},             // prefix
		{"smyth", smith, true},           // code
		{"jon smyth", smith, true},       // both by code, any order
		{"smyth^jonathan", smith, false}, // JONATHAN is J535, not J500, and no prefix of John
		{"smyth brown", smith, false},    // every word must match
		{"smyt*", smith, false},          // a wildcard word: prefix only
		{"sm?th", smith, true},           // ... which matches here
		{"schmidt", smith, true},         // S530 too: C is in the class of the first letter S
		{"simpson", smith, false},        // S512
		{"yamad", yamada, true},
		{"yamadah", yamada, true}, // Y530 both
		{"山田", yamada, true},
		{"山口", yamada, false}, // no code for ideographs: prefix only
		{"", smith, true},
	} {
		if got := MatchPersonNameFuzzy(tt.query, tt.pn); got != tt.want {
			t.Errorf("MatchPersonNameFuzzy(%q, %q) = %v, want %v", tt.query, tt.pn.String(), got, tt.want)
		}
	}
}

// TestFuzzyHintsAndKeys checks that a study's NamePhoneticKeys hold the code the
// hints of a fuzzy query look for, and that a wildcard or ideographic first
// word asks for no code.
func TestFuzzyHintsAndKeys(t *testing.T) {
	d := dicomcodec.Dataset{dicomcodec.TagPatientName: {VR: "PN", Value: []any{dicomcodec.PersonName{Alphabetic: "Smith^John", Ideographic: "山田"}}}}
	if keys := NamePhoneticKeys(d, dicomcodec.TagPatientName); !slices.Equal(keys, []string{"S530", "J500"}) {
		t.Errorf("NamePhoneticKeys = %q, want [S530 J500] (no code for an ideograph)", keys)
	}
	for _, tt := range []struct {
		params           string
		prefix, phonetic string
		nameWord         bool
	}{
		{"PatientName=smyth%20j&fuzzymatching=true", "SMYTH", "S530", true},
		{"PatientName=smy*&fuzzymatching=true", "SMY", "", true},
		{"PatientName=山田&fuzzymatching=true", "山田", "", true},
		{"PatientName=smyth", "SMYTH", "", false},
	} {
		v, _ := url.ParseQuery(tt.params)
		q, err := ParseQuery(LevelStudy, "", "", v, QueryLimits{Default: 10, Max: 10})
		if err != nil {
			t.Fatal(err)
		}
		h := q.Hints()
		if h.NamePrefix != tt.prefix || h.NamePhonetic != tt.phonetic || h.NameWord != tt.nameWord {
			t.Errorf("%s: hints prefix %q phonetic %q word %v, want %q %q %v", tt.params, h.NamePrefix, h.NamePhonetic, h.NameWord, tt.prefix, tt.phonetic, tt.nameWord)
		}
	}
}

package gateway

import (
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// MatchKind is a matching type of PS3.4 C.2.2.2.
type MatchKind int

// Matching types. MatchList is List of UID Matching (C.2.2.2.2), extended to
// CS values such as ModalitiesInStudy=CT\MR.
const (
	MatchUniversal MatchKind = iota // empty value: every entity matches, the attribute is returned
	MatchSingle                     // C.2.2.2.1
	MatchList                       // C.2.2.2.2
	MatchWildcard                   // C.2.2.2.4: * and ?
	MatchRange                      // C.2.2.2.5: DA, TM, DT
)

// Condition is one matching key of a query.
type Condition struct {
	// Path is the attribute's Dataset key, or for an attribute inside a
	// sequence the sequence's key then the item attribute's
	// (00081110.00081155 → ["00081110", "00081155"]).
	Path    []string
	Keyword string // as the client wrote it, for messages
	VR      string // of the last element of Path
	Kind    MatchKind
	// Values holds the single value, the list, or the wildcard pattern.
	Values []string
	// Low and High bound a range; "" is open.
	Low, High string
}

// Tag is the Dataset key of the top-level attribute the condition is on.
func (c *Condition) Tag() string { return c.Path[0] }

// Matches reports whether d satisfies the condition. Person names match
// case-insensitively; fuzzy applies the fuzzy person-name rule (see
// MatchPersonNameFuzzy).
func (c *Condition) Matches(d dicomcodec.Dataset, fuzzy bool) bool {
	if c.Kind == MatchUniversal {
		return true
	}
	return c.matchPath(d, c.Path, fuzzy)
}

func (c *Condition) matchPath(d dicomcodec.Dataset, path []string, fuzzy bool) bool {
	a, ok := d[path[0]]
	if len(path) > 1 {
		if !ok {
			return false
		}
		for _, item := range ItemsOf(a) {
			if c.matchPath(item, path[1:], fuzzy) {
				return true
			}
		}
		return false
	}
	if !ok || len(a.Value) == 0 {
		return false
	}
	vr := c.VR
	if a.VR != "" {
		vr = a.VR
	}
	if vr == "PN" {
		for _, pn := range PersonNamesOf(a) {
			if c.matchPersonName(pn, fuzzy) {
				return true
			}
		}
		return false
	}
	for _, v := range a.Value {
		if c.matchValue(vr, v) {
			return true
		}
	}
	return false
}

func (c *Condition) matchValue(vr string, v any) bool {
	switch c.Kind {
	case MatchSingle, MatchList:
		for _, want := range c.Values {
			if equalValue(vr, v, want) {
				return true
			}
		}
		return false
	case MatchWildcard:
		s, ok := textOf(v)
		return ok && Wildcard(c.Values[0], s, false)
	case MatchRange:
		s, ok := textOf(v)
		return ok && inRange(vr, s, c.Low, c.High)
	}
	return false
}

func (c *Condition) matchPersonName(pn dicomcodec.PersonName, fuzzy bool) bool {
	q := c.Values[0]
	if c.Kind == MatchList {
		for _, v := range c.Values {
			if (&Condition{Kind: MatchSingle, Values: []string{v}}).matchPersonName(pn, fuzzy) {
				return true
			}
		}
		return false
	}
	if fuzzy {
		return MatchPersonNameFuzzy(q, pn)
	}
	if strings.Contains(q, "=") {
		return Wildcard(q, pn.String(), true)
	}
	for _, g := range []string{pn.Alphabetic, pn.Ideographic, pn.Phonetic} {
		if g != "" && Wildcard(q, g, true) {
			return true
		}
	}
	return false
}

// MatchPersonNameFuzzy is the gateway's fuzzymatching=true rule for person
// names: every word of the query (words are separated by ^, spaces, commas
// or =; * and ? allowed) must match some word of one component group of the
// name, ignoring case and word order. A query word matches a name word when
// it matches its start ("smi" matches Smith), or, for a query word without
// wildcards, when both have the same Soundex code (Soundex: "smyth" matches
// Smith). So "john smi" and "jon smyth" match "Smith^John", and "山田"
// matches "Yamada^Tarou=山田^太郎" (words without a Latin letter have no
// code and match by their start only).
func MatchPersonNameFuzzy(query string, pn dicomcodec.PersonName) bool {
	qwords := nameWords(query)
	if len(qwords) == 0 {
		return true
	}
	codes := make([]string, len(qwords))
	for i, q := range qwords {
		if !HasWildcard(q) {
			codes[i] = Soundex(q)
		}
	}
	for _, g := range []string{pn.Alphabetic, pn.Ideographic, pn.Phonetic} {
		words := nameWords(g)
		var wcodes []string // the name words' codes, computed when first needed
		all := len(words) > 0
		for i, q := range qwords {
			found := false
			for j, w := range words {
				if Wildcard(q+"*", w, true) {
					found = true
					break
				}
				if codes[i] == "" {
					continue
				}
				if wcodes == nil {
					wcodes = make([]string, len(words))
					for k, w := range words {
						wcodes[k] = Soundex(w)
					}
				}
				if wcodes[j] == codes[i] {
					found = true
					break
				}
			}
			if !found {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

func nameWords(s string) []string {
	return strings.FieldsFunc(FoldName(s), func(r rune) bool { return r == '^' || r == ' ' || r == ',' || r == '=' })
}

// FoldName is the case folding of person-name matching: upper case, so that
// müller, Müller and MÜLLER match one another.
func FoldName(s string) string { return strings.ToUpper(s) }

// NameKeys returns the folded keys under which an index lists the person
// names of tag in d for prefix search: each whole component group and each
// word of it (for fuzzy matching).
func NameKeys(d dicomcodec.Dataset, tag string) []string {
	a, ok := d[tag]
	if !ok {
		return nil
	}
	seen := map[string]bool{}
	var keys []string
	add := func(k string) {
		if k != "" && !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	for _, pn := range PersonNamesOf(a) {
		for _, g := range []string{pn.Alphabetic, pn.Ideographic, pn.Phonetic} {
			add(FoldName(g))
			for _, w := range nameWords(g) {
				add(w)
			}
		}
	}
	return keys
}

// NamePhoneticKeys returns the Soundex codes of the words of the person
// names of tag in d, once each (words without one left out): the keys an
// index lists a study under for the phonetic part of fuzzy matching.
func NamePhoneticKeys(d dicomcodec.Dataset, tag string) []string {
	a, ok := d[tag]
	if !ok {
		return nil
	}
	var codes []string
	for _, pn := range PersonNamesOf(a) {
		for _, g := range []string{pn.Alphabetic, pn.Ideographic, pn.Phonetic} {
			for _, w := range nameWords(g) {
				if c := Soundex(w); c != "" && !slices.Contains(codes, c) {
					codes = append(codes, c)
				}
			}
		}
	}
	return codes
}

// NameGroupKeys returns the folded whole component groups of the person
// names of tag in d, once each: a name matched without fuzzy matching whose
// pattern starts with a literal prefix matches only if one of them starts
// with the folded prefix (IndexHints.NamePrefix).
func NameGroupKeys(d dicomcodec.Dataset, tag string) []string {
	a, ok := d[tag]
	if !ok {
		return nil
	}
	var keys []string
	for _, pn := range PersonNamesOf(a) {
		for _, g := range []string{pn.Alphabetic, pn.Ideographic, pn.Phonetic} {
			if k := FoldName(g); k != "" && !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	return keys
}

// Wildcard reports whether s matches pattern, where * matches any run of
// characters and ? exactly one character (PS3.4 C.2.2.2.4). fold makes the
// comparison case-insensitive.
func Wildcard(pattern, s string, fold bool) bool {
	if fold {
		pattern, s = FoldName(pattern), FoldName(s)
	}
	// Iterative matcher with backtracking to the last *: linear in practice
	// and never exponential.
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		if p < len(pattern) && pattern[p] == '?' {
			_, n := utf8.DecodeRuneInString(s[i:])
			p, i = p+1, i+n
			continue
		}
		if p < len(pattern) && pattern[p] == '*' {
			star, mark = p, i
			p++
			continue
		}
		if p < len(pattern) && pattern[p] == s[i] {
			p, i = p+1, i+1
			continue
		}
		if star >= 0 {
			_, n := utf8.DecodeRuneInString(s[mark:])
			mark += n
			p, i = star+1, mark
			continue
		}
		return false
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// HasWildcard reports whether s contains * or ?.
func HasWildcard(s string) bool { return strings.ContainsAny(s, "*?") }

var numericVRs = setOf("IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV")

func equalValue(vr string, v any, want string) bool {
	if numericVRs[vr] {
		got, ok := toFloat(v)
		w, err := strconv.ParseFloat(strings.TrimSpace(want), 64)
		return ok && err == nil && got == w
	}
	s, ok := textOf(v)
	return ok && strings.TrimSpace(s) == want
}

// textOf returns a value as text: strings as they are, numbers formatted,
// person names as their DICOM string.
func textOf(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case int64:
		return strconv.FormatInt(x, 10), true
	case int:
		return strconv.Itoa(x), true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case dicomcodec.PersonName:
		return x.String(), true
	case map[string]any:
		return personNameFromMap(x).String(), true
	}
	return "", false
}

// PersonNamesOf returns the values of a PN attribute, accepting PersonName,
// the map a JSON decoder produces and DICOM-encoded strings.
func PersonNamesOf(a dicomcodec.Attribute) []dicomcodec.PersonName {
	out := make([]dicomcodec.PersonName, 0, len(a.Value))
	for _, v := range a.Value {
		switch x := v.(type) {
		case dicomcodec.PersonName:
			out = append(out, x)
		case *dicomcodec.PersonName:
			if x != nil {
				out = append(out, *x)
			}
		case map[string]any:
			out = append(out, personNameFromMap(x))
		case string:
			g := strings.SplitN(x, "=", 3)
			for len(g) < 3 {
				g = append(g, "")
			}
			out = append(out, dicomcodec.PersonName{Alphabetic: g[0], Ideographic: g[1], Phonetic: g[2]})
		}
	}
	return out
}

func personNameFromMap(m map[string]any) dicomcodec.PersonName {
	s := func(k string) string { v, _ := m[k].(string); return v }
	return dicomcodec.PersonName{Alphabetic: s("Alphabetic"), Ideographic: s("Ideographic"), Phonetic: s("Phonetic")}
}

// ItemsOf returns the items of an SQ attribute, accepting Dataset values and
// the maps a JSON decoder produces (whose attributes are decoded on the fly).
func ItemsOf(a dicomcodec.Attribute) []dicomcodec.Dataset {
	out := make([]dicomcodec.Dataset, 0, len(a.Value))
	for _, v := range a.Value {
		switch x := v.(type) {
		case dicomcodec.Dataset:
			out = append(out, x)
		case map[string]dicomcodec.Attribute:
			out = append(out, dicomcodec.Dataset(x))
		case map[string]any:
			item := dicomcodec.Dataset{}
			for t, raw := range x {
				m, ok := raw.(map[string]any)
				if !ok {
					continue
				}
				attr := dicomcodec.Attribute{}
				attr.VR, _ = m["vr"].(string)
				attr.Value, _ = m["Value"].([]any)
				item[t] = attr
			}
			out = append(out, item)
		}
	}
	return out
}

// inRange reports whether the DA, TM or DT value s lies in [low, high]
// (either may be "" for an open range). Partial times and date-times are
// compared as the span they denote: "1030" lies in 1030-1031.
func inRange(vr, s, low, high string) bool {
	s = strings.TrimSpace(s)
	if s == "" {
		return false
	}
	switch vr {
	case "TM":
		s = strings.ReplaceAll(s, ":", "")
	case "DT":
		s = stripOffset(s)
	case "DA":
		s = strings.ReplaceAll(s, ".", "") // ACR-NEMA YYYY.MM.DD
	}
	n := map[string]int{"DA": 8, "TM": 6, "DT": 14}[vr]
	if low != "" && padTime(s, n, '9') < padTime(low, n, '0') {
		return false
	}
	if high != "" && padTime(s, n, '0') > padTime(high, n, '9') {
		return false
	}
	return true
}

func stripOffset(s string) string {
	if i := strings.IndexAny(s, "+-"); i >= 4 {
		return s[:i]
	}
	return s
}

// padTime extends a DA (n 8), TM (6) or DT (14) value to full precision
// with fill, so that a partial value compares as the earliest ('0') or
// latest ('9') instant it denotes: 1030 spans 103000.000000-103099.999999.
func padTime(s string, n int, fill byte) string {
	whole, frac, _ := strings.Cut(s, ".")
	b := make([]byte, 0, n+7)
	b = append(b, whole...)
	for len(b) < n {
		b = append(b, fill)
	}
	b = append(b, '.')
	b = append(b, frac...)
	for len(b) < n+7 {
		b = append(b, fill)
	}
	return string(b)
}

package gateway

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// QueryLevel is the QIDO-RS level searched.
type QueryLevel int

// The three QIDO-RS levels.
const (
	LevelStudy QueryLevel = iota
	LevelSeries
	LevelInstance
)

func (l QueryLevel) String() string {
	return [...]string{"study", "series", "instance"}[l]
}

// Query is a parsed QIDO-RS search (PS3.18 10.6.1): its level and scope, the
// matching keys and which attributes to return.
type Query struct {
	Level             QueryLevel
	StudyInstanceUID  string // scope from the URL path, "" = any
	SeriesInstanceUID string // scope from the URL path, "" = any
	Limit, Offset     int    // Limit 0 = no limit
	Conditions        []Condition
	// FuzzyMatching applies MatchPersonNameFuzzy to person names.
	FuzzyMatching bool
	// IncludeFields are extra Dataset keys to return; IncludeAll returns
	// every attribute the level keeps.
	IncludeFields []string
	IncludeAll    bool
	// Warnings name the parameters ignored (PS3.18 8.3.4: unsupported keys
	// are ignored), for the HTTP layer's Warning header.
	Warnings []string
}

// QueryLimits are the default and largest page sizes.
type QueryLimits struct {
	Default, Max int
}

// ParseQuery builds a Query for level from a request's decoded query
// parameters and path scope. Malformed values (a bad date or range, a bad UID
// list, a non-numeric limit) fail with ErrInvalid and a message naming the
// parameter; unknown or unsupported parameters are ignored with a Warning.
func ParseQuery(level QueryLevel, studyUID, seriesUID string, params url.Values, limits QueryLimits) (*Query, error) {
	q := &Query{Level: level, StudyInstanceUID: studyUID, SeriesInstanceUID: seriesUID, Limit: limits.Default}
	for _, uid := range []string{studyUID, seriesUID} {
		if uid != "" {
			if err := ValidateUID(uid); err != nil {
				return nil, err
			}
		}
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys) // deterministic conditions and warnings
	for _, key := range keys {
		for _, value := range params[key] {
			if err := q.addParam(key, value, limits); err != nil {
				return nil, err
			}
		}
	}
	return q, nil
}

func (q *Query) addParam(key, value string, limits QueryLimits) error {
	switch key {
	case "limit", "offset":
		n, err := strconv.Atoi(strings.TrimSpace(value))
		if err != nil || n < 0 {
			return fmt.Errorf("%s=%q: not a non-negative integer: %w", key, printable(value), ErrInvalid)
		}
		if key == "offset" {
			q.Offset = n
			return nil
		}
		if n == 0 || (limits.Max > 0 && n > limits.Max) {
			q.Warnings = append(q.Warnings, fmt.Sprintf("limit=%d reduced to the maximum %d", n, limits.Max))
			n = limits.Max
		}
		q.Limit = n
		return nil
	case "fuzzymatching":
		b, err := strconv.ParseBool(value)
		if err != nil {
			return fmt.Errorf("fuzzymatching=%q: not true or false: %w", printable(value), ErrInvalid)
		}
		q.FuzzyMatching = b
		return nil
	case "includefield":
		for f := range strings.SplitSeq(value, ",") {
			f = strings.TrimSpace(f)
			if f == "" {
				continue
			}
			if f == "all" {
				q.IncludeAll = true
				continue
			}
			path, _, err := resolvePath(f)
			if err != nil {
				q.Warnings = append(q.Warnings, fmt.Sprintf("includefield %s: unknown attribute, ignored", printable(f)))
				continue
			}
			q.IncludeFields = append(q.IncludeFields, path[0])
		}
		return nil
	}
	path, vr, err := resolvePath(key)
	if err != nil {
		q.Warnings = append(q.Warnings, fmt.Sprintf("%s: unknown parameter, ignored", printable(key)))
		return nil
	}
	if !q.levelKeeps(path[0]) {
		q.Warnings = append(q.Warnings, fmt.Sprintf("%s: not a %s-level attribute, ignored", printable(key), q.Level))
		return nil
	}
	c, err := newCondition(key, path, vr, value)
	if err != nil {
		return err
	}
	q.Conditions = append(q.Conditions, c)
	return nil
}

// levelKeeps reports whether searches at q's level can match on tag.
func (q *Query) levelKeeps(tag string) bool {
	switch q.Level {
	case LevelStudy:
		return IsStudyLevel(tag)
	case LevelSeries:
		return IsStudyLevel(tag) || IsSeriesLevel(tag)
	}
	return true
}

// resolvePath resolves "PatientName", "00100010" or a dotted sequence path
// ("00081110.00081155", "ReferencedStudySequence.ReferencedSOPInstanceUID").
func resolvePath(name string) ([]string, string, error) {
	parts := strings.Split(name, ".")
	if len(parts) > 4 {
		return nil, "", fmt.Errorf("%s: sequences nested too deep: %w", name, ErrInvalid)
	}
	path := make([]string, len(parts))
	vr := ""
	for i, p := range parts {
		e, ok := dicomcodec.LookupAttribute(p)
		if !ok {
			return nil, "", fmt.Errorf("%s: unknown attribute: %w", name, ErrInvalid)
		}
		if i < len(parts)-1 && e.VR != "SQ" && e.VR != "UN" {
			return nil, "", fmt.Errorf("%s: %s is not a sequence: %w", name, p, ErrInvalid)
		}
		path[i], vr = e.Tag, e.VR
	}
	return path, vr, nil
}

func invalidValue(key, value, why string) error {
	return fmt.Errorf("%s=%q: %s: %w", key, printable(value), why, ErrInvalid)
}

func newCondition(key string, path []string, vr, value string) (Condition, error) {
	c := Condition{Path: path, Keyword: key, VR: vr}
	if value == "" || value == "*" {
		c.Kind = MatchUniversal
		return c, nil
	}
	switch vr {
	case "SQ":
		return c, invalidValue(key, value, "a sequence matches only through an attribute inside it (e.g. 00081110.00081155=…)")
	case "UI":
		c.Values = splitList(value, `\,`)
		for _, uid := range c.Values {
			if err := ValidateUID(uid); err != nil {
				return c, invalidValue(key, value, "not a UID or list of UIDs separated by \\ or ,")
			}
		}
		c.Kind = MatchSingle
		if len(c.Values) > 1 {
			c.Kind = MatchList
		}
		return c, nil
	case "DA", "TM", "DT":
		if HasWildcard(value) {
			return c, invalidValue(key, value, "wildcards are not allowed in dates and times")
		}
		low, high, isRange := strings.Cut(value, "-")
		if vr == "DT" && strings.Count(value, "-") != 1 {
			isRange = false
		}
		if !isRange {
			if err := checkDateTime(vr, value); err != nil {
				return c, invalidValue(key, value, err.Error())
			}
			c.Kind, c.Values = MatchSingle, []string{value}
			if vr != "DA" { // a partial time is the span it denotes
				c.Kind, c.Low, c.High, c.Values = MatchRange, value, value, nil
			}
			return c, nil
		}
		if low == "" && high == "" {
			return c, invalidValue(key, value, "a range needs at least one bound")
		}
		for _, b := range []string{low, high} {
			if b == "" {
				continue
			}
			if err := checkDateTime(vr, b); err != nil {
				return c, invalidValue(key, value, err.Error())
			}
		}
		if low != "" && high != "" && padTime(low, 14, '0') > padTime(high, 14, '9') {
			return c, invalidValue(key, value, "range starts after it ends")
		}
		c.Kind, c.Low, c.High = MatchRange, low, high
		return c, nil
	case "IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV":
		c.Values = splitList(value, `\`)
		for _, v := range c.Values {
			if _, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err != nil {
				return c, invalidValue(key, value, "not a number")
			}
		}
		c.Kind = MatchSingle
		if len(c.Values) > 1 {
			c.Kind = MatchList
		}
		return c, nil
	case "PN":
		c.Values = []string{value}
		c.Kind = MatchSingle
		if HasWildcard(value) {
			c.Kind = MatchWildcard
		}
		return c, nil
	}
	if HasWildcard(value) {
		c.Kind, c.Values = MatchWildcard, []string{value}
		return c, nil
	}
	seps := `\`
	if vr == "CS" {
		seps = `\,`
	}
	c.Values = splitList(value, seps)
	c.Kind = MatchSingle
	if len(c.Values) > 1 {
		c.Kind = MatchList
	}
	return c, nil
}

func splitList(value, seps string) []string {
	return strings.FieldsFunc(value, func(r rune) bool { return strings.ContainsRune(seps, r) })
}

// checkDateTime validates one DA (YYYYMMDD), TM (HH[MM[SS[.F{1,6}]]]) or DT
// (YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]) value.
func checkDateTime(vr, s string) error {
	digits := func(s string) bool {
		for i := 0; i < len(s); i++ {
			if s[i] < '0' || s[i] > '9' {
				return false
			}
		}
		return true
	}
	switch vr {
	case "DA":
		if len(s) != 8 || !digits(s) {
			return fmt.Errorf("not a date YYYYMMDD")
		}
		if _, err := time.Parse("20060102", s); err != nil {
			return fmt.Errorf("not a valid date")
		}
		return nil
	case "TM":
		whole, frac, hasFrac := strings.Cut(strings.ReplaceAll(s, ":", ""), ".")
		if !digits(whole) || len(whole)%2 != 0 || len(whole) == 0 || len(whole) > 6 || (hasFrac && (len(whole) != 6 || !digits(frac) || len(frac) == 0 || len(frac) > 6)) {
			return fmt.Errorf("not a time HH[MM[SS[.FFFFFF]]]")
		}
		limits := []string{"23", "59", "60"}
		for i := 0; i+2 <= len(whole); i += 2 {
			if whole[i:i+2] > limits[i/2] {
				return fmt.Errorf("not a valid time")
			}
		}
		return nil
	}
	s = stripOffset(s)
	whole, frac, hasFrac := strings.Cut(s, ".")
	if !digits(whole) || len(whole) < 4 || len(whole) > 14 || len(whole)%2 != 0 || (hasFrac && (len(whole) != 14 || !digits(frac) || frac == "" || len(frac) > 6)) {
		return fmt.Errorf("not a date-time YYYY[MM[DD[HH[MM[SS[.F]]]]]]")
	}
	return nil
}

// IndexHints are the parts of a query a backend can answer from secondary
// indexes to find candidate studies; every study that matches the query
// satisfies all of them. Zero values mean "no hint".
type IndexHints struct {
	StudyUIDs       []string // the study scope or a UID condition
	PatientID       string   // exact PatientID: one of the study's StudyPatientIDs
	AccessionNumber string   // exact AccessionNumber
	Modalities      []string // the study has one of these (ModalitiesInStudy or Modality)
	// NamePrefix is the folded literal prefix of the PatientName pattern, or
	// of its first word with fuzzy matching (NameWord); it is a prefix of one
	// of the study's NameKeys, and without NameWord of one of its
	// NameGroupKeys.
	NamePrefix string
	NameWord   bool
	// NamePhonetic is, with fuzzy matching, the Soundex code of the first
	// word of the PatientName query when it has no wildcard and has one: a
	// study matches only if one of its NameKeys starts with NamePrefix or
	// NamePhonetic is one of its NamePhoneticKeys.
	NamePhonetic string
	// DateLow and DateHigh bound StudyDate as YYYYMMDD numbers; 0 = open.
	// HasDate says a StudyDate condition exists (studies without a date
	// then cannot match).
	DateLow, DateHigh int64
	HasDate           bool
	// Want is how many matching studies the search needs at most (0 =
	// unknown), a sizing hint for the first batch.
	Want int
}

// Hints derives the index hints of q.
func (q *Query) Hints() IndexHints {
	var h IndexHints
	if q.StudyInstanceUID != "" {
		h.StudyUIDs = []string{q.StudyInstanceUID}
	}
	for _, c := range q.Conditions {
		if len(c.Path) != 1 {
			continue
		}
		exact := c.Kind == MatchSingle && len(c.Values) == 1
		switch c.Tag() {
		case dicomcodec.TagStudyInstanceUID:
			if (c.Kind == MatchSingle || c.Kind == MatchList) && h.StudyUIDs == nil {
				h.StudyUIDs = c.Values
			}
		case dicomcodec.TagPatientID:
			if exact {
				h.PatientID = c.Values[0]
			}
		case dicomcodec.TagAccessionNumber:
			if exact {
				h.AccessionNumber = c.Values[0]
			}
		case dicomcodec.TagModalitiesInStudy, dicomcodec.TagModality:
			if c.Kind == MatchSingle || c.Kind == MatchList {
				h.Modalities = c.Values
			}
		case dicomcodec.TagPatientName:
			if c.Kind == MatchList || c.Kind == MatchUniversal {
				continue
			}
			v := c.Values[0]
			if q.FuzzyMatching {
				if w := nameWords(v); len(w) > 0 {
					v, h.NameWord = w[0], true
					if !HasWildcard(v) {
						h.NamePhonetic = Soundex(v)
					}
				} else {
					continue
				}
			} else if strings.Contains(v, "=") {
				continue
			}
			if i := strings.IndexAny(v, "*?"); i >= 0 {
				v = v[:i]
			}
			h.NamePrefix = FoldName(v)
		case dicomcodec.TagStudyDate:
			h.HasDate = c.Kind != MatchUniversal
			if c.Kind == MatchSingle {
				n, _ := strconv.ParseInt(c.Values[0], 10, 64)
				h.DateLow, h.DateHigh = n, n
			}
			if c.Kind == MatchRange {
				h.DateLow, _ = strconv.ParseInt(c.Low, 10, 64)
				h.DateHigh, _ = strconv.ParseInt(c.High, 10, 64)
			}
		}
	}
	return h
}

// SearchSource is what an Index hands the shared search engine (Search), so
// that every backend matches, orders and pages identically.
type SearchSource interface {
	// Studies calls fn with batches of candidate studies in CompareStudies
	// order: every study satisfying h, possibly others. It stops when fn
	// returns false or an error.
	Studies(ctx context.Context, h IndexHints, fn func([]*StudySummary) (bool, error)) error
	// Series returns a study's series (any order).
	Series(ctx context.Context, studyUID string) ([]*SeriesSummary, error)
	// Instances returns a study's (seriesUID "") or a series' instances, in
	// any order, and no error when there are none.
	Instances(ctx context.Context, studyUID, seriesUID string) ([]*InstanceRecord, error)
}

// The bounds on counting the matches after a full page (SearchResult.
// Remaining). Counting costs what reading one more page of the default size
// costs at most, so a cut page never costs more than twice its own size;
// an exact count of a 100,000-study index would be a full scan per page.
const (
	MaxCountedRemaining = 1000
	MaxCountedStudies   = 100
)

// Search runs q over src: candidates in the one stable order (studies by
// CompareStudies, series by CompareSeries, instances by CompareInstances),
// matched on every condition, then Offset skipped and Limit returned.
func Search(ctx context.Context, q *Query, src SearchSource) (*SearchResult, error) {
	res := &SearchResult{Items: []dicomcodec.Dataset{}}
	skip := q.Offset
	returnTags := q.ReturnTags()
	// emit adds one match; past a full page it counts the match in
	// Remaining instead, and returns false once that count reaches
	// MaxCountedRemaining (the search stops there).
	emit := func(d dicomcodec.Dataset) bool {
		if skip > 0 {
			skip--
			return true
		}
		if q.Limit > 0 && len(res.Items) == q.Limit {
			res.More = true
			if res.Remaining == MaxCountedRemaining {
				res.RemainingAtLeast = true
				return false
			}
			res.Remaining++
			return true
		}
		res.Items = append(res.Items, q.project(d, returnTags))
		if uid := d.String(dicomcodec.TagStudyInstanceUID); uid != "" && !slices.Contains(res.StudyUIDs, uid) {
			res.StudyUIDs = append(res.StudyUIDs, uid)
		}
		res.PatientIDs = AppendPatientIdentities(res.PatientIDs, d)
		// A study flagged for an identity conflict carries the other
		// patients' IDs too (returned by default at study level): the
		// search's audit event names them all.
		others, _ := IdentityConflicts(d)
		for _, o := range others {
			res.PatientIDs = appendNewIDs(res.PatientIDs, o.ID)
		}
		return true
	}
	var studyConds, seriesConds, instanceConds []Condition
	for _, c := range q.Conditions {
		switch {
		case IsStudyLevel(c.Tag()):
			studyConds = append(studyConds, c)
		case IsSeriesLevel(c.Tag()):
			seriesConds = append(seriesConds, c)
		default:
			instanceConds = append(instanceConds, c)
		}
	}
	hints := q.Hints()
	if q.Level == LevelStudy && q.Limit > 0 {
		hints.Want = q.Offset + q.Limit + MaxCountedRemaining + 1
	}
	// Past a full page, series and instance searches count further matches
	// over at most MaxCountedStudies more studies: each study costs the
	// backend a read of its series or instances.
	studiesPastPage := 0
	err := src.Studies(ctx, hints, func(batch []*StudySummary) (bool, error) {
		for _, st := range batch {
			if q.StudyInstanceUID != "" && st.StudyInstanceUID != q.StudyInstanceUID {
				continue
			}
			if q.Level != LevelStudy && res.More {
				if studiesPastPage == MaxCountedStudies {
					res.RemainingAtLeast = true
					return false, nil
				}
				studiesPastPage++
			}
			sd, ok := q.matchStudy(st.Dataset(), studyConds)
			if !ok {
				continue
			}
			if q.Level == LevelStudy {
				if !emit(sd) {
					return false, nil
				}
				continue
			}
			series, err := src.Series(ctx, st.StudyInstanceUID)
			if err != nil {
				return false, err
			}
			slices.SortFunc(series, CompareSeries)
			seriesData := make(map[string]dicomcodec.Dataset, len(series))
			for _, se := range series {
				if q.SeriesInstanceUID != "" && se.SeriesInstanceUID != q.SeriesInstanceUID {
					continue
				}
				ed := merge(sd, se.Dataset())
				if !q.matchAll(ed, seriesConds) {
					continue
				}
				if q.Level == LevelSeries {
					if !emit(ed) {
						return false, nil
					}
					continue
				}
				seriesData[se.SeriesInstanceUID] = ed
			}
			if q.Level != LevelInstance || len(seriesData) == 0 {
				continue
			}
			recs, err := src.Instances(ctx, st.StudyInstanceUID, q.SeriesInstanceUID)
			if err != nil {
				return false, err
			}
			slices.SortFunc(recs, CompareInstances)
			for _, r := range recs {
				ed, ok := seriesData[r.SeriesInstanceUID]
				if !ok {
					continue
				}
				id := instanceRow(ed, InstanceDataset(r)) // identity_conflict.go
				if !q.matchAll(id, instanceConds) {
					continue
				}
				if !emit(id) {
					return false, nil
				}
			}
		}
		return true, ctx.Err()
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// matchStudy matches the study-level conditions against a study and
// returns the dataset it matched as: the study itself, or, for a study
// flagged for an identity conflict, the view of the other patient whose
// identity matched (otherIdentityViews). A search by any of the patients
// it holds finds it, and shows it under that patient's ID, flag included.
func (q *Query) matchStudy(sd dicomcodec.Dataset, conds []Condition) (dicomcodec.Dataset, bool) {
	if q.matchAll(sd, conds) {
		return sd, true
	}
	for _, view := range otherIdentityViews(sd) {
		if q.matchAll(view, conds) {
			return view, true
		}
	}
	return nil, false
}

func (q *Query) matchAll(d dicomcodec.Dataset, conds []Condition) bool {
	for i := range conds {
		if !conds[i].Matches(d, q.FuzzyMatching) {
			return false
		}
	}
	return true
}

func merge(parent, child dicomcodec.Dataset) dicomcodec.Dataset {
	out := make(dicomcodec.Dataset, len(parent)+len(child))
	for t, a := range parent {
		out[t] = a
	}
	for t, a := range child {
		out[t] = a
	}
	return out
}

// ReturnTags lists the attributes q returns by default: the level's
// (PS3.18 Tables 10.6.3-3 to -5), its parents' when the path does not fix
// them, the matching keys and the includefield attributes.
func (q *Query) ReturnTags() []string {
	var tags []string
	switch q.Level {
	case LevelStudy:
		tags = append(tags, studyReturnTags...)
	case LevelSeries:
		tags = append(tags, seriesReturnTags...)
		if q.StudyInstanceUID == "" {
			tags = append(tags, studyReturnTags...)
		}
	case LevelInstance:
		tags = append(tags, instanceReturnTags...)
		if q.SeriesInstanceUID == "" {
			tags = append(tags, seriesReturnTags...)
		}
		if q.StudyInstanceUID == "" {
			tags = append(tags, studyReturnTags...)
		}
	}
	for _, c := range q.Conditions {
		tags = append(tags, c.Tag())
	}
	return append(tags, q.IncludeFields...)
}

// project returns the attributes of d that q returns; tags is
// q.ReturnTags(), computed once per search.
func (q *Query) project(d dicomcodec.Dataset, tags []string) dicomcodec.Dataset {
	if q.IncludeAll {
		return d
	}
	out := make(dicomcodec.Dataset, len(tags)+3)
	for _, t := range tags {
		if a, ok := d[t]; ok {
			out[t] = a
		}
	}
	// The level's identifying UIDs are always returned, and the gateway's
	// private creator with its flag (PS3.5 7.8.1: a private element
	// travels with its creator; IdentityConflicts reads both).
	for _, t := range []string{dicomcodec.TagStudyInstanceUID, dicomcodec.TagSeriesInstanceUID, dicomcodec.TagSOPInstanceUID} {
		if a, ok := d[t]; ok {
			out[t] = a
		}
	}
	if hasGatewayBlock(out) {
		if a, ok := d[TagGatewayPrivateCreator]; ok {
			out[TagGatewayPrivateCreator] = a
		}
	}
	return out
}

// SearchResult holds one page of matches, each the DICOM JSON of a study,
// series or instance with the attributes the level returns.
type SearchResult struct {
	Items []dicomcodec.Dataset
	// More is true when matches beyond Offset+len(Items) exist.
	More bool
	// Remaining counts the matches after this page (PS3.18 8.3.4.4.1 asks
	// the server to say how many). Counting is bounded: it stops after
	// MaxCountedRemaining matches, or, for series and instances, after the
	// matches of MaxCountedStudies more studies; RemainingAtLeast is then
	// true and Remaining is a lower bound.
	Remaining        int
	RemainingAtLeast bool
	// StudyUIDs and PatientIDs list, once each, the studies and patients of
	// Items, whatever attributes Items return: for the audit log.
	StudyUIDs, PatientIDs []string
}

package fhir

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"
	fm "github.com/samply/golang-fhir-models/fhir-models/fhir"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// studyPage is one page of matching studies, each its study-level
// attributes, in the index's study order.
type studyPage struct {
	items []dicomcodec.Dataset
	more  bool
	// total counts every match when known exactly (-1 otherwise).
	total int
}

// request is who asks and with which FHIR parameter names: what the query
// service audits each search with (the route tells a FHIR search from a
// QIDO-RS one).
type request struct {
	caller gateway.Caller
	keys   []string
}

func requestOf(c *gin.Context, params url.Values) request {
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return request{caller: gateway.Caller{Principal: gateway.PrincipalFrom(c.Request.Context()), Route: c.FullPath()}, keys: keys}
}

// query runs one study-level search through the gateway's query service
// (which audits it): the one place the facade calls it.
func (h *Handler) query(ctx context.Context, r request, params url.Values, limit, offset int) (*gateway.SearchResult, error) {
	params = cloneValues(params)
	params.Set("includefield", "all")
	q, err := gateway.ParseQuery(gateway.LevelStudy, "", "", params, gateway.QueryLimits{Default: limit, Max: limit})
	if err != nil {
		return nil, err
	}
	q.Limit, q.Offset = limit, offset
	return h.Query.Search(ctx, r.caller, q, r.keys)
}

// nationalIssuerMatch is the IssuerOfPatientID list match of a search by
// NHS number: the national issuers in every case ("NHS", "nhs", "nHs", …;
// an OID has no case), since the index matches an issuer exactly and
// gateway.IsNationalIssuer ignores case. Built once.
var nationalIssuerMatch = strings.Join(nationalIssuerSpellings(), `\`)

func nationalIssuerSpellings() []string {
	var out []string
	for _, n := range gateway.NationalIssuers {
		spellings := []string{""}
		for _, r := range n {
			var next []string
			for _, p := range spellings {
				for _, c := range []string{strings.ToUpper(string(r)), strings.ToLower(string(r))} {
					if !slices.Contains(next, p+c) {
						next = append(next, p+c)
					}
				}
			}
			spellings = next
		}
		out = append(out, spellings...)
	}
	return out
}

// studies finds one page of the studies s matches. A search by NHS number
// is the union of two index searches (the number as the Patient ID with a
// national issuer; the number in the Other Patient IDs Sequence), merged in
// the index's study order; the sequence search is checked item by item, so
// a study whose national issuer and number sit in different items does not
// match.
func (h *Handler) studies(ctx context.Context, r request, s *search) (*studyPage, error) {
	limit := max(s.count, 1)
	if s.national == "" {
		res, err := h.query(ctx, r, s.qido, limit, s.offset)
		if err != nil {
			return nil, err
		}
		p := &studyPage{items: res.Items, more: res.More, total: -1}
		// A page past the last match says nothing of how many there are
		// (offset + 0 + 0 would claim the offset): total stays unknown.
		if !res.RemainingAtLeast && (len(res.Items) > 0 || s.offset == 0) {
			p.total = s.offset + len(res.Items) + res.Remaining
		}
		return p, nil
	}
	want := s.offset + limit + 1
	byID := cloneValues(s.qido)
	byID.Set("PatientID", s.national)
	byID.Set("IssuerOfPatientID", nationalIssuerMatch)
	a, err := h.query(ctx, r, byID, want, 0)
	if err != nil {
		return nil, err
	}
	bySeq := cloneValues(s.qido)
	bySeq.Set(gateway.TagOtherPatientIDsSequence+"."+dicomcodec.TagPatientID, s.national)
	b, err := h.query(ctx, r, bySeq, want, 0)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var all []dicomcodec.Dataset
	for _, d := range slices.Concat(a.Items, b.Items) {
		uid := d.String(dicomcodec.TagStudyInstanceUID)
		if seen[uid] || !gateway.CarriesNationalID(d, s.national) {
			continue
		}
		seen[uid] = true
		all = append(all, d)
	}
	sort.SliceStable(all, func(i, j int) bool {
		di, dj := gateway.StudyDateKey(all[i]), gateway.StudyDateKey(all[j])
		if di != dj {
			return di > dj
		}
		return all[i].String(dicomcodec.TagStudyInstanceUID) > all[j].String(dicomcodec.TagStudyInstanceUID)
	})
	p := &studyPage{total: -1, more: len(all) > s.offset+limit}
	if !a.More && !b.More {
		p.total = len(all)
	}
	if s.offset < len(all) {
		p.items = all[s.offset:min(len(all), s.offset+limit)]
	}
	return p, nil
}

func cloneValues(v url.Values) url.Values {
	out := make(url.Values, len(v)+2)
	for k, vs := range v {
		out[k] = slices.Clone(vs)
	}
	return out
}

// handleSearch answers GET /fhir/ImagingStudy?… with a searchset Bundle:
// the page's ImagingStudy resources (mode match), the Endpoint they
// reference (mode include), and self/next/previous links.
func (h *Handler) handleSearch(c *gin.Context) {
	if !h.negotiate(c) {
		return
	}
	params, err := url.ParseQuery(c.Request.URL.RawQuery)
	if err != nil {
		h.fail(c, fmt.Errorf("query string: %v: %w", err, gateway.ErrInvalid))
		return
	}
	s, err := parseSearch(params)
	if err != nil {
		h.fail(c, err)
		return
	}
	ctx := c.Request.Context()
	page, err := h.studies(ctx, requestOf(c, params), s)
	if err != nil {
		h.fail(c, err)
		return
	}
	if s.count == 0 {
		page.items = nil
	}
	resources, err := h.resources(ctx, page.items)
	if err != nil {
		h.fail(c, err)
		return
	}
	base := h.base(c)
	b := fm.Bundle{
		Id:        ptr(searchID(h.now().UnixNano())),
		Type:      fm.BundleTypeSearchset,
		Timestamp: ptr(h.now().Format("2006-01-02T15:04:05.000Z07:00")),
		Link:      []fm.BundleLink{{Relation: "self", Url: pageURL(base, s, s.offset)}},
	}
	if page.total >= 0 {
		b.Total = ptr(page.total)
	}
	if page.more && s.count > 0 && s.offset+s.count <= MaxOffset {
		b.Link = append(b.Link, fm.BundleLink{Relation: "next", Url: pageURL(base, s, s.offset+s.count)})
	}
	if s.offset > 0 && s.count > 0 {
		b.Link = append(b.Link, fm.BundleLink{Relation: "previous", Url: pageURL(base, s, max(0, s.offset-s.count))})
	}
	for _, is := range resources {
		raw, err := json.Marshal(is)
		if err != nil {
			h.fail(c, err)
			return
		}
		b.Entry = append(b.Entry, fm.BundleEntry{
			FullUrl:  ptr(base + "/ImagingStudy/" + *is.Id),
			Resource: raw,
			Search:   &fm.BundleEntrySearch{Mode: ptr(fm.SearchEntryModeMatch)},
		})
	}
	if len(resources) > 0 {
		raw, err := json.Marshal(h.endpoint(h.wadoRoot(c)))
		if err != nil {
			h.fail(c, err)
			return
		}
		b.Entry = append(b.Entry, fm.BundleEntry{
			FullUrl:  ptr(base + "/Endpoint/" + EndpointID),
			Resource: raw,
			Search:   &fm.BundleEntrySearch{Mode: ptr(fm.SearchEntryModeInclude)},
		})
	}
	h.write(c, http.StatusOK, b)
}

// searchID names a searchset Bundle (Resource.id: 1-64 of [A-Za-z0-9.-]).
func searchID(n int64) string { return "search-" + strconv.FormatInt(n, 36) }

// pageURL is the link to the page at offset of search s.
func pageURL(base string, s *search, offset int) string {
	v := cloneValues(s.used)
	v.Set("_count", strconv.Itoa(s.count))
	if offset > 0 {
		v.Set("_offset", strconv.Itoa(offset))
	}
	return base + "/ImagingStudy?" + v.Encode()
}

// resources builds the ImagingStudy of each study, its series and
// instances from the index.
func (h *Handler) resources(ctx context.Context, studies []dicomcodec.Dataset) ([]fm.ImagingStudy, error) {
	out := make([]fm.ImagingStudy, 0, len(studies))
	for _, st := range studies {
		uid := st.String(dicomcodec.TagStudyInstanceUID)
		recs, err := h.Instances.ListInstances(ctx, uid, "")
		if err != nil && !errors.Is(err, gateway.ErrNotFound) {
			return nil, fmt.Errorf("instances of study %s: %w", uid, err)
		}
		out = append(out, imagingStudy(st, recs))
	}
	return out, nil
}

// handleRead answers GET /fhir/ImagingStudy/{id}; the id is the Study
// Instance UID. An id that cannot be one is 400, an unknown study 404.
func (h *Handler) handleRead(c *gin.Context) {
	if !h.negotiate(c) {
		return
	}
	id := c.Param("id")
	if err := gateway.ValidateUID(id); err != nil {
		h.fail(c, fmt.Errorf("ImagingStudy id (a Study Instance UID): %w", err))
		return
	}
	ctx := c.Request.Context()
	res, err := h.query(ctx, requestOf(c, url.Values{"_id": {id}}), url.Values{"StudyInstanceUID": {id}}, 1, 0)
	if err != nil {
		h.fail(c, err)
		return
	}
	items := res.Items[:min(1, len(res.Items))]
	resources, err := h.resources(ctx, items)
	if err != nil {
		h.fail(c, err)
		return
	}
	if len(resources) == 0 {
		h.fail(c, fmt.Errorf("ImagingStudy/%s: no such study at %s: %w", id, h.Name, gateway.ErrNotFound))
		return
	}
	h.write(c, http.StatusOK, resources[0])
}

// handleEndpoint answers GET /fhir/Endpoint/{id}: the WADO-RS root every
// ImagingStudy references.
func (h *Handler) handleEndpoint(c *gin.Context) {
	if !h.negotiate(c) {
		return
	}
	if c.Param("id") != EndpointID {
		h.fail(c, fmt.Errorf("Endpoint/%s: the only Endpoint is %s: %w", c.Param("id"), EndpointID, gateway.ErrNotFound))
		return
	}
	h.write(c, http.StatusOK, h.endpoint(h.wadoRoot(c)))
}

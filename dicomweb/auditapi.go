package dicomweb

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/gateway"
)

// auditRoutes serves the audit log to admins: GET base/audit (query, JSON or
// a FHIR R4 Bundle) and GET base/audit/verify (check the hash chain).
func (s *Server) auditRoutes(base string) []route {
	return []route{
		{http.MethodGet, base + "/audit", gateway.RoleAdmin, s.handleAuditQuery},
		{http.MethodGet, base + "/audit/verify", gateway.RoleAdmin, s.handleAuditVerify},
	}
}

// auditTime parses a since/until value: RFC 3339 (2026-05-01T10:00:00Z) or a
// date (2026-05-01, midnight UTC).
func auditTime(name, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, v); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%s %q: want RFC 3339 (2026-05-01T10:00:00Z) or a date (2026-05-01): %w", name, v, gateway.ErrInvalid)
}

// parseAuditFilter reads the query parameters of GET /audit.
func parseAuditFilter(q url.Values) (gateway.AuditFilter, error) {
	f := gateway.AuditFilter{
		StudyUID:  q.Get("study_uid"),
		PatientID: q.Get("patient_id"),
		Actor:     q.Get("actor"),
		Action:    q.Get("action"),
		Cursor:    q.Get("next"),
	}
	var err error
	if f.Since, err = auditTime("since", q.Get("since")); err != nil {
		return f, err
	}
	if f.Until, err = auditTime("until", q.Get("until")); err != nil {
		return f, err
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > gateway.MaxAuditLimit {
			return f, fmt.Errorf("limit %q: want 1 to %d: %w", v, gateway.MaxAuditLimit, gateway.ErrInvalid)
		}
		f.Limit = n
	}
	if _, err := gateway.DecodeAuditCursor(f.Cursor); err != nil {
		return f, err
	}
	return f, nil
}

// handleAuditQuery answers GET /audit: {"events":[…],"next":…}, or with
// format=fhir a FHIR R4 searchset Bundle of AuditEvents whose next link
// carries the cursor.
func (s *Server) handleAuditQuery(c *gin.Context) {
	q := c.Request.URL.Query()
	format := q.Get("format")
	if format != "" && format != "json" && format != "fhir" {
		s.writeError(c, fmt.Errorf("format %q: want json or fhir: %w", format, gateway.ErrInvalid))
		return
	}
	f, err := parseAuditFilter(q)
	if err != nil {
		s.writeError(c, err)
		return
	}
	// The filter as given, for the audit event; the patient ID goes in
	// the event's own field, never its detail.
	filter := map[string]any{}
	for _, k := range []string{"study_uid", "actor", "action", "since", "until", "limit", "next", "format"} {
		if v := q.Get(k); v != "" {
			filter[k] = v
		}
	}
	page, err := s.svc.Audit.Query(c.Request.Context(), s.caller(c), f, filter)
	if err != nil {
		s.writeError(c, err)
		return
	}
	if format != "fhir" {
		var next *string
		if page.Next != "" {
			next = &page.Next
		}
		c.JSON(http.StatusOK, gin.H{"events": page.Events, "next": next})
		return
	}
	self := s.auditURL(c, q, "")
	nextURL := ""
	if page.Next != "" {
		nextURL = s.auditURL(c, q, page.Next)
	}
	body := gateway.FHIRAuditBundle(page.Events, self, nextURL, s.svc.Audit.Now())
	c.Header("Content-Type", "application/fhir+json; charset=utf-8")
	c.JSON(http.StatusOK, body)
}

// auditURL is the absolute URL of this audit query, with next replaced when
// next is not empty.
func (s *Server) auditURL(c *gin.Context, q url.Values, next string) string {
	base := strings.TrimSuffix(s.PublicBaseURL, "/")
	if base == "" {
		scheme := "http"
		if c.Request.TLS != nil {
			scheme = "https"
		}
		base = scheme + "://" + c.Request.Host
	}
	if next != "" {
		q = maps.Clone(q) // Set replaces the slice: the request's values stay untouched
		q.Set("next", next)
	}
	return base + c.Request.URL.Path + "?" + q.Encode()
}

// handleAuditVerify answers GET /audit/verify with the chain check:
// {"ok":true,"records":N} or {"ok":false,"records":N,"first_broken":…,"reason":…}.
func (s *Server) handleAuditVerify(c *gin.Context) {
	res, err := s.svc.Audit.Verify(c.Request.Context(), s.caller(c))
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, res)
}

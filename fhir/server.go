package fhir

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	fm "github.com/samply/golang-fhir-models/fhir-models/fhir"

	"github.com/dicom-gateway/gateway/gateway"
)

// ContentType is the media type of every answer (FHIR R4 JSON).
const ContentType = "application/fhir+json; charset=utf-8"

// Searcher is the gateway's search use case (gateway.QueryService): it runs
// a study-level search for the caller and audits it, with the parameter
// names, the studies and the patients found, before returning anything; it
// fails with ErrUnavailable when the audit log cannot take the event.
type Searcher interface {
	Search(ctx context.Context, caller gateway.Caller, q *gateway.Query, keys []string) (*gateway.SearchResult, error)
}

// InstanceLister lists a study's instances (gateway.Index), for the series
// and instances of a study the audited search has just returned.
type InstanceLister interface {
	ListInstances(ctx context.Context, studyUID, seriesUID string) ([]*gateway.InstanceRecord, error)
}

// Handler serves the FHIR R4 API under Root. Fill the exported fields and
// mount Routes on the HTTP server, which authenticates (role read).
type Handler struct {
	Name      string // this centre's name (CapabilityStatement)
	Query     Searcher
	Instances InstanceLister
	// DICOMwebURL returns the DICOMweb root as the client reaches it (e.g.
	// https://pacs.example.nhs.uk/dicomweb): the Endpoint's WADO-RS
	// address, and with /dicomweb replaced by /fhir the base of fullUrls
	// and paging links.
	DICOMwebURL func(c *gin.Context) string
	Logger      *slog.Logger
	Now         func() time.Time
}

// Root is where the FHIR API is served (DESIGN.md: FHIR R4 root /fhir).
const Root = "/fhir"

// Route is one route of the FHIR API, for the server's routing table.
type Route struct {
	Method, Path string
	Handler      gin.HandlerFunc
}

// Routes lists the FHIR routes. They all need role read.
func (h *Handler) Routes() []Route {
	get := http.MethodGet
	return []Route{
		{get, Root + "/metadata", h.handleMetadata},
		{get, Root + "/ImagingStudy", h.handleSearch},
		{get, Root + "/ImagingStudy/:id", h.handleRead},
		{get, Root + "/Endpoint/:id", h.handleEndpoint},
		// Any other resource type is a FHIR 404, not the server's plain one.
		{get, Root + "/:type", h.handleUnsupported},
		{get, Root + "/:type/:id", h.handleUnsupported},
	}
}

// handleUnsupported answers a resource type this server does not serve.
func (h *Handler) handleUnsupported(c *gin.Context) {
	h.fail(c, fmt.Errorf("resource type %q is not served here (ImagingStudy and Endpoint are; see /fhir/metadata): %w", c.Param("type"), gateway.ErrNotFound))
}

func (h *Handler) logger() *slog.Logger {
	if h.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return h.Logger
}

func (h *Handler) now() time.Time {
	if h.Now != nil {
		return h.Now().UTC()
	}
	return time.Now().UTC()
}

// base returns the FHIR base URL as the client reaches it.
func (h *Handler) base(c *gin.Context) string {
	return strings.TrimSuffix(h.wadoRoot(c), "/dicomweb") + Root
}

func (h *Handler) wadoRoot(c *gin.Context) string {
	if h.DICOMwebURL != nil {
		return h.DICOMwebURL(c)
	}
	return "http://" + c.Request.Host + "/dicomweb"
}

// write answers with status and resource as FHIR JSON.
func (h *Handler) write(c *gin.Context, status int, resource any) {
	body, err := json.Marshal(resource)
	if err != nil {
		h.fail(c, err)
		return
	}
	c.Data(status, ContentType, body)
}

// statusByErr maps the domain's sentinels to HTTP statuses and FHIR issue
// types, in the order they are tried.
var statusByErr = []struct {
	err    error
	status int
	issue  fm.IssueType
}{
	{gateway.ErrNotFound, http.StatusNotFound, fm.IssueTypeNotFound},
	{gateway.ErrInvalid, http.StatusBadRequest, fm.IssueTypeInvalid},
	{gateway.ErrUnauthenticated, http.StatusUnauthorized, fm.IssueTypeLogin},
	{gateway.ErrForbidden, http.StatusForbidden, fm.IssueTypeForbidden},
	{gateway.ErrNotAcceptable, http.StatusNotAcceptable, fm.IssueTypeNotSupported},
	{gateway.ErrUnavailable, http.StatusServiceUnavailable, fm.IssueTypeTransient},
}

// issueTypeOf is the FHIR issue type for an HTTP error status.
func issueTypeOf(status int) fm.IssueType {
	for _, e := range statusByErr {
		if e.status == status {
			return e.issue
		}
	}
	switch status {
	case http.StatusTooManyRequests:
		return fm.IssueTypeThrottled
	case http.StatusMethodNotAllowed:
		return fm.IssueTypeNotSupported
	}
	if status < 500 {
		return fm.IssueTypeProcessing
	}
	return fm.IssueTypeException
}

// fail answers with the OperationOutcome for err: the status of the first
// sentinel it wraps, 500 ("internal error", the detail logged) otherwise.
func (h *Handler) fail(c *gin.Context, err error) {
	status := http.StatusInternalServerError
	for _, e := range statusByErr {
		if errors.Is(err, e.err) {
			status = e.status
			break
		}
	}
	msg := err.Error()
	if status == http.StatusInternalServerError {
		h.logger().ErrorContext(c.Request.Context(), "fhir: internal error", gateway.LogKeyError, msg)
		msg = "internal error"
	}
	if status == http.StatusServiceUnavailable {
		c.Header("Retry-After", "5")
	}
	WriteError(c, status, msg)
}

// WriteError answers with status and an OperationOutcome whose one issue
// says msg. The HTTP server calls it for the errors it answers before a
// FHIR handler runs (authentication, role, rate limit), so every FHIR
// error is an OperationOutcome.
func WriteError(c *gin.Context, status int, msg string) {
	oo := fm.OperationOutcome{Issue: []fm.OperationOutcomeIssue{{
		Severity:    fm.IssueSeverityError,
		Code:        issueTypeOf(status),
		Diagnostics: &msg,
	}}}
	body, err := json.Marshal(oo)
	if err != nil { // a struct of strings and codes: cannot happen
		c.AbortWithStatus(status)
		return
	}
	c.Abort()
	c.Data(status, ContentType, body)
}

// acceptsJSON reports whether the request may be answered in FHIR JSON:
// _format (json, application/json, application/fhir+json) overrides
// Accept, which must name a JSON type or */* when present.
func acceptsJSON(r *http.Request) bool {
	if f := r.URL.Query().Get("_format"); f != "" {
		switch strings.ToLower(strings.TrimSpace(f)) {
		case "json", "application/json", "application/fhir+json":
			return true
		}
		return false
	}
	accept := r.Header.Values("Accept")
	if len(accept) == 0 {
		return true
	}
	for _, v := range accept {
		for item := range strings.SplitSeq(v, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(item))
			if err != nil {
				continue
			}
			if q, ok := params["q"]; ok && strings.TrimSpace(q) == "0" {
				continue
			}
			switch mt {
			case "*/*", "application/*", "application/json", "application/fhir+json", "application/json+fhir":
				return true
			}
		}
	}
	return false
}

// negotiate answers 406 unless the request accepts FHIR JSON.
func (h *Handler) negotiate(c *gin.Context) bool {
	if acceptsJSON(c.Request) {
		return true
	}
	h.fail(c, fmt.Errorf("this server answers in FHIR JSON only (application/fhir+json, _format=json): %w", gateway.ErrNotAcceptable))
	return false
}

func ptr[T any](v T) *T { return &v }

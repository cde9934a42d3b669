package dicomweb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// Tags of the Store Instances Response Module (PS3.18 Annex I).
const (
	tagRetrieveURL             = "00081190"
	tagFailedSOPSequence       = "00081198"
	tagReferencedSOPSequence   = "00081199"
	tagReferencedSOPClassUID   = "00081150"
	tagReferencedSOPInstanceID = "00081155"
	tagFailureReason           = "00081197"
	tagErrorComment            = "00000902"
	tagWarningReason           = "00081196"
)

// stowRoutes lists the STOW-RS routes (PS3.18 10.5).
func (s *Server) stowRoutes(base string) []route {
	return []route{
		{http.MethodPost, base + "/studies", gateway.RoleStore, s.handleStow},
		{http.MethodPost, base + "/studies/:study", gateway.RoleStore, s.handleStow},
	}
}

// stowFailure is one instance that was not stored.
type stowFailure struct {
	sopClassUID, sopInstanceUID string
	reason                      uint16
	unavailable                 bool
	comment                     string // Error Comment (0000,0902), rarely set
}

// handleStow stores every part of a multipart/related request, one at a
// time as it arrives, and answers with the Store Instances Response Module:
// 200 all stored, 202 some failed, 409 none stored, 503 none stored because
// storage is unavailable; 400, 413 and 415 for a request that cannot be read.
func (s *Server) handleStow(c *gin.Context) {
	ctx := c.Request.Context()
	study := c.Param("study")
	if study != "" {
		if err := gateway.ValidateUID(study); err != nil {
			s.writeError(c, fmt.Errorf("study in the URL: %w", err))
			return
		}
	}
	boundary, err := stowBoundary(c.GetHeader("Content-Type"))
	if err != nil {
		s.writeError(c, err)
		return
	}
	if s.Ingester == nil {
		s.writeError(c, fmt.Errorf("no storage configured: %w", gateway.ErrUnavailable))
		return
	}
	var src io.Reader = c.Request.Body
	if s.Limits.MaxRequestBytes > 0 {
		src = http.MaxBytesReader(c.Writer, c.Request.Body, s.Limits.MaxRequestBytes)
	}
	body := &bodyReader{r: src, rc: http.NewResponseController(c.Writer), idle: s.Timeouts.withDefaults().StowIdle}
	mr := newPartReader(body, boundary)

	var (
		stored  []*gateway.InstanceRecord
		failed  []stowFailure
		refused refusalLog
		reqErr  error
		parts   int
		// One outcome per DICOM part, in order: parts are read one after
		// another, and each stored part's Finish (sync, index write,
		// routing) runs while the next parts are read, at most
		// stowFinishesInFlight at once.
		outcomes []*stowOutcome
		finishes sync.WaitGroup
		inFlight = make(chan struct{}, stowFinishesInFlight)
	)
	maxParts := s.Limits.maxParts()
	source := s.routingSource(c) // once per request, not per instance
	for {
		part, err := mr.NextRawPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			reqErr = multipartError(err, body)
			break
		}
		if parts++; parts > maxParts {
			// What was stored before stays stored, and is audited.
			reqErr = fmt.Errorf("more than %d parts in one request (--max-stow-parts); send the rest in another request: %w", maxParts, gateway.ErrTooLarge)
			break
		}
		if ok, mt := partIsDICOM(part.Header); !ok {
			refused.add(parts, "", gateway.ReasonCannotUnderstand, "part Content-Type "+truncate(mt, 100))
			outcomes = append(outcomes, &stowOutcome{failure: &stowFailure{reason: gateway.ReasonCannotUnderstand}})
			continue
		}
		// A part too short for the preamble and "DICM" (an empty part, say)
		// is refused here, before the ingest allocates anything for it.
		var lead [132]byte
		n, err := readLead(part, lead[:])
		if errors.Is(err, io.EOF) {
			refused.add(parts, "", gateway.ReasonCannotUnderstand, fmt.Sprintf("part of %d bytes is not a DICOM Part 10 instance", n))
			outcomes = append(outcomes, &stowOutcome{failure: &stowFailure{reason: gateway.ReasonCannotUnderstand}})
			continue
		}
		if err != nil {
			if reqErr = multipartError(err, body); reqErr == nil || errors.Is(reqErr, io.EOF) {
				reqErr = fmt.Errorf("read part %d: %v: %w", parts, err, gateway.ErrInvalid)
			}
			break
		}
		pending, err := s.Ingester.Begin(ctx, io.MultiReader(bytes.NewReader(lead[:]), part), gateway.StoreOptions{StudyInstanceUID: study})
		if err != nil {
			ie, ok := errors.AsType[*gateway.InstanceError](err)
			if !ok {
				reqErr = multipartError(err, body)
				if reqErr == nil || errors.Is(reqErr, io.EOF) {
					reqErr = fmt.Errorf("read part %d: %v: %w", parts, err, gateway.ErrInvalid)
				}
				break
			}
			if errors.Is(err, gateway.ErrTooLarge) && !drainPart(part) {
				// The part goes on far past the limit (maybe for ever):
				// refuse the rest of the request rather than read it all.
				// What was stored before stays stored.
				reqErr = fmt.Errorf("part %d is larger than --max-instance-bytes %d: %w", parts, s.Ingester.MaxInstanceBytes, gateway.ErrTooLarge)
				break
			}
			outcomes = append(outcomes, s.refused(c, study, parts, ie, &refused))
			continue
		}
		o := &stowOutcome{}
		outcomes = append(outcomes, o)
		inFlight <- struct{}{}
		partNo := parts // parts moves on while this finish runs
		finishes.Go(func() {
			defer func() { <-inFlight }()
			s.finishStow(c, study, source, partNo, pending, o, &refused)
		})
	}
	finishes.Wait()
	refused.log(ctx, s.Logger)
	var incoming []gateway.IncomingInstance
	for _, o := range outcomes {
		switch {
		case o.err != nil && reqErr == nil:
			reqErr = o.err
		case o.failure != nil:
			failed = append(failed, *o.failure)
		case o.rec != nil:
			stored = append(stored, o.rec)
		}
		if o.incoming != nil {
			incoming = append(incoming, *o.incoming)
		}
	}
	s.recordIncoming(c, incoming)
	if reqErr == nil && parts == 0 {
		reqErr = fmt.Errorf("the multipart/related body has no parts: %w", gateway.ErrInvalid)
	}

	status := http.StatusOK
	switch {
	case reqErr != nil:
		status = statusOf(reqErr)
		if status == http.StatusInternalServerError {
			// A body that stopped arriving (timeout, reset) is the client's.
			reqErr = fmt.Errorf("read request body: %v: %w", reqErr, gateway.ErrInvalid)
			status = http.StatusBadRequest
		}
	case len(failed) > 0 && len(stored) > 0:
		status = http.StatusAccepted
	case len(failed) > 0 && !slices.ContainsFunc(failed, func(f stowFailure) bool { return !f.unavailable }):
		status = http.StatusServiceUnavailable
	case len(failed) > 0:
		status = http.StatusConflict
	case warnedCount(stored) > 0:
		status = http.StatusAccepted // PS3.18 10.5.3: stored, with warnings
	}

	if err := s.auditStow(c, study, stored, failed, status, reqErr); err != nil {
		s.writeError(c, fmt.Errorf("audit not recorded: %w", err))
		return
	}
	if reqErr != nil {
		s.writeError(c, reqErr)
		return
	}
	if status == http.StatusServiceUnavailable {
		c.Header("Retry-After", "5")
	}
	if w := s.stowWarning(stored); w != "" {
		c.Header("Warning", w)
	}
	resp := s.stowResponse(c, study, stored, failed)
	if loc := stowLocation(resp, stored); loc != "" {
		c.Header("Content-Location", loc)
	}
	if wantXML, multi := stowAnswerXML(c.Request); wantXML {
		err = writeDICOMXML(c, status, resp, multi)
	} else {
		err = writeDICOMJSON(c, status, resp)
	}
	if err != nil {
		s.Logger.WarnContext(ctx, "stow response not sent", gateway.LogKeyError, err.Error())
	}
}

// stowFinishesInFlight bounds the stored parts of one STOW-RS request whose
// sync and index write run while later parts are read: enough to keep a
// disk's queue and the index's group commit busy, each holding only an open
// temporary file and a parsed header.
const stowFinishesInFlight = 16

// stowOutcome is what became of one part of a STOW-RS request: stored
// (rec), refused (failure), or err, an error that ends the request (the
// client went away while the part was being finished).
type stowOutcome struct {
	rec      *gateway.InstanceRecord
	failure  *stowFailure
	err      error
	incoming *gateway.IncomingInstance // what an incoming transfer records of it
}

// finishStow makes one read part durable, indexes and routes it, and
// records the outcome in o. It runs concurrently with the request's reading
// of later parts.
func (s *Server) finishStow(c *gin.Context, study, source string, part int, pending *gateway.PendingInstance, o *stowOutcome, log *refusalLog) {
	rec, err := pending.Finish(c.Request.Context())
	if err != nil {
		ie, ok := errors.AsType[*gateway.InstanceError](err)
		if !ok {
			o.err = fmt.Errorf("store part %d: %w", part, err)
			return
		}
		*o = *s.refused(c, study, part, ie, log)
		return
	}
	if err := s.route(c, rec, source); err != nil {
		// Stored, but its routing rule could not queue the transfer:
		// report it failed so that the sender resends it. The resend is
		// idempotent (identical bytes) and routes it again, so nothing
		// stored here is silently left unforwarded.
		o.failure = &stowFailure{sopClassUID: rec.SOPClassUID, sopInstanceUID: rec.SOPInstanceUID,
			reason: gateway.ReasonOutOfResources, unavailable: true}
		return
	}
	in := incomingOf(rec.StudyInstanceUID, rec.SOPInstanceUID, rec.Size, nil)
	o.rec, o.incoming = rec, &in
}

// refused records one refused part, in log for the request's log line.
func (s *Server) refused(c *gin.Context, study string, part int, ie *gateway.InstanceError, log *refusalLog) *stowOutcome {
	log.add(part, ie.SOPInstanceUID, ie.Reason, ie.Err.Error())
	in := incomingOf(study, ie.SOPInstanceUID, 0, ie)
	return &stowOutcome{incoming: &in, failure: &stowFailure{
		sopClassUID: ie.SOPClassUID, sopInstanceUID: ie.SOPInstanceUID, reason: ie.Reason,
		unavailable: errors.Is(ie, gateway.ErrUnavailable), comment: ie.Comment,
	}}
}

// stowLocation is the Content-Location of a STOW-RS response (PS3.18
// 10.5.3: a response that created resources names them): the study's URL,
// the response's RetrieveURL, when at least one instance was stored and all
// of them are in one study. Instances of several studies have no single
// resource to name, so the header is left out; each stored instance's
// RetrieveURL in the ReferencedSOPSequence still says where it is.
func stowLocation(resp dicomcodec.Dataset, stored []*gateway.InstanceRecord) string {
	if len(stored) == 0 {
		return ""
	}
	url := resp[tagRetrieveURL].Value
	if len(url) != 1 {
		return ""
	}
	for _, r := range stored[1:] {
		if r.StudyInstanceUID != stored[0].StudyInstanceUID {
			return ""
		}
	}
	loc, _ := url[0].(string)
	return loc
}

// stowResponse builds the Store Instances Response Module (PS3.18 I.1).
func (s *Server) stowResponse(c *gin.Context, study string, stored []*gateway.InstanceRecord, failed []stowFailure) dicomcodec.Dataset {
	base := s.baseURL(c)
	studies := map[string]bool{}
	for _, r := range stored {
		studies[r.StudyInstanceUID] = true
	}
	resp := dicomcodec.Dataset{tagRetrieveURL: {VR: "UR"}}
	if study == "" && len(studies) == 1 {
		for st := range studies {
			study = st
		}
	}
	if study != "" {
		resp[tagRetrieveURL] = dicomcodec.Attribute{VR: "UR", Value: []any{base + "/studies/" + study}}
	}
	if len(stored) > 0 {
		items := make([]any, 0, len(stored))
		for _, r := range stored {
			item := dicomcodec.Dataset{
				tagReferencedSOPClassUID:   {VR: "UI", Value: []any{r.SOPClassUID}},
				tagReferencedSOPInstanceID: {VR: "UI", Value: []any{r.SOPInstanceUID}},
				tagRetrieveURL:             {VR: "UR", Value: []any{base + "/studies/" + r.StudyInstanceUID + "/series/" + r.SeriesInstanceUID + "/instances/" + r.SOPInstanceUID}},
			}
			addWarningReason(item, r)
			items = append(items, item)
		}
		resp[tagReferencedSOPSequence] = dicomcodec.Attribute{VR: "SQ", Value: items}
	}
	if len(failed) > 0 {
		items := make([]any, 0, len(failed))
		for _, f := range failed {
			item := dicomcodec.Dataset{
				tagReferencedSOPClassUID:   {VR: "UI"},
				tagReferencedSOPInstanceID: {VR: "UI"},
				tagFailureReason:           {VR: "US", Value: []any{int64(f.reason)}},
			}
			if f.sopClassUID != "" {
				item[tagReferencedSOPClassUID] = dicomcodec.Attribute{VR: "UI", Value: []any{f.sopClassUID}}
			}
			if f.sopInstanceUID != "" {
				item[tagReferencedSOPInstanceID] = dicomcodec.Attribute{VR: "UI", Value: []any{f.sopInstanceUID}}
			}
			if f.comment != "" {
				item[tagErrorComment] = dicomcodec.Attribute{VR: "LO", Value: []any{f.comment[:min(len(f.comment), 64)]}}
			}
			items = append(items, item)
		}
		resp[tagFailedSOPSequence] = dicomcodec.Attribute{VR: "SQ", Value: items}
	}
	return resp
}

// auditStow records one event for the request. An error means the event
// was not durably written; the request must then fail (closed).
func (s *Server) auditStow(c *gin.Context, study string, stored []*gateway.InstanceRecord, failed []stowFailure, status int, reqErr error) error {
	if s.Auditor == nil {
		return nil
	}
	var studies, patients []string
	var bytes int64
	for _, r := range stored {
		if !slices.Contains(studies, r.StudyInstanceUID) {
			studies = append(studies, r.StudyInstanceUID)
		}
		if id := r.Metadata.String(dicomcodec.TagPatientID); id != "" && !slices.Contains(patients, id) {
			patients = append(patients, id)
		}
		bytes += r.Size
	}
	if study != "" && !slices.Contains(studies, study) {
		studies = append(studies, study)
	}
	reasons := map[string]int{}
	for _, f := range failed {
		reasons[fmt.Sprintf("0x%04X", f.reason)]++
	}
	outcome := gateway.OutcomeSuccess
	switch {
	case status >= 500:
		outcome = gateway.OutcomeError
	case status != http.StatusOK && (status != http.StatusAccepted || len(failed) > 0):
		outcome = gateway.OutcomeFailure // a 202 without failures is a success with warnings
	}
	detail := map[string]any{
		"route": c.FullPath(), "status": status,
		"stored": len(stored), "failed": len(failed), "bytes": bytes,
	}
	if len(reasons) > 0 {
		detail["failure_reasons"] = reasons
	}
	if n := warnedCount(stored); n > 0 {
		detail["warned"] = n
	}
	if reqErr != nil {
		detail["error"] = reqErr.Error()
	}
	return s.Auditor.Record(c.Request.Context(), &gateway.AuditEvent{
		Time:       time.Now().UTC(),
		Gateway:    s.Name,
		Actor:      gateway.PrincipalFrom(c.Request.Context()),
		Action:     gateway.ActionStore,
		Outcome:    outcome,
		StudyUIDs:  studies,
		PatientIDs: patients,
		Detail:     detail,
	})
}

// baseURL is the public DICOMweb root of this gateway, without a trailing
// slash: Server.PublicBaseURL when set, else from X-Forwarded-Proto, -Host
// and -Prefix (a reverse proxy in front), else from the request.
func (s *Server) baseURL(c *gin.Context) string {
	const root = "/dicomweb"
	if s.PublicBaseURL != "" {
		return strings.TrimRight(s.PublicBaseURL, "/") + root
	}
	r := c.Request
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	fwdProto, fwdHost := forwarded(r.Header.Values("Forwarded"))
	if fwdProto == "" {
		fwdProto = firstForwarded(r.Header.Get("X-Forwarded-Proto"))
	}
	if fwdHost == "" {
		fwdHost = firstForwarded(r.Header.Get("X-Forwarded-Host"))
	}
	if p := strings.ToLower(fwdProto); p == "http" || p == "https" {
		proto = p
	}
	host := r.Host
	if fwdHost != "" && validHost(fwdHost) {
		host = fwdHost
	}
	prefix := ""
	if p := firstForwarded(r.Header.Get("X-Forwarded-Prefix")); p != "" && validPrefix(p) {
		prefix = strings.TrimRight(p, "/")
	}
	return proto + "://" + host + prefix + root
}

// forwarded returns proto and host from the first element of RFC 7239
// Forwarded headers (the proxy nearest the client), "" when absent.
func forwarded(values []string) (proto, host string) {
	if len(values) == 0 {
		return "", ""
	}
	first := firstForwarded(values[0])
	for pair := range strings.SplitSeq(first, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok {
			continue
		}
		v = strings.Trim(strings.TrimSpace(v), `"`)
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "proto":
			proto = v
		case "host":
			host = v
		}
	}
	return proto, host
}

func firstForwarded(v string) string {
	first, _, _ := strings.Cut(v, ",")
	return strings.TrimSpace(first)
}

// validHost accepts host[:port] names and addresses, nothing that could
// bend a URL (no "/", "@", spaces or quotes).
func validHost(h string) bool {
	if len(h) > 255 {
		return false
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune(".-:[]_", c)) {
			return false
		}
	}
	return true
}

func validPrefix(p string) bool {
	if !strings.HasPrefix(p, "/") || strings.Contains(p, "//") || strings.Contains(p, "..") || len(p) > 200 {
		return false
	}
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("/-._~", c)) {
			return false
		}
	}
	return true
}

// bodyReader reads the request body, moving the connection's read deadline
// idle forward each time stowMinProgress more bytes have arrived (a minimum
// rate, not a whole-request timeout; the first deadline is set by the
// deadlines middleware), and records the first error from below so that a
// size limit (413) or a lost client is told apart from a malformed multipart
// body (400).
type bodyReader struct {
	r        io.Reader
	rc       *http.ResponseController
	idle     time.Duration
	extended time.Time
	progress int // bytes since the deadline last moved
	err      error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if now := time.Now(); b.idle > 0 && b.progress >= stowMinProgress && now.Sub(b.extended) >= min(time.Second, b.idle/4) {
		_ = b.rc.SetReadDeadline(now.Add(b.idle)) // unsupported (tests' recorders): no deadline
		b.extended, b.progress = now, 0
	}
	n, err := b.r.Read(p)
	b.progress += n
	if err != nil && !errors.Is(err, io.EOF) && b.err == nil {
		b.err = err
	}
	return n, err
}

// routingSource is the source routing rules see for a STOW-RS request: the
// sending centre when the request may speak for one (peerauth.go), else the
// principal's name.
func (s *Server) routingSource(c *gin.Context) string {
	if s.Router == nil {
		return ""
	}
	if source, ok := s.sourceCentre(c); ok {
		return source
	}
	return gateway.PrincipalFrom(c.Request.Context()).Name
}

// route hands a newly stored instance to the routing rules with the
// request's routingSource.
func (s *Server) route(c *gin.Context, rec *gateway.InstanceRecord, source string) error {
	if s.Router == nil {
		return nil
	}
	if err := s.Router.Ingested(c.Request.Context(), rec, source); err != nil {
		s.Logger.WarnContext(c.Request.Context(), "routing rule not applied; instance reported failed so the sender resends it",
			gateway.LogKeyStudyUID, rec.StudyInstanceUID, gateway.LogKeySOPUID, rec.SOPInstanceUID, gateway.LogKeyError, err.Error())
		return err
	}
	return nil
}

// oversizeDrain is how much more of a part over the instance limit is read
// and discarded so that the request's next parts can still be stored.
const oversizeDrain = 64 << 20

// drainPart discards the rest of a refused part, and reports whether it
// ended within oversizeDrain bytes.
func drainPart(part io.Reader) bool {
	n, err := io.CopyN(io.Discard, part, oversizeDrain+1)
	return n <= oversizeDrain && (err == nil || errors.Is(err, io.EOF))
}

// readLead reads up to len(b) bytes of r. Unlike io.ReadFull it returns
// r's own error: nil when b was filled, io.EOF when the part ended first,
// and a multipart reader's io.ErrUnexpectedEOF (a body cut off before its
// closing boundary: 400) as it is, not as a short part.
func readLead(r io.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := r.Read(b[n:])
		n += m
		if err != nil {
			if errors.Is(err, io.EOF) && n == len(b) {
				return n, nil
			}
			return n, err
		}
	}
	return n, nil
}

// maxRefusalExamples is how many refused parts the request's log line
// describes one by one.
const maxRefusalExamples = 5

// refusalLog gathers the parts a STOW-RS request refused into one log
// line at its end, so that a request of many bad parts is one line, not
// one per part.
type refusalLog struct {
	mu       sync.Mutex // parts are finished concurrently
	count    int
	byReason map[string]int
	examples []any
}

func (r *refusalLog) add(part int, sopInstanceUID string, reason uint16, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	code := fmt.Sprintf("0x%04X", reason)
	if r.byReason == nil {
		r.byReason = map[string]int{}
	}
	r.count++
	r.byReason[code]++
	if len(r.examples) < maxRefusalExamples {
		r.examples = append(r.examples, slog.Group(strconv.Itoa(part),
			gateway.LogKeySOPUID, sopInstanceUID, "failure_reason", code, gateway.LogKeyError, truncate(detail, 300)))
	}
}

func (r *refusalLog) log(ctx context.Context, logger *slog.Logger) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.count == 0 {
		return
	}
	logger.InfoContext(ctx, "stow parts refused", "refused", r.count, "failure_reasons", r.byReason,
		slog.Group("first_parts", r.examples...))
}

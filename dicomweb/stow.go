package dicomweb

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/client"
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

// handleStow stores every part of a multipart/related request, one at a
// time as it arrives, through the store service (which pipelines each
// part's sync and index write with the reading of the next parts), and
// answers with the Store Instances Response Module: 200 all stored, 202
// some failed, 409 none stored, 503 none stored because storage is
// unavailable; 400, 413 and 415 for a request that cannot be read.
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
	batch, err := s.svc.Store.Begin(ctx, s.storeRequest(c, study))
	if err != nil {
		s.writeError(c, err)
		return
	}
	var src io.Reader = c.Request.Body
	if s.Limits.MaxRequestBytes > 0 {
		src = http.MaxBytesReader(c.Writer, c.Request.Body, s.Limits.MaxRequestBytes)
	}
	body := &bodyReader{r: src, rc: http.NewResponseController(c.Writer), idle: s.Timeouts.withDefaults().StowIdle}
	mr, releaseReader := newPartReader(body, boundary)

	var (
		reqErr error
		parts  int
		// checkedDigest: a part declared a SHA-256 (Content-Digest), and
		// every such part is compared with its bytes.
		checkedDigest bool
	)
	maxParts := s.Limits.maxParts()
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
			batch.Refuse(parts, gateway.ReasonCannotUnderstand, "part Content-Type "+truncate(mt, 100))
			continue
		}
		sha, err := client.ParseContentDigestSHA256(strings.Join(part.Header.Values(client.HeaderContentDigest), ","))
		if err != nil {
			batch.Refuse(parts, gateway.ReasonCannotUnderstand, err.Error())
			continue
		}
		checkedDigest = checkedDigest || sha != ""
		// A part too short for the preamble and "DICM" (an empty part, say)
		// is refused here, before the ingest allocates anything for it.
		var lead [132]byte
		n, err := readLead(part, lead[:])
		if errors.Is(err, io.EOF) {
			batch.Refuse(parts, gateway.ReasonCannotUnderstand, fmt.Sprintf("part of %d bytes is not a DICOM Part 10 instance", n))
			continue
		}
		if err == nil {
			err = batch.AddWithSHA256(parts, io.MultiReader(bytes.NewReader(lead[:]), part), sha)
			if errors.Is(err, gateway.ErrTooLarge) {
				reqErr = err // a part far over --max-instance-bytes
				break
			}
		}
		if err != nil {
			if reqErr = multipartError(err, body); reqErr == nil || errors.Is(reqErr, io.EOF) {
				reqErr = fmt.Errorf("read part %d: %v: %w", parts, err, gateway.ErrInvalid)
			}
			break
		}
	}
	res := batch.Wait()
	releaseReader() // every part was read by its Add: nothing reads the body now
	if checkedDigest {
		// The sender may stop hashing what it sends us (client/digest.go).
		c.Header(client.HeaderDigestsChecked, client.DigestSHA256)
	}
	if reqErr == nil {
		reqErr = res.Err
	}
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
	case len(res.Failed) > 0 && len(res.Stored) > 0:
		status = http.StatusAccepted
	case len(res.Failed) > 0 && !slices.ContainsFunc(res.Failed, func(f gateway.StoreFailure) bool { return !f.Unavailable }):
		status = http.StatusServiceUnavailable
	case len(res.Failed) > 0:
		status = http.StatusConflict
	case res.Warned() > 0:
		status = http.StatusAccepted // PS3.18 10.5.3: stored, with warnings
	}

	if err := batch.Close(res, status, reqErr); err != nil {
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
	if w := s.stowWarning(res.Stored); w != "" {
		c.Header("Warning", w)
	}
	resp := s.stowResponse(c, study, res.Stored, res.Failed)
	if loc := stowLocation(resp, res.Stored); loc != "" {
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

// storeRequest is the store service's view of a STOW-RS request: who sends
// it, the study the URL names, and, when the credential may speak for a
// centre (peerauth.go), that centre and its transfer headers.
func (s *Server) storeRequest(c *gin.Context, study string) gateway.StoreRequest {
	req := gateway.StoreRequest{Caller: s.caller(c), StudyInstanceUID: study}
	if centre, ok := s.sourceCentre(c); ok {
		req.SourceCentre = centre
		req.TransferID = c.GetHeader(HeaderTransferID)
		req.TransferInstances, _ = strconv.Atoi(c.GetHeader(HeaderTransferInstances))
	}
	return req
}

// caller is the request's principal and route, as the services audit them.
func (s *Server) caller(c *gin.Context) gateway.Caller {
	return gateway.Caller{Principal: gateway.PrincipalFrom(c.Request.Context()), Route: c.FullPath()}
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
func (s *Server) stowResponse(c *gin.Context, study string, stored []*gateway.InstanceRecord, failed []gateway.StoreFailure) dicomcodec.Dataset {
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
				tagFailureReason:           {VR: "US", Value: []any{int64(f.Reason)}},
			}
			if f.SOPClassUID != "" {
				item[tagReferencedSOPClassUID] = dicomcodec.Attribute{VR: "UI", Value: []any{f.SOPClassUID}}
			}
			if f.SOPInstanceUID != "" {
				item[tagReferencedSOPInstanceID] = dicomcodec.Attribute{VR: "UI", Value: []any{f.SOPInstanceUID}}
			}
			if f.Comment != "" {
				item[tagErrorComment] = dicomcodec.Attribute{VR: "LO", Value: []any{f.Comment[:min(len(f.Comment), 64)]}}
			}
			items = append(items, item)
		}
		resp[tagFailedSOPSequence] = dicomcodec.Attribute{VR: "SQ", Value: items}
	}
	return resp
}

// baseURL is the public DICOMweb root of this gateway, without a trailing
// slash: Server.PublicBaseURL when set, else from Forwarded or
// X-Forwarded-Proto, -Host and -Prefix (a reverse proxy in front; only a
// trusted one when TrustedProxies are set: forwardedTrusted), else from
// the request.
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
	if !s.forwardedTrusted(c) {
		return proto + "://" + r.Host + root
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

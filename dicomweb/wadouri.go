package dicomweb

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// handleWADOURI serves WADO-URI (PS3.18 section 9) for older viewers:
// GET /dicomweb/wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…
// [&contentType=application/dicom|image/jpeg|image/png][&transferSyntax=…]
// [&frameNumber=n][&windowCenter=c&windowWidth=w][&rows=r][&columns=c]
// [&imageQuality=q]. contentType may list several types in order of
// preference (9.1.2.1.6); without it an image is rendered as JPEG and any
// other object is sent as application/dicom. The object is sent as stored,
// or transcoded to Explicit VR Little Endian when it is stored in Implicit
// VR Little Endian or Explicit VR Big Endian (gateway.CanTranscode) and
// transferSyntax asks for that or is absent; any other transferSyntax is 406. anonymize=yes is refused (400) rather than ignored.
func (s *Server) handleWADOURI(c *gin.Context) {
	q := c.Request.URL.Query()
	if rt := q.Get("requestType"); rt != "WADO" {
		s.writeError(c, fmt.Errorf("requestType=%q: WADO-URI needs requestType=WADO: %w", truncate(rt, 20), gateway.ErrInvalid))
		return
	}
	for _, p := range []string{"studyUID", "seriesUID", "objectUID"} {
		if q.Get(p) == "" {
			s.writeError(c, fmt.Errorf("%s is required: %w", p, gateway.ErrInvalid))
			return
		}
	}
	if a := q.Get("anonymize"); a != "" {
		s.writeError(c, fmt.Errorf("anonymize=%q is not supported: %w", truncate(a, 10), gateway.ErrInvalid))
		return
	}
	rec, err := s.svc.Retrieve.Instance(c.Request.Context(), q.Get("studyUID"), q.Get("seriesUID"), q.Get("objectUID"))
	if err != nil {
		s.writeError(c, err)
		return
	}
	ct := q.Get("contentType")
	if ct == "" {
		ct = mediaDICOM
		if gateway.CheckRenderable(rec) == nil {
			ct = mediaJPEG
		}
	}
	accept := parseAccept([]string{ct})
	offers := []offer{{mediaType: mediaDICOM, syntaxes: []string{rec.TransferSyntaxUID}}, {mediaType: mediaJPEG}, {mediaType: mediaPNG}}
	ch, ok := negotiate(accept, offers)
	if !ok || len(accept) == 0 {
		s.writeError(c, notAcceptable(accept, "WADO-URI contentType", offers))
		return
	}
	if ch.mediaType != mediaDICOM {
		req := renderRequest{frame: 1, quality: 90}
		if err := parseWADOURIRender(q.Get, &req); err != nil {
			s.writeError(c, err)
			return
		}
		s.render(c, rec, req, []mediaRange{{mediaType: ch.mediaType, q: 1}})
		return
	}
	// No transferSyntax: as in WADO-RS, an instance stored in Implicit VR
	// Little Endian or Explicit VR Big Endian comes in Explicit VR Little
	// Endian, anything else as stored; "*" is always the stored bytes.
	ts := strings.TrimSpace(q.Get("transferSyntax"))
	switch {
	case ts == "" && dicomcodec.CanTranscode(rec.TransferSyntaxUID, dicomcodec.TSExplicitLE):
		ts = dicomcodec.TSExplicitLE
	case ts == "" || ts == "*":
		ts = rec.TransferSyntaxUID
	}
	if ts != rec.TransferSyntaxUID && !dicomcodec.CanTranscode(rec.TransferSyntaxUID, ts) {
		s.writeError(c, fmt.Errorf("instance %s is stored as %s, transferSyntax=%s asked (transcoding is to Explicit VR Little Endian only, from Implicit VR Little Endian or Explicit VR Big Endian): %w",
			rec.SOPInstanceUID, rec.TransferSyntaxUID, truncate(ts, 64), gateway.ErrNotAcceptable))
		return
	}
	if err := s.auditRetrieve(c, []*gateway.InstanceRecord{rec}, map[string]any{"wado_uri": true}); err != nil {
		s.writeError(c, err)
		return
	}
	r := s.svc.Retrieve
	c.Header("Content-Disposition", `attachment; filename="`+rec.SOPInstanceUID+`.dcm"`)
	size := rec.Size
	if ts != rec.TransferSyntaxUID {
		size = -1
	}
	s.writeSingle(c, mediaDICOM, size, func(ctx context.Context) (io.ReadCloser, error) { return r.OpenAs(ctx, rec, ts) })
}

// parseWADOURIRender reads the WADO-URI presentation parameters (9.1.2.2).
func parseWADOURIRender(get func(string) string, req *renderRequest) error {
	num := func(name string, min, max int) (int, bool, error) {
		v := get(name)
		if v == "" {
			return 0, false, nil
		}
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < min || n > max {
			return 0, false, fmt.Errorf("%s=%q: want an integer from %d to %d: %w", name, truncate(v, 20), min, max, gateway.ErrInvalid)
		}
		return n, true, nil
	}
	if n, ok, err := num("frameNumber", 1, 1<<30); err != nil {
		return err
	} else if ok {
		req.frame = n
	}
	if n, ok, err := num("rows", 1, 1<<14); err != nil {
		return err
	} else if ok {
		req.opts.MaxHeight = n
	}
	if n, ok, err := num("columns", 1, 1<<14); err != nil {
		return err
	} else if ok {
		req.opts.MaxWidth = n
	}
	if n, ok, err := num("imageQuality", 1, 100); err != nil {
		return err
	} else if ok {
		req.quality = n
	}
	wc, ww := get("windowCenter"), get("windowWidth")
	if (wc == "") != (ww == "") {
		return fmt.Errorf("windowCenter and windowWidth go together: %w", gateway.ErrInvalid)
	}
	if wc != "" {
		c, err1 := strconv.ParseFloat(strings.TrimSpace(wc), 64)
		w, err2 := strconv.ParseFloat(strings.TrimSpace(ww), 64)
		if err1 != nil || err2 != nil || w < 1 {
			return fmt.Errorf("windowCenter=%q windowWidth=%q: want numbers, width ≥ 1: %w", truncate(wc, 20), truncate(ww, 20), gateway.ErrInvalid)
		}
		req.opts.Window, req.opts.WindowCenter, req.opts.WindowWidth = true, c, w
	}
	return nil
}

package dicomweb

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// wadoRoutes lists the WADO-RS routes (PS3.18 10.4: instances, metadata,
// frames, rendered, thumbnail, bulk data), WADO-URI (section 9) and the
// DELETE of studies, series and instances.
func (s *Server) wadoRoutes(base string) []route {
	st := base + "/studies/:study"
	se := st + "/series/:series"
	in := se + "/instances/:instance"
	read, admin := gateway.RoleRead, gateway.RoleAdmin
	get, del := http.MethodGet, http.MethodDelete
	dicom := func(h gin.HandlerFunc) gin.HandlerFunc { return s.acceptChecked(resourceDICOM, h) }
	pixels := func(h gin.HandlerFunc) gin.HandlerFunc { return s.acceptChecked(resourcePixels, h) }
	rendered := func(h gin.HandlerFunc) gin.HandlerFunc { return s.acceptChecked(resourceRendered, h) }
	return []route{
		{get, st, read, dicom(s.handleRetrieveStudy)},
		{get, st + "/metadata", read, dicom(s.handleStudyMetadata)},
		{get, se, read, dicom(s.handleRetrieveSeries)},
		{get, se + "/metadata", read, dicom(s.handleSeriesMetadata)},
		{get, in, read, dicom(s.handleRetrieveInstance)},
		{get, in + "/metadata", read, dicom(s.handleInstanceMetadata)},
		{get, in + "/frames/:frames", read, pixels(s.handleFrames)},
		{get, in + "/frames/:frames/rendered", read, rendered(s.handleRendered)},
		{get, in + "/frames/:frames/thumbnail", read, rendered(s.handleThumbnail)},
		{get, in + "/rendered", read, rendered(s.handleRendered)},
		{get, in + "/thumbnail", read, rendered(s.handleThumbnail)},
		{get, in + "/bulkdata/*path", read, pixels(s.handleBulkData)},
		{get, base + "/wado", read, s.handleWADOURI},
		{del, st, admin, s.handleDeleteStudy},
		{del, se, admin, s.handleDeleteSeries},
		{del, in, admin, s.handleDeleteInstance},
	}
}

// acceptChecked runs checkAccept on the request's Accept header before h:
// a request refused for its Accept header reads nothing and audits nothing.
func (s *Server) acceptChecked(k resourceKind, h gin.HandlerFunc) gin.HandlerFunc {
	return func(c *gin.Context) {
		if err := checkAccept(parseAccept(c.Request.Header.Values("Accept")), k); err != nil {
			s.writeError(c, err)
			return
		}
		h(c)
	}
}

// auditRetrieve records who reads which studies (and so which patients)
// before any byte is sent. If the audit log cannot take the event the request
// fails with 503 and nothing is sent: patient data is never served unaudited.
func (s *Server) auditRetrieve(c *gin.Context, recs []*gateway.InstanceRecord, detail map[string]any) error {
	return s.svc.Retrieve.AuditRead(c.Request.Context(), s.caller(c), recs, detail)
}

// ---- retrieve instances ----

func (s *Server) handleRetrieveStudy(c *gin.Context) {
	recs, err := s.svc.Retrieve.Study(c.Request.Context(), c.Param("study"))
	if err != nil {
		s.writeError(c, err)
		return
	}
	s.retrieveInstances(c, recs, false)
}

func (s *Server) handleRetrieveSeries(c *gin.Context) {
	recs, err := s.svc.Retrieve.Series(c.Request.Context(), c.Param("study"), c.Param("series"))
	if err != nil {
		s.writeError(c, err)
		return
	}
	s.retrieveInstances(c, recs, false)
}

func (s *Server) handleRetrieveInstance(c *gin.Context) {
	rec, ok := s.instance(c)
	if !ok {
		return
	}
	s.retrieveInstances(c, []*gateway.InstanceRecord{rec}, true)
}

// instance resolves the instance named by the path or answers the error.
func (s *Server) instance(c *gin.Context) (*gateway.InstanceRecord, bool) {
	rec, err := s.svc.Retrieve.Instance(c.Request.Context(), c.Param("study"), c.Param("series"), c.Param("instance"))
	if err != nil {
		s.writeError(c, err)
		return nil, false
	}
	return rec, true
}

// retrieveInstances negotiates a representation for every stored transfer
// syntax among recs (each instance is served as stored; a client that names
// a syntax some instance is not stored in gets 406 naming it), audits, then
// streams the instances, one blob open at a time.
func (s *Server) retrieveInstances(c *gin.Context, recs []*gateway.InstanceRecord, single bool) {
	accept := parseAccept(c.Request.Header.Values("Accept"))
	chosen := map[string]choice{}
	for _, rec := range recs {
		ts := rec.TransferSyntaxUID
		if _, done := chosen[ts]; done {
			continue
		}
		offers := instanceOffers(ts, single)
		ch, ok := negotiate(accept, offers)
		if !ok {
			s.writeError(c, notAcceptable(accept, "instance "+rec.SOPInstanceUID+" is stored as "+ts, offers))
			return
		}
		chosen[ts] = ch
	}
	if err := s.auditRetrieve(c, recs, nil); err != nil {
		s.writeError(c, err)
		return
	}
	r := s.svc.Retrieve
	// length is the stored size, or unknown (-1) for a transcode.
	length := func(rec *gateway.InstanceRecord, ts string) int64 {
		if ts != rec.TransferSyntaxUID {
			return -1
		}
		return rec.Size
	}
	if ch := chosen[recs[0].TransferSyntaxUID]; single && !ch.multipart {
		rec := recs[0]
		s.writeSingle(c, ch.contentType(), length(rec, ch.transferSyntax), func(ctx context.Context) (io.ReadCloser, error) {
			return r.OpenAs(ctx, rec, ch.transferSyntax)
		})
		return
	}
	base := s.baseURL(c)
	parts := make([]part, len(recs))
	for i, rec := range recs {
		ch := chosen[rec.TransferSyntaxUID]
		parts[i] = part{
			contentType: ch.contentType(),
			location:    recordURL(base, rec),
			length:      length(rec, ch.transferSyntax),
			open:        func(ctx context.Context) (io.ReadCloser, error) { return r.OpenAs(ctx, rec, ch.transferSyntax) },
		}
	}
	s.writeMultipart(c, mediaDICOM, parts)
}

// ---- frames and bulk data ----

func (s *Server) handleFrames(c *gin.Context) {
	frames, err := gateway.ParseFrameList(c.Param("frames"))
	if err != nil {
		s.writeError(c, err)
		return
	}
	rec, ok := s.instance(c)
	if !ok {
		return
	}
	ranges := make([][]dicomcodec.ByteRange, len(frames))
	locations := make([]string, len(frames))
	inst := recordURL(s.baseURL(c), rec)
	for i, n := range frames {
		if ranges[i], err = rec.FrameRanges(n); err != nil {
			s.writeError(c, err)
			return
		}
		locations[i] = frameURL(inst, n)
	}
	s.servePixels(c, rec, ranges, locations, len(frames) == 1, map[string]any{"frames": truncate(c.Param("frames"), 200)})
}

// recordURL is the WADO-RS URL of rec's instance under the public root
// base (Server.baseURL): what a multipart part carrying the instance names
// in its Content-Location.
func recordURL(base string, rec *gateway.InstanceRecord) string {
	return instanceURL(base, rec.StudyInstanceUID, rec.SeriesInstanceUID, rec.SOPInstanceUID)
}

// frameURL is the URL of frame n of the instance at inst.
func frameURL(inst string, n int) string {
	return inst + "/frames/" + strconv.Itoa(n)
}

// servePixels negotiates and streams pixel data: one part per entry of
// ranges (a frame, or the whole native value), each labelled with its
// transfer syntax and with the URL of what it holds (locations[i]).
func (s *Server) servePixels(c *gin.Context, rec *gateway.InstanceRecord, ranges [][]dicomcodec.ByteRange, locations []string, single bool, detail map[string]any) {
	syntaxes := pixelSyntaxes(rec.TransferSyntaxUID)
	swap := swappablePixels(rec, ranges)
	if swap {
		syntaxes = append(syntaxes, dicomcodec.TSExplicitLE)
	}
	offers := frameOffers(rec.TransferSyntaxUID, syntaxes, rec.PixelData.Encapsulated, single)
	ch, ok := negotiate(parseAccept(c.Request.Header.Values("Accept")), offers)
	if !ok {
		s.writeError(c, notAcceptable(parseAccept(c.Request.Header.Values("Accept")),
			"pixel data of instance "+rec.SOPInstanceUID+" is stored as "+rec.TransferSyntaxUID, offers))
		return
	}
	var total int64
	for _, rs := range ranges {
		total += rangesLength(rs)
	}
	detail["bytes"] = total
	if err := s.auditRetrieve(c, []*gateway.InstanceRecord{rec}, detail); err != nil {
		s.writeError(c, err)
		return
	}
	r := s.svc.Retrieve
	open := func(ctx context.Context, rs []dicomcodec.ByteRange) (io.ReadCloser, error) {
		rc, err := r.OpenRanges(ctx, rec, rs)
		if err == nil && swap && ch.transferSyntax == dicomcodec.TSExplicitLE {
			rc = dicomcodec.SwapBytes16(rc) // big endian OW words to little endian
		}
		return rc, err
	}
	if !ch.multipart {
		s.writeSingle(c, ch.contentType(), rangesLength(ranges[0]), func(ctx context.Context) (io.ReadCloser, error) {
			return open(ctx, ranges[0])
		})
		return
	}
	parts := make([]part, len(ranges))
	for i, rs := range ranges {
		parts[i] = part{
			contentType: ch.contentType(),
			location:    locations[i],
			length:      rangesLength(rs),
			open:        func(ctx context.Context) (io.ReadCloser, error) { return open(ctx, rs) },
		}
	}
	s.writeMultipart(c, ch.mediaType, parts)
}

func rangesLength(rs []dicomcodec.ByteRange) int64 {
	var n int64
	for _, r := range rs {
		n += r.Length
	}
	return n
}

// handleBulkData serves a BulkDataURI. Pixel Data (7FE00010) is served from
// the layout recorded at ingest: the native value as one part, or the frames
// of encapsulated data as one part each. Other bulk elements are located by
// walking the stored header (gateway.Retriever.BulkData).
func (s *Server) handleBulkData(c *gin.Context) {
	rec, ok := s.instance(c)
	if !ok {
		return
	}
	path := strings.Trim(c.Param("path"), "/")
	inst := recordURL(s.baseURL(c), rec)
	bulkURL := inst + "/bulkdata/" + path
	if isPixelDataPath(path) && rec.PixelData != nil {
		// Encapsulated pixel data comes one frame a part, each part naming
		// its frame's URL; native pixel data is one part, the bulk data.
		var ranges [][]dicomcodec.ByteRange
		var locations []string
		if rec.PixelData.Encapsulated {
			for n := 1; n <= rec.Frames(); n++ {
				rs, err := rec.FrameRanges(n)
				if err != nil {
					s.writeError(c, err)
					return
				}
				ranges = append(ranges, rs)
				locations = append(locations, frameURL(inst, n))
			}
		} else {
			rs, err := rec.PixelDataRanges()
			if err != nil {
				s.writeError(c, err)
				return
			}
			ranges, locations = [][]dicomcodec.ByteRange{rs}, []string{bulkURL}
		}
		s.servePixels(c, rec, ranges, locations, len(ranges) == 1, map[string]any{"bulkdata": path})
		return
	}
	// Other bulk data, and the pixel data of a deflated dataset, which has
	// no frame layout: located by walking the stored header (inflating it
	// for a deflated dataset). Its bytes are little endian except in an
	// explicit big-endian dataset.
	r := s.svc.Retrieve
	body, length, err := r.OpenBulkData(c.Request.Context(), rec, path)
	if err != nil {
		s.writeError(c, err)
		return
	}
	defer func() {
		if body != nil {
			body.Close()
		}
	}()
	syntaxes := pixelSyntaxes(rec.TransferSyntaxUID)
	if rec.TransferSyntaxUID == dicomcodec.TSDeflatedExplicitLE {
		syntaxes = []string{dicomcodec.TSExplicitLE}
	}
	offers := []offer{{multipart: true, mediaType: mediaOctetStream, syntaxes: syntaxes}, {mediaType: mediaOctetStream, syntaxes: syntaxes}}
	accept := parseAccept(c.Request.Header.Values("Accept"))
	ch, ok := negotiate(accept, offers)
	if !ok {
		s.writeError(c, notAcceptable(accept, "bulk data "+path, offers))
		return
	}
	if err := s.auditRetrieve(c, []*gateway.InstanceRecord{rec}, map[string]any{"bulkdata": path, "bytes": length}); err != nil {
		s.writeError(c, err)
		return
	}
	open := func(context.Context) (io.ReadCloser, error) {
		b := body
		body = nil // the writer closes it now
		return b, nil
	}
	if !ch.multipart {
		s.writeSingle(c, ch.contentType(), length, open)
		return
	}
	s.writeMultipart(c, mediaOctetStream, []part{{contentType: ch.contentType(), location: bulkURL, length: length, open: open}})
}

// swappablePixels reports whether rec's pixel ranges can also be served in
// Explicit VR Little Endian by swapping bytes: native OW pixel data of an
// Explicit VR Big Endian instance, every range a whole number of words.
func swappablePixels(rec *gateway.InstanceRecord, ranges [][]dicomcodec.ByteRange) bool {
	if rec.TransferSyntaxUID != dicomcodec.TSExplicitBE || rec.PixelData.Encapsulated || rec.Metadata[dicomcodec.TagPixelData].VR != "OW" {
		return false
	}
	for _, rs := range ranges {
		for _, br := range rs {
			if br.Length%2 != 0 {
				return false
			}
		}
	}
	return true
}

// isPixelDataPath reports whether a bulk data path names the top-level
// Pixel Data, Float Pixel Data or Double Float Pixel Data element.
func isPixelDataPath(path string) bool {
	switch strings.ToUpper(path) {
	case dicomcodec.TagPixelData, "7FE00008", "7FE00009":
		return true
	}
	return false
}

// ---- delete ----

func (s *Server) handleDeleteStudy(c *gin.Context) {
	s.serveDelete(c, c.Param("study"), "", "")
}

func (s *Server) handleDeleteSeries(c *gin.Context) {
	s.serveDelete(c, c.Param("study"), c.Param("series"), "")
}

func (s *Server) handleDeleteInstance(c *gin.Context) {
	s.serveDelete(c, c.Param("study"), c.Param("series"), c.Param("instance"))
}

// serveDelete deletes through the delete service (which audits before
// removing anything) and answers what was removed.
func (s *Server) serveDelete(c *gin.Context, study, series, sop string) {
	p, res, err := s.svc.Delete.Delete(c.Request.Context(), s.caller(c), study, series, sop)
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{
		"study_uid":         p.StudyInstanceUID,
		"series_uid":        p.SeriesInstanceUID,
		"sop_instance_uid":  p.SOPInstanceUID,
		"deleted_instances": res.Instances,
		"deleted_blobs":     res.Blobs,
		"deleted_bytes":     res.Bytes,
	})
}

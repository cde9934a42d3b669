package dicomweb

import (
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/gateway"
)

func (s *Server) handleStudyMetadata(c *gin.Context) {
	recs, err := s.retriever().Study(c.Request.Context(), c.Param("study"))
	if err != nil {
		s.writeError(c, err)
		return
	}
	s.serveMetadata(c, recs)
}

func (s *Server) handleSeriesMetadata(c *gin.Context) {
	recs, err := s.retriever().Series(c.Request.Context(), c.Param("study"), c.Param("series"))
	if err != nil {
		s.writeError(c, err)
		return
	}
	s.serveMetadata(c, recs)
}

func (s *Server) handleInstanceMetadata(c *gin.Context) {
	rec, ok := s.instance(c)
	if !ok {
		return
	}
	s.serveMetadata(c, []*gateway.InstanceRecord{rec})
}

// serveMetadata answers the DICOM JSON of recs (an array, one object per
// instance) from the Metadata the index keeps, so no blob is opened: a
// 1,000-instance series is one index read and an encode. Relative
// BulkDataURIs become absolute under the instance's public URL. The ETag
// covers the instances' identity and content hashes, the public base URL and
// the media type; If-None-Match answers 304 without a body (and without an
// audit event, since no patient data is sent). The body is gzipped when the
// client accepts it.
func (s *Server) serveMetadata(c *gin.Context, recs []*gateway.InstanceRecord) {
	accept := parseAccept(c.Request.Header.Values("Accept"))
	ch, ok := negotiate(accept, metadataOffers)
	if !ok {
		s.writeError(c, notAcceptable(accept, "metadata", metadataOffers))
		return
	}
	base := s.baseURL(c)
	etag := metadataETag(base, ch.mediaType, recs)
	h := c.Writer.Header()
	h.Set("ETag", etag)
	h.Set("Vary", "Accept, Accept-Encoding")
	h.Set("Cache-Control", "private, no-cache")
	if etagMatches(c.GetHeader("If-None-Match"), etag) {
		c.Status(http.StatusNotModified)
		return
	}
	if err := s.auditRetrieve(c, recs, map[string]any{"metadata": true, "bytes": 0}); err != nil {
		s.writeError(c, err)
		return
	}
	h.Set("Content-Type", ch.mediaType)
	var w io.Writer = c.Writer
	var gz *gzip.Writer
	if acceptsGzip(c.Request.Header.Values("Accept-Encoding")) {
		h.Set("Content-Encoding", "gzip")
		gz, _ = gzip.NewWriterLevel(c.Writer, gzip.BestSpeed)
		w = gz
	}
	c.Status(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	buf := make([]byte, 0, 16<<10)
	bw.WriteByte('[')
	for i, rec := range recs {
		if i > 0 {
			bw.WriteByte(',')
		}
		buf = gateway.AppendDatasetJSON(buf[:0], rec.Metadata, s.baseURLJoin(base, rec)+"/")
		if _, err := bw.Write(buf); err != nil {
			s.abortStream(c, i, err)
		}
	}
	bw.WriteByte(']')
	err := bw.Flush()
	if gz != nil && err == nil {
		err = gz.Close()
	}
	if err != nil {
		s.abortStream(c, len(recs), err)
	}
}

// baseURLJoin is the public URL of rec under the DICOMweb base URL.
func (s *Server) baseURLJoin(base string, rec *gateway.InstanceRecord) string {
	return base + "/studies/" + rec.StudyInstanceUID + "/series/" + rec.SeriesInstanceUID +
		"/instances/" + rec.SOPInstanceUID
}

// metadataETag is a weak validator (the body may be gzipped or not) over
// what the metadata depends on.
func metadataETag(base, mediaType string, recs []*gateway.InstanceRecord) string {
	h := sha256.New()
	io.WriteString(h, base+"\x00"+mediaType+"\x00")
	for _, r := range recs {
		io.WriteString(h, r.SOPInstanceUID+"\x00"+r.SHA256+"\x00"+strconv.FormatInt(r.Size, 10)+"\x00"+
			strconv.FormatInt(r.StoredAt.UnixNano(), 10)+"\x00")
	}
	return `W/"` + hex.EncodeToString(h.Sum(nil)[:16]) + `"`
}

// etagMatches implements If-None-Match's weak comparison (RFC 9110 13.1.2).
func etagMatches(header, etag string) bool {
	if header == "" {
		return false
	}
	want := strings.TrimPrefix(etag, "W/")
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == want {
			return true
		}
	}
	return false
}

// acceptsGzip reports whether Accept-Encoding allows gzip (q > 0).
func acceptsGzip(values []string) bool {
	for _, v := range values {
		for _, e := range strings.Split(v, ",") {
			name, params, _ := strings.Cut(strings.TrimSpace(e), ";")
			name = strings.ToLower(strings.TrimSpace(name))
			if name != "gzip" && name != "x-gzip" && name != "*" {
				continue
			}
			if q, ok := strings.CutPrefix(strings.ReplaceAll(params, " ", ""), "q="); ok {
				if f, err := strconv.ParseFloat(q, 64); err == nil && f == 0 {
					continue
				}
			}
			return true
		}
	}
	return false
}

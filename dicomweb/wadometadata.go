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
	s.servePreparedMetadata(c, c.Param("study"), "")
}

func (s *Server) handleSeriesMetadata(c *gin.Context) {
	s.servePreparedMetadata(c, c.Param("study"), c.Param("series"))
}

// servePreparedMetadata answers study or series metadata from the prepared
// metadata in the blob store (gateway.MetadataStore), listed by the index
// (gateway.MetadataReader): no instance is opened and no attribute is
// decoded, so a 1,000-instance series is a list of small entries, one
// streamed object and a copy.
func (s *Server) servePreparedMetadata(c *gin.Context, studyUID, seriesUID string) {
	ctx := c.Request.Context()
	entries, err := s.svc.Retrieve.MetadataEntries(ctx, studyUID, seriesUID)
	if err != nil {
		s.writeError(c, err)
		return
	}
	s.serveMetadata(c, entries, func(fn func(gateway.MetadataEntry, []byte) error) error {
		return s.svc.Retrieve.ReadMetadata(ctx, entries, fn)
	})
}

func (s *Server) handleInstanceMetadata(c *gin.Context) {
	rec, ok := s.instance(c)
	if !ok {
		return
	}
	entries := []gateway.MetadataEntry{gateway.NewMetadataEntry(rec)}
	s.serveMetadata(c, entries, func(fn func(gateway.MetadataEntry, []byte) error) error {
		return s.svc.Retrieve.ReadMetadata(c.Request.Context(), entries, fn)
	})
}

// serveMetadata answers the DICOM JSON of entries (an array, one object per
// instance), or their DICOM XML (writeMetadataXML), from their prepared metadata, which read yields in order. The
// prepared form's URL markers become the instance's public URL, so every
// BulkDataURI is absolute and honours PublicBaseURL and X-Forwarded-*. The
// ETag covers the entries' identities and digests, the public base URL and
// the media type; If-None-Match answers 304 without a body (and without an
// audit event, since no patient data is sent). The body is gzipped when the
// client accepts it.
func (s *Server) serveMetadata(c *gin.Context, entries []gateway.MetadataEntry, read func(func(gateway.MetadataEntry, []byte) error) error) {
	accept := parseAccept(c.Request.Header.Values("Accept"))
	ch, ok := negotiate(accept, metadataOffers)
	if !ok {
		s.writeError(c, notAcceptable(accept, "metadata", metadataOffers))
		return
	}
	base := s.baseURL(c)
	etag := metadataETag(base, ch.mediaType, entries)
	h := c.Writer.Header()
	h.Set("ETag", etag)
	h.Set("Vary", "Accept, Accept-Encoding")
	h.Set("Cache-Control", "private, no-cache")
	if etagMatches(c.GetHeader("If-None-Match"), etag) {
		c.Status(http.StatusNotModified)
		return
	}
	if err := s.svc.Retrieve.AuditMetadataRead(c.Request.Context(), s.caller(c), entries); err != nil {
		s.writeError(c, err)
		return
	}
	if ch.multipart {
		s.writeMetadataXML(c, base, read)
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
	n := 0
	err := read(func(e gateway.MetadataEntry, prepared []byte) error {
		if n > 0 {
			bw.WriteByte(',')
		}
		n++
		buf = gateway.AppendPreparedMetadata(buf[:0], prepared, instanceURL(base, e.StudyInstanceUID, e.SeriesInstanceUID, e.SOPInstanceUID))
		_, err := bw.Write(buf)
		return err
	})
	if err != nil && !c.Writer.Written() {
		// Nothing has reached the client yet: answer with the error instead.
		h.Del("Content-Encoding")
		s.writeError(c, err)
		return
	}
	if err != nil {
		s.abortStream(c, n, err)
	}
	bw.WriteByte(']')
	err = bw.Flush()
	if gz != nil && err == nil {
		err = gz.Close()
	}
	if err != nil {
		s.abortStream(c, n, err)
	}
}

// instanceURL is the public URL of an instance under the DICOMweb base URL.
func instanceURL(base, study, series, sop string) string {
	return base + "/studies/" + study + "/series/" + series + "/instances/" + sop
}

// metadataETag is a weak validator (the body may be gzipped or not) over
// what the metadata depends on.
func metadataETag(base, mediaType string, entries []gateway.MetadataEntry) string {
	h := sha256.New()
	io.WriteString(h, base+"\x00"+mediaType+"\x00")
	for _, e := range entries {
		io.WriteString(h, e.SOPInstanceUID+"\x00")
		h.Write(e.Digest[:])
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

package dicomweb

import (
	"bufio"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// qidoLimits are the page sizes of QIDO-RS searches: a search without limit
// returns at most Default matches, and a larger limit is reduced to Max;
// either cut is announced in a Warning header.
var qidoLimits = gateway.QueryLimits{Default: 1000, Max: 10000}

// qidoRoutes lists the six QIDO-RS search resources (PS3.18 10.6).
func (s *Server) qidoRoutes(base string) []route {
	get, read := http.MethodGet, gateway.RoleRead
	return []route{
		{get, base + "/studies", read, s.handleSearch(gateway.LevelStudy)},
		{get, base + "/series", read, s.handleSearch(gateway.LevelSeries)},
		{get, base + "/instances", read, s.handleSearch(gateway.LevelInstance)},
		{get, base + "/studies/:study/series", read, s.handleSearch(gateway.LevelSeries)},
		{get, base + "/studies/:study/instances", read, s.handleSearch(gateway.LevelInstance)},
		{get, base + "/studies/:study/series/:series/instances", read, s.handleSearch(gateway.LevelInstance)},
	}
}

// handleSearch answers a QIDO-RS search at level with 200 and a JSON array
// (empty when nothing matches). Parameters it ignores and a page cut short
// are reported in Warning headers (PS3.18 8.3.4); malformed values get 400.
// The search is audited before any result is sent; if the audit log cannot
// take the event the answer is 503.
func (s *Server) handleSearch(level gateway.QueryLevel) gin.HandlerFunc {
	return func(c *gin.Context) {
		// The media type is settled first: an Accept naming nothing a
		// search can answer in (a bare application/dicom+xml, image/jpeg)
		// is 406 before any search or audit; no Accept means DICOM JSON.
		accept := parseAccept(c.Request.Header.Values("Accept"))
		form, ok := negotiate(accept, searchOffers)
		if !ok {
			s.writeError(c, notAcceptable(accept, "search results", searchOffers))
			return
		}
		// ParseQuery percent-decodes; raw UTF-8 (unencoded) is accepted as is.
		params, err := url.ParseQuery(c.Request.URL.RawQuery)
		if err != nil {
			s.writeError(c, fmt.Errorf("query string: %v: %w", err, gateway.ErrInvalid))
			return
		}
		q, err := gateway.ParseQuery(level, c.Param("study"), c.Param("series"), params, qidoLimits)
		if err != nil {
			s.writeError(c, err)
			return
		}
		keys := make([]string, 0, len(params))
		for k := range params {
			keys = append(keys, k)
		}
		res, err := s.svc.Query.Search(c.Request.Context(), s.caller(c), q, keys)
		if err != nil {
			s.writeError(c, err)
			return
		}
		base := s.baseURL(c)
		agent := warnAgent(base)
		for _, w := range q.Warnings {
			c.Writer.Header().Add("Warning", warningFrom(agent, w))
		}
		if res.More {
			c.Writer.Header().Add("Warning", warningFrom(agent, remainingText(res)))
		}
		var warned []string // one Warning per study, whatever the level
		for _, d := range res.Items {
			study := d.String(dicomcodec.TagStudyInstanceUID)
			if _, flagged := gateway.IdentityConflicts(d); flagged && !slices.Contains(warned, study) {
				warned = append(warned, study)
				c.Writer.Header().Add("Warning", warningFrom(agent, "study "+study+" holds instances of more than one patient identity (IDENTITY CONFLICT in 00091001)"))
			}
		}
		if form.multipart {
			s.writeSearchXML(c, level, res.Items)
			return
		}
		c.Header("Content-Type", "application/dicom+json")
		c.Status(http.StatusOK)
		bw := bufio.NewWriterSize(c.Writer, 64<<10)
		buf := make([]byte, 0, 8<<10)
		bw.WriteByte('[')
		for i, d := range res.Items {
			if i > 0 {
				bw.WriteByte(',')
			}
			d, prefix := withRetrieveURL(d, level, base)
			buf = dicomcodec.AppendDatasetJSON(buf[:0], d, prefix)
			bw.Write(buf)
		}
		bw.WriteByte(']')
		if err := bw.Flush(); err != nil {
			s.Logger.WarnContext(c.Request.Context(), "qido response not sent", gateway.LogKeyError, err.Error())
		}
	}
}

// warning formats a Warning header value (RFC 7234 5.5; code 299, as
// PS3.18 8.3.4 uses) with the pseudonym "gateway" as its agent.
func warning(text string) string {
	return warningFrom("gateway", text)
}

// warningFrom formats a Warning header value whose warn-agent is agent:
// the service's host[:port] (PS3.18 8.3.4.4.1 writes it {+SERVICE}), or a
// pseudonym when there is no request.
func warningFrom(agent, text string) string {
	return "299 " + agent + ` "` + strings.ReplaceAll(text, `"`, `'`) + `"`
}

// warnAgent is the host[:port] of the DICOMweb base URL base, the
// warn-agent of the Warning headers QIDO-RS sends; "gateway" if base has
// none.
func warnAgent(base string) string {
	if u, err := url.Parse(base); err == nil && u.Host != "" {
		return u.Host
	}
	return "gateway"
}

// remainingText is the PS3.18 8.3.4.4.1 text for a page cut by limit.
// The count is bounded (gateway.MaxCountedRemaining): past the bound it
// says "at least N".
func remainingText(res *gateway.SearchResult) string {
	n := strconv.Itoa(res.Remaining)
	if res.RemainingAtLeast {
		n = "at least " + n
	}
	return "There are " + n + " additional results that can be requested"
}

// withRetrieveURL returns d with RetrieveURL (0008,1190) for the item's
// level, and the prefix that makes relative BulkDataURIs absolute (the
// instance's URL; instance-level items are the only ones that carry them).
func withRetrieveURL(d dicomcodec.Dataset, level gateway.QueryLevel, base string) (dicomcodec.Dataset, string) {
	study, series, sop := d.String(dicomcodec.TagStudyInstanceUID), d.String(dicomcodec.TagSeriesInstanceUID), d.String(dicomcodec.TagSOPInstanceUID)
	u := base + "/studies/" + study
	prefix := ""
	if level >= gateway.LevelSeries {
		u += "/series/" + series
	}
	if level == gateway.LevelInstance {
		u += "/instances/" + sop
		prefix = u + "/"
	}
	out := make(dicomcodec.Dataset, len(d)+1)
	for t, a := range d {
		out[t] = a
	}
	out[gateway.TagRetrieveURL] = dicomcodec.Attribute{VR: "UR", Value: []any{u}}
	return out, prefix
}

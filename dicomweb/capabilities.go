package dicomweb

import (
	"encoding/xml"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/gateway"
)

// mediaWADL is the media type of a Capabilities Description (PS3.18 8.9,
// Annex H): a WADL document. The standard defines no JSON form of it.
const mediaWADL = "application/vnd.sun.wadl+xml"

// capabilitiesOffers: WADL, also under application/xml for generic clients.
var capabilitiesOffers = []offer{{mediaType: mediaWADL}, {mediaType: "application/xml"}}

// transaction names the PS3.18 transaction a DICOMweb route serves: the
// WADL method id and the README's conformance table use it. Every route
// under /dicomweb has one (TestEveryDICOMwebRouteNamesItsTransaction).
type transaction struct {
	id      string // e.g. "SearchForStudies"
	section string // where PS3.18 defines it; "" when it does not
	// produces are the response media types the route can answer with,
	// written as a client's Accept value. The conformance test sends each
	// and fails if it is not served, or if a media type PS3.18 defines for
	// the transaction is served but missing here.
	produces []string
	// consumes are the request media types (STOW-RS).
	consumes []string
}

// Media types as a client asks for them.
const (
	acceptMultipartDICOM = `multipart/related; type="application/dicom"`
	acceptMultipartOctet = `multipart/related; type="application/octet-stream"`
	acceptMultipartXML   = `multipart/related; type="application/dicom+xml"`
)

var (
	searchTransaction = func(id string) transaction {
		return transaction{id: id, section: "10.6", produces: []string{mediaDICOMJSON, acceptMultipartXML}}
	}
	storeTransaction = transaction{id: "StoreInstances", section: "10.5",
		produces: []string{mediaDICOMJSON, mediaDICOMXML}, consumes: []string{acceptMultipartDICOM}}
	metadataTransaction = func(level string) transaction {
		return transaction{id: "Retrieve" + level + "Metadata", section: "10.4", produces: []string{mediaDICOMJSON, acceptMultipartXML, mediaJSON}}
	}
	renderedTransaction = func(id string) transaction {
		return transaction{id: id, section: "10.4", produces: []string{mediaJPEG, mediaPNG}}
	}
	bulkTransaction = func(id string) transaction {
		return transaction{id: id, section: "10.4", produces: []string{acceptMultipartOctet, mediaOctetStream}}
	}
)

// transactions maps "METHOD path" (path relative to the DICOMweb root, in
// the route table's syntax) to the transaction it serves.
var transactions = map[string]transaction{
	"POST /studies":        storeTransaction,
	"POST /studies/:study": storeTransaction,

	"GET /studies":                                 searchTransaction("SearchForStudies"),
	"GET /series":                                  searchTransaction("SearchForSeries"),
	"GET /instances":                               searchTransaction("SearchForInstances"),
	"GET /studies/:study/series":                   searchTransaction("SearchForSeries"),
	"GET /studies/:study/instances":                searchTransaction("SearchForInstances"),
	"GET /studies/:study/series/:series/instances": searchTransaction("SearchForInstances"),
	"GET /studies/:study":                          {id: "RetrieveStudy", section: "10.4", produces: []string{acceptMultipartDICOM}},
	"GET /studies/:study/series/:series":           {id: "RetrieveSeries", section: "10.4", produces: []string{acceptMultipartDICOM}},
	"GET /studies/:study/series/:series/instances/:instance": {id: "RetrieveInstance", section: "10.4",
		produces: []string{acceptMultipartDICOM, mediaDICOM}},
	"GET /studies/:study/metadata":                                                    metadataTransaction("Study"),
	"GET /studies/:study/series/:series/metadata":                                     metadataTransaction("Series"),
	"GET /studies/:study/series/:series/instances/:instance/metadata":                 metadataTransaction("Instance"),
	"GET /studies/:study/series/:series/instances/:instance/frames/:frames":           bulkTransaction("RetrieveFrames"),
	"GET /studies/:study/series/:series/instances/:instance/frames/:frames/rendered":  renderedTransaction("RetrieveRenderedFrames"),
	"GET /studies/:study/series/:series/instances/:instance/frames/:frames/thumbnail": renderedTransaction("RetrieveFramesThumbnail"),
	"GET /studies/:study/series/:series/instances/:instance/rendered":                 renderedTransaction("RetrieveRenderedInstance"),
	"GET /studies/:study/series/:series/instances/:instance/thumbnail":                renderedTransaction("RetrieveInstanceThumbnail"),
	"GET /studies/:study/series/:series/instances/:instance/bulkdata/*path":           bulkTransaction("RetrieveBulkdata"),
	"GET /wado": {id: "RetrieveWADOURI", section: "9", produces: []string{mediaDICOM, mediaJPEG, mediaPNG}},

	// Not PS3.18 transactions: the delete dcm4chee and Orthanc also offer,
	// answered with a JSON summary.
	"DELETE /studies/:study":                                    {id: "DeleteStudy", produces: []string{mediaJSON}},
	"DELETE /studies/:study/series/:series":                     {id: "DeleteSeries", produces: []string{mediaJSON}},
	"DELETE /studies/:study/series/:series/instances/:instance": {id: "DeleteInstance", produces: []string{mediaJSON}},

	"OPTIONS": {id: "RetrieveCapabilities", section: "8.9", produces: []string{mediaWADL}},
}

// transactionOf returns the transaction of the route method path under the
// DICOMweb root base; ok is false for a route the table does not name.
func transactionOf(base, method, path string) (transaction, bool) {
	if method == http.MethodOptions {
		t, ok := transactions[method]
		return t, ok
	}
	t, ok := transactions[method+" "+strings.TrimPrefix(path, base)]
	return t, ok
}

// capabilityRoutes answers OPTIONS on the DICOMweb root and on every
// DICOMweb resource of served (the route table) with a Capabilities
// Description (PS3.18 8.9). It needs role read, as searching does: the
// description holds no patient data, but it tells an anonymous caller
// nothing either. A CORS preflight (OPTIONS with Origin and
// Access-Control-Request-Method) never gets here: cors answers it first.
func (s *Server) capabilityRoutes(base string, served []route) []route {
	var dicomweb []route
	paths := []string{base}
	for _, r := range served {
		if r.path == base || strings.HasPrefix(r.path, base+"/") {
			dicomweb = append(dicomweb, r)
			if !slices.Contains(paths, r.path) {
				paths = append(paths, r.path)
			}
		}
	}
	out := make([]route, 0, len(paths))
	var described []route // the DICOMweb routes and these OPTIONS ones
	for _, p := range paths {
		out = append(out, route{http.MethodOptions, p, gateway.RoleRead, func(c *gin.Context) { s.handleCapabilities(c, base, described) }})
	}
	described = append(dicomweb, out...)
	return out
}

// handleCapabilities answers with the WADL of the resource the request
// names and every resource below it (all of them for the root), and an
// Allow header with the resource's own methods.
func (s *Server) handleCapabilities(c *gin.Context, base string, served []route) {
	// The description does not depend on the UIDs in the path, but a
	// malformed one is still a bad request, as on every other method.
	for _, p := range c.Params {
		if p.Key == "study" || p.Key == "series" || p.Key == "instance" {
			if err := gateway.ValidateUID(p.Value); err != nil {
				s.writeError(c, fmt.Errorf("%s in the URL: %w", p.Key, err))
				return
			}
		}
	}
	accept := parseAccept(c.Request.Header.Values("Accept"))
	ch := choice{offer: capabilitiesOffers[0]}
	if accept != nil {
		var ok bool
		if ch, ok = negotiate(accept, capabilitiesOffers); !ok {
			s.writeError(c, notAcceptable(accept, "capabilities", capabilitiesOffers))
			return
		}
	}
	target := c.FullPath()
	allow := []string{http.MethodOptions}
	for _, r := range served {
		if r.path == target && !slices.Contains(allow, r.method) {
			allow = append(allow, r.method)
		}
	}
	slices.Sort(allow)
	doc := buildWADL(s.baseURL(c), base, target, served)
	c.Header("Allow", strings.Join(allow, ", "))
	c.Header("Content-Type", ch.mediaType+"; charset=utf-8")
	c.Status(http.StatusOK)
	c.Writer.WriteString(xml.Header)
	enc := xml.NewEncoder(c.Writer)
	enc.Indent("", "  ")
	if err := enc.Encode(doc); err != nil {
		s.Logger.WarnContext(c.Request.Context(), "capabilities not sent", gateway.LogKeyError, err.Error())
	}
}

// WADL (https://www.w3.org/submissions/wadl/): the subset a Capabilities
// Description uses.
type wadlApplication struct {
	XMLName   xml.Name      `xml:"http://wadl.dev.java.net/2009/02 application"`
	Doc       *wadlDoc      `xml:"doc,omitempty"`
	Resources wadlResources `xml:"resources"`
}

type wadlDoc struct {
	Title string `xml:"title,attr,omitempty"`
	Text  string `xml:",chardata"`
}

type wadlResources struct {
	Base      string         `xml:"base,attr"`
	Resources []wadlResource `xml:"resource"`
}

type wadlResource struct {
	Path    string       `xml:"path,attr"`
	Params  []wadlParam  `xml:"param"`
	Methods []wadlMethod `xml:"method"`
}

type wadlMethod struct {
	Name      string         `xml:"name,attr"`
	ID        string         `xml:"id,attr,omitempty"`
	Doc       *wadlDoc       `xml:"doc,omitempty"`
	Request   *wadlRequest   `xml:"request,omitempty"`
	Responses []wadlResponse `xml:"response"`
}

type wadlRequest struct {
	Representations []wadlRepresentation `xml:"representation"`
}

type wadlResponse struct {
	Status          string               `xml:"status,attr,omitempty"`
	Representations []wadlRepresentation `xml:"representation"`
}

type wadlRepresentation struct {
	MediaType string `xml:"mediaType,attr"`
}

type wadlParam struct {
	Name  string `xml:"name,attr"`
	Style string `xml:"style,attr"`
}

// buildWADL describes the routes of served at target (a route path, or the
// root base) and below it, relative to the public DICOMweb URL publicBase.
// Route parameters (":study", "*path") become WADL template parameters
// ("{study}", "{path}").
func buildWADL(publicBase, base, target string, served []route) wadlApplication {
	app := wadlApplication{
		Doc:       &wadlDoc{Title: "DICOMweb capabilities (PS3.18 8.9)", Text: "Generated from the gateway's route table. Each method's doc names the role its caller needs."},
		Resources: wadlResources{Base: publicBase + "/"},
	}
	byPath := map[string]int{}
	for _, r := range served {
		if r.path != target && !strings.HasPrefix(r.path, strings.TrimSuffix(target, "/")+"/") {
			continue
		}
		rel, params := wadlPath(strings.TrimPrefix(strings.TrimPrefix(r.path, base), "/"))
		i, ok := byPath[rel]
		if !ok {
			i = len(app.Resources.Resources)
			byPath[rel] = i
			res := wadlResource{Path: rel}
			for _, p := range params {
				res.Params = append(res.Params, wadlParam{Name: p, Style: "template"})
			}
			app.Resources.Resources = append(app.Resources.Resources, res)
		}
		tx, _ := transactionOf(base, r.method, r.path)
		m := wadlMethod{Name: r.method, ID: tx.id}
		doc := "role: " + string(r.role)
		if tx.section != "" {
			doc += "; PS3.18 " + tx.section
		}
		m.Doc = &wadlDoc{Text: doc}
		if len(tx.consumes) > 0 {
			m.Request = &wadlRequest{}
			for _, mt := range tx.consumes {
				m.Request.Representations = append(m.Request.Representations, wadlRepresentation{MediaType: mt})
			}
		}
		resp := wadlResponse{Status: "200"}
		for _, mt := range tx.produces {
			resp.Representations = append(resp.Representations, wadlRepresentation{MediaType: mt})
		}
		m.Responses = append(m.Responses, resp)
		res := &app.Resources.Resources[i]
		res.Methods = append(res.Methods, m)
	}
	return app
}

// wadlPath turns a route path into a WADL path template and its parameter
// names: "studies/:study" → "studies/{study}", ["study"].
func wadlPath(p string) (string, []string) {
	segs := strings.Split(p, "/")
	var params []string
	for i, s := range segs {
		if s != "" && (s[0] == ':' || s[0] == '*') {
			params = append(params, s[1:])
			segs[i] = "{" + s[1:] + "}"
		}
	}
	return strings.Join(segs, "/"), params
}

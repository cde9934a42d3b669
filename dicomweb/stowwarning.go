package dicomweb

import (
	"fmt"
	"strings"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// Instances stored with a warning: their UIDs break PS3.5 9.1 in the one
// way ingest tolerates (gateway.UIDDeviation: a leading zero in a
// component, as some vendors write). PS3.18 10.5.3 answers such a request
// with 202 and, in the Referenced SOP Sequence item, a Warning Reason
// (PS3.18 I.2.1). None of 0xB000 (coercion: nothing is changed here),
// 0xB006 (nothing is discarded) fits but 0xB007, "Data Set does not match
// SOP Class": the instance does not conform, and is kept as it is.

// addWarningReason adds the Warning Reason to the Referenced SOP Sequence
// item of a stored instance that carries a warning.
func addWarningReason(item dicomcodec.Dataset, r *gateway.InstanceRecord) {
	if len(r.UIDDeviations()) > 0 {
		item[tagWarningReason] = dicomcodec.Attribute{VR: "US", Value: []any{int64(gateway.WarningDataSetMismatch)}}
	}
}

// stowWarning is the Warning header (RFC 9111 5.5 syntax, the 299 code
// PS3.18 uses) of a STOW-RS answer, "" when no stored instance carries a
// warning. The text names the first deviation: UIDs only, no patient data.
func (s *Server) stowWarning(stored []*gateway.InstanceRecord) string {
	var first string
	n := 0
	for _, r := range stored {
		if d := r.UIDDeviations(); len(d) > 0 {
			if n == 0 {
				first = d[0]
			}
			n++
		}
	}
	if n == 0 {
		return ""
	}
	agent := s.svc.Name
	if agent == "" || !validHost(agent) {
		agent = "gateway"
	}
	text := fmt.Sprintf("%d instance(s) stored with UIDs that break PS3.5 9.1 (first: %s); see Warning Reason (0008,1196)", n, first)
	return "299 " + agent + ` "` + strings.NewReplacer(`"`, "'", `\`, "/").Replace(text) + `"`
}

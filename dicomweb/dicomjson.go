package dicomweb

import (
	"encoding/json"

	"github.com/gin-gonic/gin"
)

// writeDICOMJSON answers with v (a gateway.Dataset or []gateway.Dataset) as
// application/dicom+json (PS3.18 F.2). The encoder marshals v into its own
// pooled buffer and writes it in one call, so no buffer of ours is needed
// (a 32 KiB one per response was a tenth of a small STOW-RS request's
// allocation).
func writeDICOMJSON(c *gin.Context, status int, v any) error {
	c.Header("Content-Type", mediaDICOMJSON)
	c.Status(status)
	enc := json.NewEncoder(c.Writer)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

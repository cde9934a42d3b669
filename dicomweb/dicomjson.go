package dicomweb

import (
	"bufio"
	"encoding/json"

	"github.com/gin-gonic/gin"
)

// writeDICOMJSON answers with v (a gateway.Dataset or []gateway.Dataset) as
// application/dicom+json (PS3.18 F.2), streamed through a buffer rather than
// marshalled whole.
func writeDICOMJSON(c *gin.Context, status int, v any) error {
	c.Header("Content-Type", mediaDICOMJSON)
	c.Status(status)
	bw := bufio.NewWriterSize(c.Writer, 32<<10)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return err
	}
	return bw.Flush()
}

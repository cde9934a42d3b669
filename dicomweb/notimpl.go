package dicomweb

import (
	"net/http"

	"github.com/gin-gonic/gin"
)

// notImplemented answers 501 for a resource whose issue has not landed yet.
func notImplemented(c *gin.Context) {
	c.JSON(http.StatusNotImplemented, gin.H{"error": "not implemented yet"})
}

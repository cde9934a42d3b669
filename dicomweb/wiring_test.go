package dicomweb_test

import (
	"os"
	"testing"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/gateway"
)

// testWiring is what a test varies of a gateway's HTTP side: the server's
// Config and the backends its services run on. server builds it with the
// constructors gateway serve uses (gateway.NewServices, dicomweb.New), so
// that no test wires a server by hand.
type testWiring struct {
	dicomweb.Config
	gateway.ServiceDeps
}

// server builds the server w describes.
func (w testWiring) server() *dicomweb.Server {
	if w.ServiceDeps.Logger == nil {
		w.ServiceDeps.Logger = w.Config.Logger
	}
	w.Services = gateway.NewServices(w.ServiceDeps)
	return dicomweb.New(w.Config)
}

// TestMain runs the package's tests with gin in release mode, as gateway's
// main does: debug mode lists every route of every test server on stdout.
func TestMain(m *testing.M) {
	gin.SetMode(gin.ReleaseMode)
	os.Exit(m.Run())
}

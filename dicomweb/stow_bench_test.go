package dicomweb_test

import (
	"bytes"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
)

// BenchmarkStowManyParts measures one STOW-RS request of 256 instances on
// the embedded backends: the case where each part's sync and index write
// overlap the reading of the next parts (16 in flight).
func BenchmarkStowManyParts(b *testing.B) {
	const parts = 256
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for i := range parts {
		w, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/dicom"}})
		if err != nil {
			b.Fatal(err)
		}
		w.Write(makeInstance(testStudy, testSeries, testSOP(i), 64, 64, byte(i)))
	}
	mw.Close()
	ct := `multipart/related; type="application/dicom"; boundary=` + mw.Boundary()
	for b.Loop() {
		b.StopTimer()
		be := backendtest.Open(b, backendtest.Embedded, backendtest.Options{})
		w := testWiring{ServiceDeps: gateway.ServiceDeps{Name: "bench", Blobs: be.Blobs, Index: be.Index, Auditor: be.AuditLog,
			Ingester: &gateway.Ingester{Blobs: be.Blobs, Index: be.Index, Auditor: be.AuditLog}}}
		srv := httptest.NewServer(w.server().Handler())
		b.StartTimer()
		resp, err := http.Post(srv.URL+"/dicomweb/studies", ct, bytes.NewReader(body.Bytes()))
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		b.StopTimer()
		if resp.StatusCode != http.StatusOK {
			b.Fatal(fmt.Errorf("STOW status %d", resp.StatusCode))
		}
		srv.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(parts*b.N)/b.Elapsed().Seconds(), "instances/s")
}

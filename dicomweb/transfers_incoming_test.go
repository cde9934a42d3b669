package dicomweb

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/bolt"
)

// TestRecordIncoming: the hook the STOW-RS handler calls per instance
// records an incoming transfer from the sender's headers, with refusal
// reasons in words, and ignores requests without X-Transfer-ID.
func TestRecordIncoming(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	q, err := bolt.NewQueue(db, gateway.QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Name: "surrey", Transfers: &gateway.Transfers{Name: "surrey", Queue: q}}
	s.Handler()
	request := func(id string) *gin.Context {
		c, _ := gin.CreateTestContext(httptest.NewRecorder())
		c.Request = httptest.NewRequestWithContext(t.Context(), http.MethodPost, "/dicomweb/studies", nil)
		if id != "" {
			c.Request.Header.Set(HeaderTransferID, id)
			c.Request.Header.Set(HeaderSourceCentre, "hampshire")
			c.Request.Header.Set(HeaderTransferInstances, "2")
		}
		return c
	}
	refusal := &gateway.InstanceError{SOPInstanceUID: "1.2.3.2", Reason: gateway.ReasonDuplicateRejected, Err: errors.New("other bytes")}
	s.recordIncoming(request("tr-abc"), []gateway.IncomingInstance{
		incomingOf("1.2.3", "1.2.3.1", 100, nil),
		incomingOf("1.2.3", "1.2.3.2", 0, refusal),
		incomingOf("1.2.3", "", 0, refusal), // a part without a SOP Instance UID is not recorded
	})
	s.recordIncoming(request(""), []gateway.IncomingInstance{incomingOf("1.2.3", "1.2.3.3", 100, nil)})

	got, err := s.Transfers.List(t.Context(), gateway.TransferFilter{Direction: gateway.DirectionIncoming})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("%d incoming transfers, want 1", len(got))
	}
	in := got[0]
	if in.ID != "tr-abc" || in.Source != "hampshire" || in.Destination != "surrey" || in.InstancesTotal != 2 || in.InstancesSent != 1 || in.InstancesFailed != 1 || in.State != gateway.StateRunning {
		t.Fatalf("incoming = %+v", in)
	}
	full, err := s.Transfers.Get(t.Context(), "tr-abc")
	if err != nil {
		t.Fatal(err)
	}
	if len(full.Instances) != 2 || full.Instances[1].State != gateway.InstanceFailed || full.Instances[1].Reason != "a different instance with this SOP Instance UID is already stored (0x0111): other bytes" {
		t.Fatalf("instances = %+v", full.Instances)
	}
	s.recordIncoming(request("tr-abc"), []gateway.IncomingInstance{incomingOf("1.2.3", "1.2.3.2", 100, nil)})
	full, _ = s.Transfers.Get(t.Context(), "tr-abc")
	if full.State != gateway.StateCompleted || full.InstancesSent != 2 {
		t.Fatalf("after the resend: %+v", full)
	}
}

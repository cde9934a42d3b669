package dicomweb_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
)

// TestStowRecordsIncomingTransfer: a STOW-RS request that carries a peer's
// X-Transfer-ID is recorded as an incoming transfer, with refusal reasons
// in words; a part without a SOP Instance UID is not recorded, a request
// without the header is ignored, and the resend of the refused instance
// completes the transfer.
func TestStowRecordsIncomingTransfer(t *testing.T) {
	b := backendtest.Open(t, backendtest.Embedded, backendtest.Options{})
	tr := &gateway.Transfers{Name: "surrey", Queue: b.Queue, Index: b.Index}
	w := testWiring{ServiceDeps: gateway.ServiceDeps{Name: "surrey", Blobs: b.Blobs, Index: b.Index,
		Ingester: &gateway.Ingester{Blobs: b.Blobs, Index: b.Index}, Transfers: tr}}
	srv := httptest.NewServer(w.server().Handler())
	t.Cleanup(srv.Close)
	s := &stowServer{srv: srv, blobs: b.Blobs, index: b.Index}
	stow := func(transferID string, parts ...stowPart) stowResult {
		t.Helper()
		body, boundary := multipartBody(t, parts...)
		var header []string
		if transferID != "" {
			header = []string{dicomweb.HeaderTransferID, transferID, dicomweb.HeaderSourceCentre, "hampshire", dicomweb.HeaderTransferInstances, "2"}
		}
		return s.post(t, "/dicomweb/studies", `multipart/related; type="application/dicom"; boundary=`+boundary, body, header...)
	}
	first := makeInstance(testStudy, testSeries, testSOP(1), 8, 8, 1)
	second := makeInstance(testStudy, testSeries, testSOP(2), 8, 8, 1)
	otherBytes := makeInstance(testStudy, testSeries, testSOP(2), 8, 8, 2)

	if res := stow("", dicomPart(second)); res.status != http.StatusOK {
		t.Fatalf("STOW without X-Transfer-ID: %d %s", res.status, res.body)
	}
	res := stow("tr-abc", dicomPart(first), dicomPart(otherBytes), stowPart{contentType: "text/plain", data: []byte("hello")})
	if res.status != http.StatusAccepted {
		t.Fatalf("STOW of the transfer: %d %s", res.status, res.body)
	}
	got, err := tr.List(t.Context(), gateway.TransferFilter{Direction: gateway.DirectionIncoming})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("%d incoming transfers, want 1 (a request without X-Transfer-ID is not one)", len(got))
	}
	in := got[0]
	if in.ID != "tr-abc" || in.Source != "hampshire" || in.Destination != "surrey" || in.InstancesTotal != 2 || in.InstancesSent != 1 || in.InstancesFailed != 1 || in.State != gateway.StateRunning {
		t.Fatalf("incoming = %+v", in)
	}
	full, err := tr.Get(t.Context(), "tr-abc")
	if err != nil {
		t.Fatal(err)
	}
	const duplicate = "a different instance with this SOP Instance UID is already stored (0x0111): "
	if len(full.Instances) != 2 || full.Instances[1].State != gateway.InstanceFailed || !strings.HasPrefix(full.Instances[1].Reason, duplicate) {
		t.Fatalf("instances = %+v, want the second failed with a reason starting %q", full.Instances, duplicate)
	}
	if res := stow("tr-abc", dicomPart(second)); res.status != http.StatusOK {
		t.Fatalf("resend: %d %s", res.status, res.body)
	}
	full, err = tr.Get(t.Context(), "tr-abc")
	if err != nil {
		t.Fatal(err)
	}
	if full.State != gateway.StateCompleted || full.InstancesSent != 2 {
		t.Fatalf("after the resend: %+v", full)
	}
}

// recordFails is a queue whose RecordIncoming fails while down is set: a
// state write lost while the index write before it landed, which a real
// server cannot be made to do on cue.
type recordFails struct {
	gateway.Queue
	down bool
}

func (q *recordFails) RecordIncoming(ctx context.Context, batch []gateway.IncomingInstance) (*gateway.Transfer, error) {
	if q.down {
		return nil, errors.New("connection reset by peer")
	}
	return q.Queue.RecordIncoming(ctx, batch)
}

// TestStowFailsWhenTheIncomingRecordIsLost: a transfer's request whose
// incoming record cannot be written is answered 503 with Retry-After,
// although its instances are stored; the sender's retry records them and
// completes the incoming transfer. Before, the request was answered 200 and
// the receiver's record of the transfer stayed behind for good.
func TestStowFailsWhenTheIncomingRecordIsLost(t *testing.T) {
	b := backendtest.Open(t, backendtest.Embedded, backendtest.Options{})
	q := &recordFails{Queue: b.Queue, down: true}
	tr := &gateway.Transfers{Name: "surrey", Queue: q, Index: b.Index}
	w := testWiring{ServiceDeps: gateway.ServiceDeps{Name: "surrey", Blobs: b.Blobs, Index: b.Index,
		Ingester: &gateway.Ingester{Blobs: b.Blobs, Index: b.Index}, Transfers: tr}}
	srv := httptest.NewServer(w.server().Handler())
	t.Cleanup(srv.Close)
	s := &stowServer{srv: srv, blobs: b.Blobs, index: b.Index}
	inst := makeInstance(testStudy, testSeries, testSOP(1), 8, 8, 1)
	send := func() stowResult {
		t.Helper()
		body, boundary := multipartBody(t, dicomPart(inst))
		return s.post(t, "/dicomweb/studies", `multipart/related; type="application/dicom"; boundary=`+boundary, body,
			dicomweb.HeaderTransferID, "tr-lost", dicomweb.HeaderSourceCentre, "hampshire", dicomweb.HeaderTransferInstances, "1")
	}

	if res := send(); res.status != http.StatusServiceUnavailable || res.header.Get("Retry-After") == "" {
		t.Fatalf("STOW with the incoming record lost: %d (Retry-After %q) %s; want 503 with Retry-After", res.status, res.header.Get("Retry-After"), res.body)
	}
	if _, err := b.Index.GetInstance(t.Context(), testSOP(1)); err != nil {
		t.Fatalf("the instance is not stored after the lost record: %v", err)
	}
	q.down = false
	if res := send(); res.status != http.StatusOK {
		t.Fatalf("the sender's retry: %d %s", res.status, res.body)
	}
	got, err := tr.Get(t.Context(), "tr-lost")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != gateway.StateCompleted || got.InstancesSent != 1 {
		t.Fatalf("incoming transfer after the retry: %+v", got)
	}
}

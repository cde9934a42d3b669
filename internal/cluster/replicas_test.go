package cluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// TestTwoReplicasShareState: two processes of one centre on one Redis and
// one MinIO (same key prefix, same bucket), as two pods behind one service.
// Every instance of a study is sent twice to each, by four concurrent
// senders in opposite orders, as modalities retrying might. Both then hold exactly the study, every
// instance once and byte-identical; both answer the same series metadata;
// the one audit chain verifies from both and holds every store; with one
// replica killed the other still serves everything.
func TestTwoReplicasShareState(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	b := startBackends(t, ctx, "redis+minio")
	replica := func(id string) *Gateway {
		g, err := NewGateway(GatewayConfig{Bin: gatewayBin, Name: "hampshire", Dir: filepath.Join(t.TempDir(), id), Args: b.args("hampshire")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = g.Kill()
			if t.Failed() {
				t.Logf("replica %s log (tail):\n%s", id, g.LogTail(6000))
			}
		})
		mustStart(t, ctx, g)
		return g
	}
	r1, r2 := replica("r1"), replica("r2")
	study := synth.Study(synth.StudySpec{Seed: 4242, Series: 4, InstancesPerSeries: 8, Rows: 64, Columns: 64})

	// Four senders: each replica gets the study in order and in reverse,
	// so the same instance often arrives at both replicas at the same time.
	const senders = 4
	var wg sync.WaitGroup
	errs := make(chan error, senders*len(study))
	for i := range senders {
		g := []*Gateway{r1, r2}[i%2]
		order := slices.Clone(study)
		if i >= 2 {
			slices.Reverse(order)
		}
		wg.Go(func() {
			for _, in := range order {
				if err := StoreAll(ctx, g.Client(), []synth.Instance{in}); err != nil {
					errs <- fmt.Errorf("sender %d to %s: %w", i, g.Dir, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	checkArrived(t, ctx, r1, study)
	checkArrived(t, ctx, r2, study)

	metadata := func(g *Gateway) []byte {
		u := g.URL() + "/dicomweb/studies/" + study[0].StudyInstanceUID + "/series/" + study[0].SeriesInstanceUID + "/metadata"
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Accept", "application/dicom+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %v", u, resp.StatusCode, err)
		}
		// BulkDataURIs are under the URL each replica was asked at.
		return bytes.ReplaceAll(body, []byte(g.URL()), []byte("https://pacs.example"))
	}
	if m1, m2 := metadata(r1), metadata(r2); !bytes.Equal(m1, m2) || !bytes.Contains(m1, []byte(study[0].SOPInstanceUID)) {
		t.Error("the replicas answer different series metadata")
	}

	check := func(g *Gateway) *gateway.VerifyResult {
		v, err := g.Client().AuditVerify(ctx)
		if err != nil {
			t.Fatalf("audit verify at %s: %v", g.Name, err)
		}
		return v
	}
	v1, v2 := check(r1), check(r2)
	// r1's verify is itself audited (an audit log read): one more record.
	if !v1.OK || !v2.OK || v2.Records != v1.Records+1 {
		t.Errorf("audit chain: replica 1 %+v, replica 2 %+v; want one chain that verifies from both", v1, v2)
	}
	// Each STOW request is one audit event.
	if v1.Records < int64(senders*len(study)) {
		t.Errorf("audit chain holds %d records, want at least the %d stores", v1.Records, senders*len(study))
	}

	if err := r1.Kill(); err != nil {
		t.Fatal(err)
	}
	checkArrived(t, ctx, r2, study)
}

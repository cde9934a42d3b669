package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// TestReceiverKilledKeepsAcknowledged: surrey is SIGKILLed in the middle of
// a batch while it receives a study, on each backend. Every instance surrey
// had acknowledged to hampshire before it died (the sender's progress says
// "sent") must be in surrey's storage after its restart, byte-identical,
// before anything is sent again (hampshire is stopped meanwhile); then
// hampshire is started again and the transfer completes with the whole study
// at surrey. The receiver now syncs instances of one request concurrently
// and acknowledges them together, so this is the check that an answer is
// never sent before everything it acknowledges is durable and indexed.
func TestReceiverKilledKeepsAcknowledged(t *testing.T) {
	for _, backend := range []string{"embedded", "redis+minio"} {
		t.Run(backend, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			b := startBackends(t, ctx, backend)
			surrey := newGateway(t, b, "surrey", "")
			mustStart(t, ctx, surrey)
			link, err := StartProxy(surrey.Addr(), 8<<20)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { link.Close() })
			// Requests of ~2 MiB, 4 at once: several batches answered
			// before the kill, others cut in the middle.
			config := fmt.Sprintf("peers:\n  - name: surrey\n    url: http://%s/dicomweb\n    gateway: true\n    max_parallel: 4\n    max_request_bytes: %d\n", link.Addr(), 2<<20)
			hampshire := newGateway(t, b, "hampshire", config, "--transfer-lease", "3s")
			mustStart(t, ctx, hampshire)

			study := synth.Study(synth.StudySpec{Seed: 6104, Series: 2, InstancesPerSeries: 24, Rows: 512, Columns: 512})
			storeStudy(t, ctx, hampshire, study)
			tr, err := CreateTransfer(ctx, hampshire.Client(), study[0].StudyInstanceUID, "surrey")
			if err != nil {
				t.Fatal(err)
			}
			killed := false
			_, _ = waitTransfer(ctx, hampshire, tr.ID, time.Minute, func(x *gateway.Transfer) bool {
				if !killed && x.InstancesSent >= 4 && x.InstancesSent < len(study)-8 {
					killed = true
					if err := surrey.Kill(); err != nil {
						t.Error(err)
					}
				}
				return killed
			})
			if !killed {
				t.Fatal("transfer not interrupted: the link is too fast for the test")
			}
			// Stop the sender so that nothing is resent before the check.
			if err := hampshire.Kill(); err != nil {
				t.Fatal(err)
			}
			mustStart(t, ctx, hampshire) // its API tells what was acknowledged; the lease keeps the transfer for 3 s
			atKill, err := hampshire.Client().Transfer(ctx, tr.ID)
			if err != nil {
				t.Fatal(err)
			}
			if err := hampshire.Kill(); err != nil {
				t.Fatal(err)
			}
			var acknowledged []string
			for _, p := range atKill.Instances {
				if p.State == "sent" {
					acknowledged = append(acknowledged, p.SOPInstanceUID)
				}
			}
			if len(acknowledged) == 0 || len(acknowledged) == len(study) {
				t.Fatalf("%d of %d instances acknowledged at the kill: the test needs some, not all", len(acknowledged), len(study))
			}
			t.Logf("SIGKILLed surrey with %d of %d instances acknowledged", len(acknowledged), len(study))

			mustStart(t, ctx, surrey)
			want := map[string]string{}
			for _, in := range study {
				want[in.SOPInstanceUID] = SHA256(in)
			}
			got, err := surrey.Client().StudySHA256(ctx, study[0].StudyInstanceUID, true)
			if err != nil {
				t.Fatal(err)
			}
			for _, sop := range acknowledged {
				switch sum, ok := got[sop]; {
				case !ok:
					t.Errorf("instance %s was acknowledged, then lost by the receiver's SIGKILL", sop)
				case sum != want[sop]:
					t.Errorf("instance %s was acknowledged, and differs after the receiver's SIGKILL: sha256 %s, sent %s", sop, sum, want[sop])
				}
			}
			t.Logf("after the restart surrey holds %d instances (%d acknowledged)", len(got), len(acknowledged))

			mustStart(t, ctx, hampshire)
			done, err := waitTransfer(ctx, hampshire, tr.ID, 90*time.Second, nil)
			if err != nil {
				t.Fatal(err)
			}
			if done.State != "completed" {
				t.Fatalf("transfer %s: %q", done.State, done.LastError)
			}
			checkArrived(t, ctx, surrey, study)
		})
	}
}

package dicomweb_test

import (
	"bytes"
	"net/http"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/orthanctest"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// TestOrthancSendsToGateway has Orthanc (Debian orthanc-dicomweb) push a
// study to the gateway with its own DICOMweb client, as a PACS in the
// field would: it sends a 73-character multipart boundary with chunked
// encoding, which the gateway once refused. Every instance must arrive byte
// for byte, on both backend families.
func TestOrthancSendsToGateway(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			gw := newCentre(t, "hampshire", backend)
			orthanc := orthanctest.Start(t, orthanctest.Options{Servers: map[string]string{"hampshire": gw.http.URL + "/dicomweb/"}})
			ins := synth.Study(synth.StudySpec{Seed: 901, Series: 2, InstancesPerSeries: 2})
			var ids []string
			for _, in := range ins {
				ids = append(ids, orthanc.Upload(t, encoded(t, in)))
			}
			var job map[string]any
			if status := orthanc.JSON(t, http.MethodPost, "/dicom-web/servers/hampshire/stow", map[string]any{"Resources": ids, "Synchronous": true}, &job); status != http.StatusOK {
				t.Fatalf("Orthanc's STOW-RS to the gateway: status %d (%v)", status, job)
			}
			assertArrived(t, gw, ins)
		})
	}
}

// TestTransferToOrthanc sends a study from the gateway to Orthanc as a
// plain DICOMweb peer (gateway: false) and checks that Orthanc holds every
// instance byte for byte, on both backend families.
func TestTransferToOrthanc(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			gw := newCentre(t, "hampshire", backend)
			orthanc := orthanctest.Start(t, orthanctest.Options{})
			gw.transfers.Peers = []gateway.Peer{{Name: "orthanc", URL: orthanc.DICOMweb, MaxParallel: 2, MaxRequestBytes: 20 << 10}}
			gw.start(t)
			ins := gw.store(t, synth.StudySpec{Seed: 902, Series: 2, InstancesPerSeries: 2})

			created := gw.create(t, ins[0].StudyInstanceUID, "orthanc", gateway.PriorityNormal)
			tr := gw.wait(t, created.ID, 30*time.Second)
			if tr.State != gateway.StateCompleted {
				t.Fatalf("state %s (%s), want completed", tr.State, tr.LastError)
			}
			if got, want := tr.InstancesSent, len(ins); got != want {
				t.Errorf("instances_sent=%d, want %d", got, want)
			}
			for _, in := range ins {
				got := orthanc.File(t, in.SOPInstanceUID)
				if got == nil {
					t.Errorf("%s not in Orthanc", in.SOPInstanceUID)
					continue
				}
				if !bytes.Equal(got, encoded(t, in)) {
					t.Errorf("%s in Orthanc differs from the original (%d bytes, want %d)", in.SOPInstanceUID, len(got), len(encoded(t, in)))
				}
			}
		})
	}
}

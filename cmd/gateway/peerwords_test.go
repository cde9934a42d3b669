package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/syncbuf"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// TestPeerWordsKeptOutOfTheLog: what a peer says when it refuses (an HTTP
// answer's body, a STOW-RS Error Comment) can name the patient. The
// transfer's last_error, which admins read through the API, keeps the
// peer's words; the application log, which goes to log collectors, has
// neither the words nor the name.
func TestPeerWordsKeptOutOfTheLog(t *testing.T) {
	const patient = "QUIXOTE^ALONSO"
	ins := synth.Study(synth.StudySpec{Seed: 8812, Series: 1, InstancesPerSeries: 2})
	var requests atomic.Int32
	peer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if requests.Add(1) == 1 {
			http.Error(w, "archive busy while filing "+patient+" (MRN 4417); try later", http.StatusServiceUnavailable)
			return
		}
		var failed []map[string]any
		for _, in := range ins {
			failed = append(failed, map[string]any{
				"00081150": map[string]any{"vr": "UI", "Value": []string{in.SOPClassUID}},
				"00081155": map[string]any{"vr": "UI", "Value": []string{in.SOPInstanceUID}},
				"00081197": map[string]any{"vr": "US", "Value": []int{int(gateway.ReasonCannotUnderstand)}},
				"00000902": map[string]any{"vr": "LO", "Value": []string{"patient " + patient + " does not match this study"}},
			})
		}
		w.Header().Set("Content-Type", "application/dicom+json")
		w.WriteHeader(http.StatusConflict)
		_ = json.NewEncoder(w).Encode(map[string]any{"00081198": map[string]any{"vr": "SQ", "Value": failed}})
	}))
	t.Cleanup(peer.Close)

	cfg := testConfig(t)
	cfg.File.Peers = []gateway.Peer{{Name: "surrey", URL: peer.URL + "/dicomweb"}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	var logs syncbuf.Buffer
	m := MustRunMain(t, cfg, &logs)
	base := "http://" + m.Addr
	stowOK(t, base+"/dicomweb", ins)
	tr := waitTransfer(t, base, createTransfer(t, base, ins[0].StudyInstanceUID, "surrey"))

	lastError := fmt.Sprint(tr["last_error"])
	if tr["state"] != "failed" || !strings.Contains(lastError, "«patient "+patient+" does not match this study»") {
		t.Fatalf("transfer %v: last_error must quote the peer's Error Comment", tr)
	}
	if got := requests.Load(); got < 2 {
		t.Fatalf("the peer saw %d requests, want the 503 and then the refusal", got)
	}
	out := logs.String()
	for _, want := range []string{"transfer attempt failed; will retry", "transfer failed", "withheld from the log"} {
		if !strings.Contains(out, want) {
			t.Errorf("the log lacks %q:\n%s", want, out)
		}
	}
	for _, leak := range []string{patient, "MRN 4417", "does not match this study"} {
		if strings.Contains(out, leak) {
			t.Errorf("the log holds the peer's words %q:\n%s", leak, out)
		}
	}
}

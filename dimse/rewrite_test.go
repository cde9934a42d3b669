package dimse

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// TestSenderRewriteToStoreSCP: with SendHeader.Rewrite and BlobKey set (a
// de-identified transfer), the C-STORE sender reads each instance's stored
// bytes, sends what Rewrite makes of them under the record's (mapped) SOP
// Instance UID, and DCMTK's storescp holds the rewritten instances only:
// mapped UIDs in the command and the dataset alike, no probe value left.
func TestSenderRewriteToStoreSCP(t *testing.T) {
	noGoroutineLeak(t)
	ts := startServer(t, nil)
	in := t.TempDir()
	probe := synth.ProfileProbe(synth.UID(85, 1), synth.UID(85, 1, 1), 2)
	for i, p := range probe {
		var b bytes.Buffer
		if _, err := p.WriteTo(&b); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(in, fmt.Sprintf("%d.dcm", i)), b.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ts.storeSCU(t, []string{"+sd"}, in)
	recs := ts.records(t)
	if len(recs) != len(probe) {
		t.Fatalf("%d instances stored at the gateway, want %d", len(recs), len(probe))
	}

	mapUID := func(uid string) string {
		sum := sha256.Sum256([]byte("dimse test\x00" + uid))
		return "2.25." + new(big.Int).SetBytes(sum[:16]).String()
	}
	opts := dicomcodec.DeidentifyOptions{MapUID: mapUID}
	stored := map[string]string{}
	var out []*gateway.InstanceRecord
	for _, rec := range recs {
		o := *rec
		o.StudyInstanceUID, o.SeriesInstanceUID, o.SOPInstanceUID = mapUID(rec.StudyInstanceUID), mapUID(rec.SeriesInstanceUID), mapUID(rec.SOPInstanceUID)
		stored[o.SOPInstanceUID] = rec.Key()
		out = append(out, &o)
	}
	h := gateway.SendHeader{
		Rewrite: func(_ *gateway.InstanceRecord, original io.ReadCloser) io.ReadCloser {
			pr, pw := io.Pipe()
			go func() {
				_, err := dicomcodec.Deidentify(pw, original, opts)
				pw.CloseWithError(err)
			}()
			return struct {
				io.Reader
				io.Closer
			}{pr, closerFunc(func() error { err := pr.Close(); _ = original.Close(); return err })}
		},
		BlobKey: func(rec *gateway.InstanceRecord) string { return stored[rec.SOPInstanceUID] },
	}

	outDir := t.TempDir()
	port := freePort(t)
	startStoreSCP(t, port, outDir)
	peer := gateway.Peer{Name: "research", DIMSE: &gateway.DIMSEPeer{Host: "127.0.0.1", Port: port, CalledAE: "STORESCP"}}
	snd := &Sender{Blobs: ts.b.Blobs, CallingAE: "GATEWAY"}
	var results []gateway.SendResult
	if err := snd.Send(t.Context(), peer, h, out, func(r []gateway.SendResult) { results = append(results, r...) }); err != nil {
		t.Fatal(err)
	}
	var mapped []string
	for _, o := range out {
		mapped = append(mapped, o.SOPInstanceUID)
	}
	for _, r := range results {
		if !r.OK || !slices.Contains(mapped, r.SOPInstanceUID) {
			t.Errorf("result %s ok %v %s: want the mapped UIDs, stored", r.SOPInstanceUID, r.OK, r.Reason)
		}
	}
	files, err := os.ReadDir(outDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(probe) {
		t.Fatalf("storescp holds %d files, want %d", len(files), len(probe))
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(outDir, f.Name()))
		if err != nil {
			t.Fatal(err)
		}
		hd, err := dicomcodec.ParseHeader(bytes.NewReader(b), dicomcodec.HeaderLimits{})
		if err != nil {
			t.Fatalf("%s: %v", f.Name(), err)
		}
		if !slices.Contains(mapped, hd.SOPInstanceUID) || hd.Dataset.String("00120062") != "YES" || bytes.Contains(b, []byte("PHI")) {
			t.Errorf("%s at storescp: SOP Instance UID %s, identity removed %q, probe values left %v", f.Name(), hd.SOPInstanceUID,
				hd.Dataset.String("00120062"), bytes.Contains(b, []byte("PHI")))
		}
	}
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

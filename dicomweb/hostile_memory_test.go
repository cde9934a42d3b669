package dicomweb

import (
	"compress/flate"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"net/http"
	"testing"
	"time"
)

// deflatedUpload streams a Deflated Explicit VR Little Endian instance
// with pixelBytes of pixel data, stored deflate blocks (the compressed
// size grows with the pixel data, as a noisy image's does), and reports
// the SHA-256 and size of what it sent through sum once the stream ends.
func deflatedUpload(sop string, pixelBytes int64) (io.Reader, <-chan sentInstance) {
	const deflatedLE = "1.2.840.10008.1.2.1.99"
	meta, d := part10(deflatedLE, sop)
	pr, pw := io.Pipe()
	sum := make(chan sentInstance, 1)
	go func() {
		h := sha256.New()
		n := &countingWriter{}
		w := io.MultiWriter(pw, h, n)
		_, _ = w.Write(meta)
		fw, _ := flate.NewWriter(w, flate.NoCompression)
		_, _ = fw.Write(d)
		_, _ = fw.Write(elem(nil, 0x0028, 0x0010, "US", binary.LittleEndian.AppendUint16(nil, 1)))
		_, _ = fw.Write(elem(nil, 0x0028, 0x0011, "US", binary.LittleEndian.AppendUint16(nil, 1)))
		hdr := elem(nil, 0x7FE0, 0x0010, "OB", nil)
		binary.LittleEndian.PutUint32(hdr[8:], uint32(pixelBytes))
		_, _ = fw.Write(hdr)
		_, err := io.Copy(fw, &endless{n: pixelBytes, b: 0x5A})
		if err == nil {
			err = fw.Close()
		}
		sum <- sentInstance{sha256: hex.EncodeToString(h.Sum(nil)), size: n.n}
		pw.CloseWithError(err)
	}()
	return pr, sum
}

// sentInstance is what a generated upload sent.
type sentInstance struct {
	sha256 string
	size   int64
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// TestSecurityDeflatedUploadStreams (issue 16, finding 1): a deflated
// instance is stored with a flat heap, not held whole while its header is
// parsed, and the stored object is the bytes sent, unchanged.
func TestSecurityDeflatedUploadStreams(t *testing.T) {
	const sop = "1.2.826.0.1.3680043.10.1466.8.61"
	s := embeddedServer(t, nil)
	ts := newAuthTestServer(t, s)
	upload, sum := deflatedUpload(sop, 96<<20)
	body, ctype := stowBody(nil, upload)
	stop := peakHeap()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/dicomweb/studies", body)
	req.Header.Set("Content-Type", ctype)
	resp, err := ts.Client().Do(req)
	peak := stop()
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d %s, want 200", resp.StatusCode, msg)
	}
	t.Logf("96 MiB of pixel data, deflated: peak heap growth %.1f MiB", float64(peak)/(1<<20))
	if peak > 32<<20 {
		t.Errorf("peak heap growth %d MiB while a 96 MiB deflated instance was stored, want at most 32 MiB", peak>>20)
	}
	sent := <-sum
	rec, err := s.Index.GetInstance(t.Context(), sop)
	if err != nil {
		t.Fatal(err)
	}
	if rec.SHA256 != sent.sha256 || rec.Size != sent.size {
		t.Errorf("stored SHA-256 %s size %d differ from the bytes sent", rec.SHA256, rec.Size)
	}
	rc, err := s.Blobs.Get(t.Context(), rec.Key(), 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sent.sha256 {
		t.Errorf("blob SHA-256 %s, sent %s", got, sent.sha256)
	}
}

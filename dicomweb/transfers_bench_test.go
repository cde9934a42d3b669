package dicomweb_test

import (
	"bytes"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

var (
	benchTransferMB       = flag.Int("transfer-mb", 500, "size of the study BenchmarkTransferStudy sends, in MB")
	benchTransferFrames   = flag.Int("transfer-frames", 20, "frames of 512x512x16 bits per instance BenchmarkTransferStudy sends (1 = CT slices of 512 KiB)")
	benchTransferParallel = flag.Int("transfer-parallel", 0, "the peer's max_parallel in BenchmarkTransferStudy (0: the default)")
	benchTransferBackend  = flag.String("transfer-backend", "embedded", "backend of both centres in BenchmarkTransferStudy: embedded or production (Redis + MinIO)")
)

// rawLoopbackMBps measures plain HTTP on loopback in this process: n bytes
// POSTed from memory to a handler that discards them.
func rawLoopbackMBps(b *testing.B, n int64) float64 {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
	}))
	defer srv.Close()
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	start := time.Now()
	pr, pw := io.Pipe()
	go func() {
		var err error
		for left := n; left > 0 && err == nil; left -= int64(len(chunk)) {
			_, err = pw.Write(chunk[:min(int64(len(chunk)), left)])
		}
		pw.CloseWithError(err)
	}()
	req, _ := http.NewRequestWithContext(b.Context(), http.MethodPost, srv.URL, pr)
	req.ContentLength = n
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	return float64(n) / 1e6 / time.Since(start).Seconds()
}

// BenchmarkTransferStudy sends a study of -transfer-mb MB (default 500)
// from hampshire to surrey, two in-process gateways on loopback with the
// embedded backends, and reports the end-to-end rate (STOW-RS in batches,
// storage at surrey, QIDO-RS and SHA-256 verification recomputed from
// surrey's storage) beside the raw loopback HTTP rate measured in the same
// run. Run it alone: go test ./dicomweb -run '^$' -bench TransferStudy -benchtime 1x.
func BenchmarkTransferStudy(b *testing.B) {
	const rows = 512
	frames := max(1, *benchTransferFrames) // 512 KiB a frame
	per := int64(rows * rows * 2 * frames)
	n := max(1, int(int64(*benchTransferMB)*1e6/per))
	hampshire := newCentre(b, "hampshire", *benchTransferBackend)
	ins := hampshire.store(b, synth.StudySpec{Seed: 700, Series: 2, InstancesPerSeries: (n + 1) / 2, Rows: rows, Columns: rows, Frames: frames})
	var total int64
	for _, in := range ins {
		total += in.Size()
	}
	raw := rawLoopbackMBps(b, total)
	peak := storagetest.TrackPeakHeap(b)
	b.SetBytes(total)
	var elapsed time.Duration
	for b.Loop() {
		b.StopTimer()
		surrey := newCentre(b, "surrey", *benchTransferBackend)
		hampshire.transfers.Peers = []gateway.Peer{peerOf(surrey)}
		hampshire.transfers.Peers[0].MaxRequestBytes = 0 // the default, 64 MiB
		hampshire.transfers.Peers[0].MaxParallel = *benchTransferParallel
		if err := hampshire.transfers.Run(b.Context()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		tr := hampshire.create(b, ins[0].StudyInstanceUID, "surrey", gateway.PriorityNormal)
		done := hampshire.wait(b, tr.ID, 30*time.Minute)
		elapsed += time.Since(start)
		b.StopTimer()
		if done.State != gateway.StateCompleted || done.BytesSent != total {
			b.Fatalf("transfer ended %s with %d of %d bytes: %s", done.State, done.BytesSent, total, done.LastError)
		}
		if err := hampshire.transfers.Close(b.Context()); err != nil {
			b.Fatal(err)
		}
		dropBlobs(b, surrey.blobs)
		b.StartTimer()
	}
	rate := float64(total) * float64(b.N) / 1e6 / elapsed.Seconds()
	b.ReportMetric(rate, "transfer-MB/s")
	b.ReportMetric(raw, "raw-loopback-MB/s")
	b.ReportMetric(rate/raw, "ratio")
	b.ReportMetric(float64(len(ins)), "instances")
	b.ReportMetric(float64(peak())/(1<<20), "peak-heap-MiB")
}

// dropBlobs deletes every object of a receiver whose copy was checked, so
// that -benchtime Nx keeps one study on disk at a time, not N (each
// iteration's receiver would otherwise hold its copy until the end).
func dropBlobs(b *testing.B, blobs gateway.BlobStore) {
	b.Helper()
	var keys []string
	if err := blobs.Walk(b.Context(), "", func(info gateway.BlobInfo) error {
		keys = append(keys, info.Key)
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	for _, k := range keys {
		if err := blobs.Delete(b.Context(), k); err != nil {
			b.Fatal(err)
		}
	}
}

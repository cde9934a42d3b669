package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// retrieveResult is one receiver's whole-study WADO-RS retrieve of the CT
// studies it was just sent, one study after another, as a PACS or viewer
// pulls a study: the read path that matters after a transfer.
type retrieveResult struct {
	system, backend string
	round           int
	studies         int
	bytes           int64 // response bytes (instances and multipart framing)
	d               time.Duration
	err             error
}

// retrieveStudies GETs each study from the DICOMweb root as
// multipart/related application/dicom in its stored syntax, reads every
// byte, and returns what it read and how long it took.
func (tb *transferBench) retrieveStudies(ctx context.Context, root string, studies []string) (int64, time.Duration, error) {
	var total int64
	start := time.Now()
	for _, uid := range studies {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(root, "/")+"/studies/"+uid, nil)
		if err != nil {
			return 0, 0, err
		}
		req.Header.Set("Accept", `multipart/related; type="application/dicom"; transfer-syntax=*`)
		resp, err := tb.client.Do(req)
		if err != nil {
			return 0, 0, err
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			return 0, 0, err
		}
		if resp.StatusCode != http.StatusOK {
			return 0, 0, fmt.Errorf("GET study %s: status %d", uid, resp.StatusCode)
		}
		total += n
	}
	return total, time.Since(start), nil
}

// retrieveTable compares each system's retrieve with Orthanc's and with
// MinIO's own GET rate at the concurrency the gateway reads ahead with
// (dicomweb's partsReadAhead, 8), both measured in the same run.
func retrieveTable(results []retrieveResult, parts []partRate) string {
	var s strings.Builder
	s.WriteString("### Whole-study retrieve (WADO-RS) from the loopback receiver, after the transfer\n\n")
	s.WriteString("| system | backend | studies | MB | seconds | MB/s | gateway/orthanc | ÷ MinIO GET, 8 at once |\n|---|---|---:|---:|---:|---:|---:|---:|\n")
	orthanc := map[int]float64{} // by round
	rounds := false
	for _, r := range results {
		if r.system == "orthanc" && r.err == nil {
			orthanc[r.round] = float64(r.bytes) / mb / r.d.Seconds()
		}
		rounds = rounds || r.round > 0
	}
	getRate := minioRate(parts, minioGet, 8)
	for _, r := range results {
		system := r.system
		if rounds {
			system = fmt.Sprintf("%s, round %d", r.system, r.round+1)
		}
		if r.err != nil {
			fmt.Fprintf(&s, "| %s | %s | %d | not measurable: %s | | | | |\n", system, r.backend, r.studies, cellEscape(r.err.Error()))
			continue
		}
		rate := float64(r.bytes) / mb / r.d.Seconds()
		ratio, vsMinIO := "—", "—"
		if r.system == "orthanc" {
			ratio = "1"
		} else if o := orthanc[r.round]; o > 0 {
			ratio = fmt.Sprintf("%.2f", rate/o)
		}
		if strings.Contains(r.backend, "minio") && getRate > 0 {
			vsMinIO = fmt.Sprintf("%.2f", rate/getRate)
		}
		fmt.Fprintf(&s, "| %s | %s | %d | %.1f | %.2f | %.1f | %s | %s |\n", system, r.backend, r.studies, float64(r.bytes)/mb, r.d.Seconds(), rate, ratio, vsMinIO)
	}
	s.WriteString("\nEach study is one `GET /studies/{uid}` with `Accept: multipart/related; type=\"application/dicom\"; transfer-syntax=*`, read to the end, the studies one after another. " +
		"MinIO GET, 8 at once: the same run's minio-go GET rate of the same object sizes with 8 concurrent requests (reading from S3, the gateway keeps 8 instances ahead of the one it sends; run with -part-conc including 8).\n\n")
	return s.String()
}

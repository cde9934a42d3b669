package dicomweb_test

import (
	"bytes"
	"io"
	"net/http"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/internal/orthanctest"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// BenchmarkWADO measures what makes a viewer feel fast, on this gateway
// (embedded backends) and, when the Orthanc binary is installed, on Orthanc
// with its DICOMweb plugin, loaded with the same synthetic data in the same
// run:
//   - study: retrieve a whole 200-slice 512×512 CT study (MB/s);
//   - series-metadata: metadata of a 1,000-instance series (p50/p99);
//   - frame: one frame of a random slice (p50/p99).
//
// Compare the ratios, not the absolute figures (2 shared cores).
func BenchmarkWADO(b *testing.B) {
	ct := synth.Study(synth.StudySpec{Seed: 900, InstancesPerSeries: 200, Rows: 512, Columns: 512})
	big := synth.Study(synth.StudySpec{Seed: 901, InstancesPerSeries: 1000, Rows: 16, Columns: 16})
	var studyBytes int64
	for _, in := range ct {
		studyBytes += in.Size()
	}
	type target struct {
		name string
		base string // DICOMweb root
		load func(b *testing.B, data []byte)
	}
	var targets []target

	g := newWADOGateway(b, nil)
	targets = append(targets, target{"gateway", g.srv.URL + "/dicomweb", func(b *testing.B, data []byte) {
		if status := g.ingest(b, data); status != http.StatusOK {
			b.Fatalf("ingest: %d", status)
		}
	}})
	if o := startOrthanc(b); o != "" {
		targets = append(targets, target{"orthanc", o + "/dicom-web", func(b *testing.B, data []byte) {
			resp, err := http.Post(o+"/instances", "application/dicom", bytes.NewReader(data))
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("orthanc upload: %d", resp.StatusCode)
			}
		}})
	}
	for _, tg := range targets {
		for _, in := range append(slices.Clone(ct), big...) {
			var buf bytes.Buffer
			in.WriteTo(&buf)
			tg.load(b, buf.Bytes())
		}
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, DisableCompression: true}}
	fetch := func(b *testing.B, url, accept string) int64 {
		req, _ := http.NewRequestWithContext(b.Context(), http.MethodGet, url, nil)
		req.Header.Set("Accept", accept)
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
		}
		return n
	}
	for _, tg := range targets {
		b.Run(tg.name+"/study-200x512x512", func(b *testing.B) {
			b.SetBytes(studyBytes)
			for b.Loop() {
				if n := fetch(b, tg.base+"/studies/"+ct[0].StudyInstanceUID, `multipart/related; type="application/dicom"; transfer-syntax=*`); n < studyBytes {
					b.Fatalf("study: %d bytes, want ≥ %d", n, studyBytes)
				}
			}
		})
		b.Run(tg.name+"/series-metadata-1000", func(b *testing.B) {
			url := tg.base + "/studies/" + big[0].StudyInstanceUID + "/series/" + big[0].SeriesInstanceUID + "/metadata"
			latencies(b, func() { fetch(b, url, "application/dicom+json") })
		})
		b.Run(tg.name+"/frame", func(b *testing.B) {
			i := 0
			latencies(b, func() {
				in := ct[(i*37)%len(ct)]
				i++
				fetch(b, tg.base+"/studies/"+in.StudyInstanceUID+"/series/"+in.SeriesInstanceUID+"/instances/"+in.SOPInstanceUID+"/frames/1",
					"multipart/related; type=application/octet-stream; transfer-syntax=*")
			})
		})
	}
}

// latencies runs f in the benchmark loop and reports p50 and p99.
func latencies(b *testing.B, f func()) {
	var d []time.Duration
	for b.Loop() {
		start := time.Now()
		f()
		d = append(d, time.Since(start))
	}
	slices.Sort(d)
	b.ReportMetric(float64(d[len(d)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(d[min(len(d)-1, len(d)*99/100)].Nanoseconds()), "p99-ns")
}

// startOrthanc starts Orthanc with the DICOMweb plugin (orthanctest) and
// returns its URL, or "" when Orthanc is not installed: the benchmark then
// reports the gateway's figures only.
func startOrthanc(b *testing.B) string {
	if _, err := exec.LookPath("Orthanc"); err != nil {
		b.Log("Orthanc not installed: gateway figures only")
		return ""
	}
	return orthanctest.Start(b, orthanctest.Options{}).URL
}

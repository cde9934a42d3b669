package dicomweb_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

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

// startOrthanc starts Orthanc with the DICOMweb plugin on free loopback
// ports and returns its URL, or "" when Orthanc is not installed.
func startOrthanc(b *testing.B) string {
	bin, err := exec.LookPath("Orthanc")
	if err != nil {
		b.Log("Orthanc not installed: gateway figures only")
		return ""
	}
	dir := b.TempDir()
	httpPort, dicomPort := freePort(b), freePort(b)
	cfg := map[string]any{
		"Name":                  "bench",
		"StorageDirectory":      filepath.Join(dir, "db"),
		"IndexDirectory":        filepath.Join(dir, "db"),
		"HttpPort":              httpPort,
		"DicomPort":             dicomPort,
		"RemoteAccessAllowed":   false,
		"AuthenticationEnabled": false,
		"Plugins":               []string{"/usr/share/orthanc/plugins/libOrthancDicomWeb.so"},
		"DicomWeb":              map[string]any{"Enable": true, "Root": "/dicom-web/"},
	}
	raw, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(dir, "orthanc.json")
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, cfgPath)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	url := "http://127.0.0.1:" + strconv.Itoa(httpPort)
	ctx, cancel := context.WithTimeout(b.Context(), 30*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		if resp, err := http.Get(url + "/system"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return url
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	b.Fatal("Orthanc did not start within 30 s")
	return ""
}

func freePort(b *testing.B) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

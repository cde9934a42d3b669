// Package orthanctest starts Orthanc with its DICOMweb plugin (Debian
// orthanc + orthanc-dicomweb) for one test: a real DICOMweb sender and
// receiver written by someone else, on loopback, with a free port and its
// storage in the test's temporary directory. Outside CI a missing Orthanc
// skips the test with a message; under CI=true it fails, so Orthanc can
// never silently drop out of a run (make test installs it through
// scripts/testenv.sh).
package orthanctest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Where Debian installs Orthanc and its DICOMweb plugin. GATEWAY_TEST_ORTHANC
// and GATEWAY_TEST_ORTHANC_DICOMWEB override them.
const (
	debianBinary = "/usr/sbin/Orthanc"
	debianPlugin = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
)

// Orthanc is one running Orthanc.
type Orthanc struct {
	// URL is the root of Orthanc's REST API, e.g. http://127.0.0.1:41234.
	URL string
	// DICOMweb is its DICOMweb root (URL + "/dicom-web").
	DICOMweb string
	// DICOMPort is the port of its DICOM (DIMSE) server when
	// Options.DICOM is set.
	DICOMPort int
	// PID is the Orthanc process's ID (for benchmarks reading its memory).
	PID    int
	client *http.Client
}

// Options shape the started Orthanc.
type Options struct {
	// Servers are the DICOMweb servers Orthanc may send to
	// (DicomWeb.Servers): name → DICOMweb root URL.
	Servers map[string]string
	// DICOM, when set, enables Orthanc's DICOM server (DIMSE) on a free
	// loopback port, with the modalities it may send to.
	DICOM *DICOMOptions
}

// DICOMOptions shape Orthanc's DICOM server.
type DICOMOptions struct {
	AETitle    string              // Orthanc's own AE title (DicomAet)
	Modalities map[string]Modality // DicomModalities: name → AE
}

// Modality is a DICOM peer Orthanc knows (REST /modalities/{name}).
type Modality struct {
	AETitle string
	Host    string
	Port    int
}

// Start starts Orthanc for t and stops it when t ends. On a failed test
// Orthanc's log is printed.
func Start(t testing.TB, opts Options) *Orthanc {
	t.Helper()
	bin := envOr("GATEWAY_TEST_ORTHANC", debianBinary)
	plugin := envOr("GATEWAY_TEST_ORTHANC_DICOMWEB", debianPlugin)
	for _, f := range []string{bin, plugin} {
		if _, err := os.Stat(f); err != nil {
			msg := fmt.Sprintf("orthanctest: %s missing: apt-get install orthanc orthanc-dicomweb (make test installs them)", f)
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	port, err := freePort()
	if err != nil {
		t.Fatalf("orthanctest: %v", err)
	}
	dir := t.TempDir()
	servers := map[string]any{}
	for name, url := range opts.Servers {
		servers[name] = []string{url}
	}
	cfg := map[string]any{
		"Name":                  "orthanctest",
		"HttpPort":              port,
		"RemoteAccessAllowed":   false,
		"AuthenticationEnabled": false,
		"DicomServerEnabled":    false,
		"StorageDirectory":      filepath.Join(dir, "storage"),
		"IndexDirectory":        filepath.Join(dir, "index"),
		"Plugins":               []string{plugin},
		"SaveJobs":              false,
		"HttpRequestTimeout":    60,
		"DicomWeb": map[string]any{
			"Enable": true, "Root": "/dicom-web/", "EnableWado": true,
			"Servers": servers,
		},
	}
	dicomPort := 0
	if opts.DICOM != nil {
		if dicomPort, err = freePort(); err != nil {
			t.Fatalf("orthanctest: %v", err)
		}
		modalities := map[string]any{}
		for name, m := range opts.DICOM.Modalities {
			modalities[name] = []any{m.AETitle, m.Host, m.Port}
		}
		cfg["DicomServerEnabled"] = true
		cfg["DicomPort"] = dicomPort
		cfg["DicomAet"] = opts.DICOM.AETitle
		cfg["DicomModalities"] = modalities
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "orthanc.json")
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "orthanc.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, cfgPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("orthanctest: start %s: %v", bin, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logFile.Close()
		if t.Failed() {
			if log, err := os.ReadFile(logPath); err == nil {
				t.Logf("orthanc log:\n%s", tail(log, 8<<10))
			}
		}
	})
	o := &Orthanc{
		URL:    fmt.Sprintf("http://127.0.0.1:%d", port),
		client: &http.Client{Timeout: 60 * time.Second},
	}
	o.DICOMweb = o.URL + "/dicom-web"
	o.DICOMPort = dicomPort
	o.PID = cmd.Process.Pid
	// The DICOMweb root answers only once the plugin has loaded.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, o.DICOMweb+"/studies?limit=1", nil)
		if resp, err := o.client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return o
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("orthanctest: Orthanc and its DICOMweb plugin not answering on %s within 30 s", o.URL)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Upload stores one DICOM Part 10 instance through Orthanc's REST API
// (POST /instances) and returns Orthanc's ID of it.
func (o *Orthanc) Upload(t testing.TB, data []byte) string {
	t.Helper()
	var out struct {
		ID     string
		Status string
	}
	if status := o.do(t, http.MethodPost, "/instances", "application/dicom", bytes.NewReader(data), &out); status != http.StatusOK || out.ID == "" {
		t.Fatalf("orthanctest: POST /instances: status %d, %+v", status, out)
	}
	return out.ID
}

// JSON calls Orthanc's REST API with a JSON body (nil for none) and decodes
// the JSON answer into out (nil to discard it); it returns the status.
func (o *Orthanc) JSON(t testing.TB, method, path string, in, out any) int {
	t.Helper()
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		body = bytes.NewReader(raw)
	}
	return o.do(t, method, path, "application/json", body, out)
}

// File returns the bytes Orthanc stored for the instance whose SOP Instance
// UID is sop, or nil when it holds no such instance.
func (o *Orthanc) File(t testing.TB, sop string) []byte {
	t.Helper()
	var found []struct {
		ID   string
		Type string
	}
	if status := o.do(t, http.MethodPost, "/tools/lookup", "text/plain", strings.NewReader(sop), &found); status != http.StatusOK {
		t.Fatalf("orthanctest: /tools/lookup: status %d", status)
	}
	for _, f := range found {
		if f.Type != "Instance" {
			continue
		}
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, o.URL+"/instances/"+f.ID+"/file", nil)
		resp, err := o.client.Do(req)
		if err != nil {
			t.Fatalf("orthanctest: %v", err)
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("orthanctest: GET /instances/%s/file: status %d, %v", f.ID, resp.StatusCode, err)
		}
		return data
	}
	return nil
}

func (o *Orthanc) do(t testing.TB, method, path, contentType string, body io.Reader, out any) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, o.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := o.client.Do(req)
	if err != nil {
		t.Fatalf("orthanctest: %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		t.Fatalf("orthanctest: %s %s: %v", method, path, err)
	}
	if out != nil && resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("orthanctest: %s %s: %v in %.500s", method, path, err, raw)
		}
	}
	if resp.StatusCode/100 != 2 {
		t.Logf("orthanctest: %s %s: %d %.1000s", method, path, resp.StatusCode, raw)
	}
	return resp.StatusCode
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

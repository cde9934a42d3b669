package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/syncbuf"
	"github.com/dicom-gateway/gateway/internal/synth"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// testConfig is a Config for a gateway on a free loopback port with its
// embedded state in a fresh directory.
func testConfig(t *testing.T) *Config {
	t.Helper()
	cfg, err := parseServeConfig([]string{"--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--name", "hampshire"},
		func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// MustRunMain starts a gateway for cfg and stops it when the test ends.
func MustRunMain(t *testing.T, cfg *Config, logs io.Writer) *Main {
	t.Helper()
	if logs == nil {
		logs = io.Discard
	}
	m := NewMain(cfg, newLogger(logs, "debug"))
	if err := m.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return m
}

// get GETs u with "Accept: */*", as curl does (a DICOMweb retrieve with no
// Accept header is 406).
func get(t *testing.T, u string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "*/*")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestMain runs the tests with gin in release mode, as main does (Run, which
// the tests call, leaves the process-wide mode to main).
func TestMain(m *testing.M) {
	gin.SetMode(gin.ReleaseMode)
	os.Exit(m.Run())
}

func TestOperationalEndpoints(t *testing.T) {
	m := MustRunMain(t, testConfig(t), nil)
	base := "http://" + m.Addr
	if code, body := get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d %s", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d %s", code, body)
	}
	code, body := get(t, base+"/metrics")
	if code != http.StatusOK || !strings.Contains(body, `gateway_http_requests_total{code="200",method="GET",route="/readyz"}`) {
		t.Errorf("/metrics = %d, want per-route request counts; got:\n%.2000s", code, body)
	}
	if !strings.Contains(body, "gateway_http_request_duration_seconds_bucket") {
		t.Errorf("/metrics has no latency histogram")
	}
	for _, series := range []string{
		`gateway_blob_operations_total{operation="put",store="filesystem"} 0`,
		`gateway_transfer_state_changes_total{state="queued"} 0`,
		`gateway_store_stage_duration_seconds_count{stage="durable"} 0`,
		`gateway_store_stage_duration_seconds_count{stage="audit"} 0`,
	} {
		if !strings.Contains(body, series) {
			t.Errorf("/metrics lacks %s (the blob store must run behind blobwrap.Wrap, and the ingester report its stages, on the served registry)", series)
		}
	}
}

func TestReadyzNamesBackendsThatAreDown(t *testing.T) {
	cfg := testConfig(t)
	cfg.S3Endpoint = "127.0.0.1:1" // nothing listens on port 1
	cfg.S3AccessKey, cfg.S3SecretKey = "x", "y"
	cfg.RedisURL = "redis://127.0.0.1:1/0"
	m := MustRunMain(t, cfg, nil)
	code, body := get(t, "http://"+m.Addr+"/readyz")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d, want 503; %s", code, body)
	}
	var got struct {
		Failing map[string]string `json:"failing"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"s3", "redis"} {
		if _, ok := got.Failing[name]; !ok {
			t.Errorf("/readyz does not name %s as failing: %s", name, body)
		}
	}
	if code, _ := get(t, "http://"+m.Addr+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d while backends are down, want 200 (the process is up)", code)
	}
}

func TestGracefulShutdownFinishesInFlightRequests(t *testing.T) {
	m := MustRunMain(t, testConfig(t), nil)
	// A slow upload: the body arrives in two halves with a pause between.
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodPost, "http://"+m.Addr+"/dicomweb/studies", pr)
	req.Header.Set("Content-Type", `multipart/related; type="application/dicom"; boundary=b`)
	done := make(chan int, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- -1
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	fmt.Fprint(pw, "--b\r\nContent-Type: application/dicom\r\n\r\n")
	time.Sleep(100 * time.Millisecond)
	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		closed <- m.Close(ctx)
	}()
	time.Sleep(100 * time.Millisecond)
	inst := synth.Instance{StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.4", SOPInstanceUID: "1.2.3.4.5"}
	if _, err := inst.WriteTo(pw); err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(pw, "\r\n--b--\r\n")
	pw.Close()
	if code := <-done; code != http.StatusOK {
		t.Errorf("in-flight STOW during shutdown ended with %d, want 200", code)
	}
	if err := <-closed; err != nil {
		t.Errorf("close: %v", err)
	}
}

// stowBody builds a multipart/related STOW-RS body of the instances.
// stowOK stores insts at the DICOMweb root with one STOW-RS request and
// fails the test unless it answers 200.
func stowOK(t *testing.T, dicomweb string, insts []synth.Instance) {
	t.Helper()
	body, ct := stowBody(t, insts)
	resp, err := http.Post(dicomweb+"/studies", ct, body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("STOW = %d, want 200", resp.StatusCode)
	}
}

func stowBody(t *testing.T, insts []synth.Instance) (*bytes.Buffer, string) {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for _, in := range insts {
		part, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/dicom"}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := in.WriteTo(part); err != nil {
			t.Fatal(err)
		}
	}
	mw.Close()
	return &body, `multipart/related; type="application/dicom"; boundary=` + mw.Boundary()
}

// TestNoPatientDataInLogs drives store, search and retrieve for synthetic
// patients through a running gateway, on both state backends, and scans
// everything the gateway logged for their names, IDs and birth dates.
func TestNoPatientDataInLogs(t *testing.T) {
	for _, backend := range []string{"embedded", "redis+s3"} {
		t.Run(backend, func(t *testing.T) {
			cfg := testConfig(t)
			if backend == "redis+s3" {
				cfg.RedisURL = storagetest.RedisURL(t)
				cfg.RedisPrefix = storagetest.RedisPrefix(t)
				s := storagetest.MinIO(t)
				cfg.S3Endpoint, cfg.S3AccessKey, cfg.S3SecretKey = s.Endpoint, s.AccessKey, gateway.Secret(s.SecretKey)
				cfg.S3Bucket = s.Bucket(t)
			}
			var logs syncbuf.Buffer
			m := MustRunMain(t, cfg, &logs)
			base := "http://" + m.Addr + "/dicomweb"
			var insts []synth.Instance
			for i := range synth.Patients {
				insts = append(insts, synth.Study(synth.StudySpec{Seed: uint64(9000 + i), Patient: i, Rows: 8, Columns: 8})...)
			}
			stowOK(t, base, insts)
			for _, p := range synth.Patients {
				family, _, _ := strings.Cut(p.Name, "^")
				for _, q := range []string{"PatientName=" + url.QueryEscape(family+"*"), "PatientID=" + p.ID} {
					code, body := get(t, base+"/studies?"+q)
					if code != http.StatusOK || !strings.Contains(body, p.ID) {
						t.Errorf("QIDO %s = %d %.200s, want the patient's study", q, code, body)
					}
				}
			}
			for _, in := range insts {
				code, _ := get(t, base+"/studies/"+in.StudyInstanceUID+"/series/"+in.SeriesInstanceUID+"/instances/"+in.SOPInstanceUID+"/metadata")
				if code != http.StatusOK {
					t.Errorf("WADO metadata of %s = %d", in.SOPInstanceUID, code)
				}
			}
			get(t, base+"/studies?PatientName=Nobody^Here")
			out := logs.String()
			if !strings.Contains(out, `"request_id"`) {
				t.Fatalf("logs carry no request_id; test would prove nothing:\n%.1000s", out)
			}
			for _, p := range synth.Patients {
				family, given, _ := strings.Cut(p.Name, "^")
				given, _, _ = strings.Cut(given, "^")
				for _, phi := range []string{family, given, p.ID, p.BirthDate, "Nobody"} {
					if strings.Contains(out, phi) {
						i := strings.Index(out, phi)
						t.Errorf("patient data %q appears in the logs: …%s…", phi, out[max(0, i-200):min(len(out), i+100)])
					}
				}
			}
		})
	}
}

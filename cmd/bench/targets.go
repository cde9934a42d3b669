package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dicom-gateway/gateway/internal/cluster"
)

// Target names, in the order of the table rows.
const (
	targetEmbedded = "gateway embedded"
	targetRedis    = "gateway redis+minio"
	targetOrthanc  = "orthanc"
)

// target is one server under test, started by the bench as a child process
// and stopped by stop.
type target struct {
	name     string
	root     string // DICOMweb root, no trailing slash
	cmd      *exec.Cmd
	logPath  string
	done     chan struct{} // closed when the process has exited
	waitErr  error
	startErr error // set when the target could not be started: every part reports it

	// Data the parts leave for later parts.
	smallStudy, smallSeries string // (a): 1,000 instances in one series
	ctStudy, ctSeries       string // (b): the CT study
	ctInstances             []string
	ctBytes                 int64
}

func (t *target) pid() int {
	if t.cmd == nil || t.cmd.Process == nil {
		return 0
	}
	return t.cmd.Process.Pid
}

// start runs argv with its output in logPath, and a goroutine that waits
// for it (ended by stop).
func (t *target) start(argv []string, env []string) error {
	logf, err := os.Create(t.logPath)
	if err != nil {
		return err
	}
	t.cmd = exec.Command(argv[0], argv[1:]...)
	t.cmd.Stdout, t.cmd.Stderr = logf, logf
	t.cmd.Env = append(os.Environ(), env...)
	// If the bench dies without cleaning up, the kernel sends the child SIGTERM.
	t.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := t.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", argv[0], err)
	}
	t.done = make(chan struct{})
	go func() {
		t.waitErr = t.cmd.Wait()
		logf.Close()
		close(t.done)
	}()
	return nil
}

// stop sends SIGTERM, waits up to 30 s, then SIGKILL.
func (t *target) stop() {
	if t.cmd == nil || t.done == nil {
		return
	}
	select {
	case <-t.done:
		return
	default:
	}
	_ = t.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-t.done:
	case <-time.After(30 * time.Second):
		_ = t.cmd.Process.Kill()
		<-t.done
	}
}

// logTail is the end of the child's log, for error messages.
func (t *target) logTail() string {
	b, err := os.ReadFile(t.logPath)
	if err != nil {
		return ""
	}
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// waitHTTP polls url until it answers 200, the process exits, or 60 s pass.
func (t *target) waitHTTP(ctx context.Context, url string) error {
	client := &http.Client{Timeout: 2 * time.Second}
	var last error
	for range 600 {
		select {
		case <-t.done:
			return fmt.Errorf("%s exited (%v) before answering %s; log:\n%s", t.name, t.waitErr, url, t.logTail())
		default:
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("%s: %s", url, resp.Status)
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready after 60 s: %v; log:\n%s", t.name, last, t.logTail())
}

// gatewayBackend is where a gateway target keeps its data.
type gatewayBackend struct {
	redisURL, redisPrefix                 string
	s3Endpoint, s3Bucket, s3Access, s3Key string
}

func startGateway(ctx context.Context, name, bin, work string, be *gatewayBackend) *target {
	t := &target{name: name}
	slug := strings.NewReplacer(" ", "-", "+", "-").Replace(name)
	t.logPath = filepath.Join(work, slug+".log")
	port, err := cluster.FreePort()
	if err != nil {
		t.startErr = err
		return t
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	t.root = "http://" + addr + "/dicomweb"
	argv := []string{bin, "serve", "--listen", addr, "--data-dir", filepath.Join(work, slug), "--name", "bench", "--log-level", "warn"}
	if be != nil {
		argv = append(argv, "--redis-url", be.redisURL, "--redis-prefix", be.redisPrefix,
			"--s3-endpoint", be.s3Endpoint, "--s3-bucket", be.s3Bucket, "--s3-access-key", be.s3Access)
	}
	// The S3 secret goes through the environment, not argv (ps shows argv).
	var env []string
	if be != nil {
		env = append(env, "GATEWAY_S3_SECRET_KEY="+be.s3Key)
	}
	if err := t.start(argv, env); err != nil {
		t.startErr = err
		return t
	}
	if err := t.waitHTTP(ctx, "http://"+addr+"/readyz"); err != nil {
		t.startErr = err
	}
	return t
}

// orthancConfig is the JSON configuration of the Orthanc under test: HTTP
// only, loopback only, no authentication, storage in the work directory,
// the DICOMweb plugin at /dicom-web/. Everything else keeps Orthanc's
// defaults (including SyncStorageArea=true: it fsyncs like the gateway).
// servers are the DICOMweb servers its client may send to (name → root URL,
// e.g. http://127.0.0.1:8042/dicom-web/), for the transfer benchmark.
func orthancConfig(dir string, port int, plugin string, servers map[string]string) string {
	serversJSON := "{}"
	if len(servers) > 0 {
		urls := map[string][]string{} // the plugin's short form: "name": ["url"]
		for name, u := range servers {
			urls[name] = []string{u}
		}
		b, err := json.Marshal(urls)
		if err != nil {
			panic(err) // a map of strings always encodes
		}
		serversJSON = string(b)
	}
	return fmt.Sprintf(`{
  "Name": "bench-orthanc",
  "HttpPort": %d,
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false,
  "DicomServerEnabled": false,
  "StorageDirectory": %q,
  "IndexDirectory": %q,
  "Plugins": [%q],
  "HttpRequestTimeout": 3600,
  "HttpTimeout": 3600,
  "HttpCompressionEnabled": true,
  "OrthancExplorerEnabled": false,
  "WebDavEnabled": false,
  "SaveJobs": false,
  "DicomWeb": {"Enable": true, "Root": "/dicom-web/", "EnableWado": true, "Servers": %s}
}
`, port, filepath.Join(dir, "storage"), filepath.Join(dir, "index"), plugin, serversJSON)
}

func startOrthanc(ctx context.Context, bin, plugin, work string) *target {
	return startOrthancOn(ctx, bin, plugin, filepath.Join(work, "orthanc"), 0, nil)
}

// startOrthancOn starts an Orthanc with its data, configuration and log in
// dir, on port (0: a free one), with DICOMweb servers to send to.
func startOrthancOn(ctx context.Context, bin, plugin, dir string, port int, servers map[string]string) *target {
	t := &target{name: targetOrthanc, logPath: filepath.Join(dir, "orthanc.log")}
	if _, err := os.Stat(plugin); err != nil {
		t.startErr = fmt.Errorf("DICOMweb plugin: %w", err)
		return t
	}
	if port == 0 {
		var err error
		if port, err = cluster.FreePort(); err != nil {
			t.startErr = err
			return t
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.startErr = err
		return t
	}
	cfg := filepath.Join(dir, "orthanc.json")
	if err := os.WriteFile(cfg, []byte(orthancConfig(dir, port, plugin, servers)), 0o600); err != nil {
		t.startErr = err
		return t
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	t.root = base + "/dicom-web"
	if err := t.start([]string{bin, cfg}, nil); err != nil {
		t.startErr = err
		return t
	}
	if err := t.waitHTTP(ctx, base+"/system"); err != nil {
		t.startErr = err
		return t
	}
	// The plugin answers only if it loaded.
	if err := t.waitHTTP(ctx, t.root+"/studies?limit=1"); err != nil {
		t.startErr = fmt.Errorf("DICOMweb plugin not answering: %w", err)
	}
	return t
}

// procStatus reads VmRSS and VmHWM (bytes) of pid.
func procStatus(pid int) (rss, hwm int64, err error) {
	m, err := cluster.ProcMemory(pid)
	return m.RSS, m.HWM, err
}

// resetHWM resets the process's peak RSS (VmHWM) to its current RSS
// (Linux >= 4.0: write 5 to /proc/PID/clear_refs).
func resetHWM(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

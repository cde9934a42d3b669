// Command demo brings up two centres, hampshire and surrey, on loopback,
// stores the sample studies of testdata/ at hampshire, forwards one to
// surrey, prints the transfer's progress and final state, checks that every
// instance arrived byte-identical, and prints the URLs of both admin pages.
// It needs a Redis and a MinIO: run it through make demo, which starts them
// as the test harness does (scripts/testenv.sh) and passes their addresses
// in GATEWAY_TEST_*. Ctrl-C stops everything it started; -exit (DEMO_EXIT=1)
// stops after the check, with a non-zero status if it failed.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/dicom-gateway/gateway/client"
	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

type centre struct {
	name, peer string
	port       int
	base       string
	cmd        *exec.Cmd
}

func main() {
	exitAfter := flag.Bool("exit", os.Getenv("DEMO_EXIT") == "1", "stop after the check instead of waiting for Ctrl-C")
	bin := flag.String("gateway", "bin/gateway", "gateway binary")
	data := flag.String("data", "testdata/studies", "directory of sample studies")
	study := flag.String("send", "study1", "sub-directory of -data whose study is forwarded")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *data, *study, *exitAfter); err != nil {
		fmt.Fprintln(os.Stderr, "demo: FAILED:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, bin, data, sendDir string, exitAfter bool) error {
	redisURL, s3 := os.Getenv("GATEWAY_TEST_REDIS_URL"), os.Getenv("GATEWAY_TEST_S3_ENDPOINT")
	if redisURL == "" || s3 == "" {
		return errors.New("GATEWAY_TEST_REDIS_URL / GATEWAY_TEST_S3_ENDPOINT unset: run make demo")
	}
	work, err := os.MkdirTemp("", "gateway-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	centres := []*centre{{name: "hampshire", peer: "surrey", port: 18080}, {name: "surrey", peer: "hampshire", port: 18081}}
	ports := map[string]int{"hampshire": 18080, "surrey": 18081}
	for _, c := range centres {
		c.base = fmt.Sprintf("http://127.0.0.1:%d", c.port)
		cfgPath := filepath.Join(work, c.name+".yaml")
		cfg := fmt.Sprintf("peers:\n  - name: %s\n    url: http://127.0.0.1:%d/dicomweb\n    gateway: true\n", c.peer, ports[c.peer])
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			return err
		}
		logf, err := os.Create(filepath.Join(work, c.name+".log"))
		if err != nil {
			return err
		}
		defer logf.Close()
		c.cmd = exec.Command(bin, "serve",
			"--name", c.name, "--listen", fmt.Sprintf("127.0.0.1:%d", c.port), "--config", cfgPath,
			"--data-dir", filepath.Join(work, c.name),
			"--redis-url", redisURL, "--redis-prefix", "demo-"+c.name+":",
			"--s3-endpoint", s3, "--s3-bucket", "demo-"+c.name,
			"--s3-access-key", os.Getenv("GATEWAY_TEST_S3_ACCESS_KEY"), "--s3-secret-key", os.Getenv("GATEWAY_TEST_S3_SECRET_KEY"))
		c.cmd.Stdout, c.cmd.Stderr = logf, logf
		if err := c.cmd.Start(); err != nil {
			return fmt.Errorf("start %s: %w", c.name, err)
		}
		defer func(c *centre) {
			_ = c.cmd.Process.Signal(syscall.SIGTERM)
			_ = c.cmd.Wait()
		}(c)
	}
	for _, c := range centres {
		if err := waitReady(ctx, c.base); err != nil {
			log, _ := os.ReadFile(filepath.Join(work, c.name+".log"))
			return fmt.Errorf("%s did not become ready: %w\n%s", c.name, err, log)
		}
		fmt.Printf("%-9s ready at %s (Redis + MinIO)\n", c.name, c.base)
	}
	hampshire, surrey := centres[0], centres[1]

	fmt.Printf("\n== storing %s at hampshire\n", data)
	store := exec.CommandContext(ctx, bin, "store", "--url", hampshire.base+"/dicomweb", data)
	store.Stdout, store.Stderr = os.Stdout, os.Stderr
	if err := store.Run(); err != nil {
		return fmt.Errorf("gateway store: %w", err)
	}

	files, studyUID, err := studyFiles(filepath.Join(data, sendDir))
	if err != nil {
		return err
	}
	fmt.Printf("\n== forwarding study %s (%d instances) to surrey\n", studyUID, len(files))
	api := client.New(hampshire.base)
	tr, err := api.CreateTransfer(ctx, gateway.CreateTransfer{StudyUID: studyUID, Destination: "surrey", Priority: gateway.PriorityNormal})
	if err != nil {
		return fmt.Errorf("create transfer: %w", err)
	}
	id := tr.ID
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if tr, err = api.Transfer(ctx, id); err != nil {
			return err
		}
		fmt.Printf("transfer %s: %-9v %v/%v instances, %v bytes, attempts %v %v\n", id, tr.State,
			tr.InstancesSent, tr.InstancesTotal, tr.BytesSent, tr.Attempts, orEmpty(tr.LastError))
		if tr.State.Terminal() {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("transfer did not finish within 2 minutes")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	if tr.State != gateway.StateCompleted {
		return fmt.Errorf("transfer ended %v: %v", tr.State, tr.LastError)
	}
	verified := "not checked"
	if tr.Verified != nil {
		verified = fmt.Sprint(*tr.Verified)
	}
	fmt.Printf("verified by hampshire: %s (%s)\n", verified, tr.Verification)

	fmt.Println("\n== checking every instance at surrey against the original file (SHA-256 of WADO-URI retrieve)")
	for _, f := range files {
		want, err := fileSHA256(f.path)
		if err != nil {
			return err
		}
		q := url.Values{"requestType": {"WADO"}, "studyUID": {f.h.StudyInstanceUID}, "seriesUID": {f.h.SeriesInstanceUID},
			"objectUID": {f.h.SOPInstanceUID}, "contentType": {"application/dicom"}}
		got, err := urlSHA256(ctx, surrey.base+"/dicomweb/wado?"+q.Encode())
		if err != nil {
			return fmt.Errorf("retrieve %s from surrey: %w", f.h.SOPInstanceUID, err)
		}
		if got != want {
			return fmt.Errorf("instance %s differs at surrey: sha256 %s, original %s", f.h.SOPInstanceUID, got, want)
		}
		fmt.Printf("  %s  identical (%s…)\n", f.h.SOPInstanceUID, want[:16])
	}
	fmt.Printf("\nstudy arrived at surrey byte-identical: %d of %d instances\n", len(files), len(files))
	fmt.Printf("\nadmin pages:\n  hampshire %s/ui/\n  surrey    %s/ui/\n", hampshire.base, surrey.base)
	if exitAfter {
		return nil
	}
	fmt.Println("\nCtrl-C stops both gateways (and make demo stops Redis and MinIO).")
	<-ctx.Done()
	return nil
}

type studyFile struct {
	path string
	h    *dicomcodec.Header
}

// studyFiles parses the header of every file in dir and checks they are one study.
func studyFiles(dir string) ([]studyFile, string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, "", err
	}
	var out []studyFile
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		f, err := os.Open(p)
		if err != nil {
			return nil, "", err
		}
		h, err := dicomcodec.ParseHeader(f, dicomcodec.HeaderLimits{})
		f.Close()
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", p, err)
		}
		out = append(out, studyFile{p, h})
	}
	if len(out) == 0 {
		return nil, "", fmt.Errorf("%s holds no files", dir)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].path < out[j].path })
	for _, f := range out {
		if f.h.StudyInstanceUID != out[0].h.StudyInstanceUID {
			return nil, "", fmt.Errorf("%s holds more than one study", dir)
		}
	}
	return out, out[0].h.StudyInstanceUID, nil
}

func waitReady(ctx context.Context, base string) error {
	var last error
	for i := 0; i < 300; i++ {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("readyz %s", resp.Status)
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return last
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func urlSHA256(ctx context.Context, u string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", errors.New(resp.Status)
	}
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func orEmpty(lastError string) string {
	if lastError == "" {
		return ""
	}
	return "(last error: " + lastError + ")"
}

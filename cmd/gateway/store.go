package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// runStore is `gateway store --url <dicomweb root> [--token T]
// [--concurrency N] PATH...`: it sends files, or every file under
// directories, by STOW-RS, one instance per request streamed from disk,
// with a progress line on stderr and a summary of what failed and why. It
// fails when any instance was not stored. Files found under a directory
// that are not DICOM Part 10 (no "DICM" at byte 128: READMEs, licences,
// DICOMDIR viewers' assets) are skipped and counted, as DCMTK's storescu
// --scan-directories does; a file named on the command line is always sent.
func runStore(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("store", flag.ContinueOnError)
	fl.SetOutput(stderr)
	base := fl.String("url", "", "DICOMweb root of the gateway, e.g. http://127.0.0.1:8080/dicomweb")
	token := fl.String("token", os.Getenv("GATEWAY_TOKEN"), "bearer token (default $GATEWAY_TOKEN)")
	concurrency := fl.Int("concurrency", 4, "instances sent at once")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *base == "" || fl.NArg() == 0 {
		return errors.New("usage: gateway store --url <dicomweb root> [--token T] [--concurrency N] PATH...")
	}
	if *concurrency < 1 {
		*concurrency = 1
	}
	files := make(chan storeCandidate)
	var walkErr error
	go func() {
		defer close(files)
		for _, root := range fl.Args() {
			err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				if d.Type().IsRegular() {
					select {
					case files <- storeCandidate{path: path, scanned: path != root}:
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				return nil
			})
			if err != nil {
				walkErr = err
				return
			}
		}
	}()

	var stored, failed, bytesSent atomic.Int64
	var mu sync.Mutex
	failures := map[string][]string{} // reason → files
	var skipped []string
	start := time.Now()
	client := &http.Client{}
	url := strings.TrimRight(*base, "/") + "/studies"

	done := make(chan struct{})
	go func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				printProgress(stderr, stored.Load(), failed.Load(), bytesSent.Load(), time.Since(start))
			}
		}
	}()
	var wg sync.WaitGroup
	for range *concurrency {
		wg.Go(func() {
			for f := range files {
				path := f.path
				if f.scanned && !isPart10File(path) {
					mu.Lock()
					skipped = append(skipped, path)
					mu.Unlock()
					continue
				}
				n, reason := storeFile(ctx, client, url, *token, path)
				bytesSent.Add(n)
				if reason == "" {
					stored.Add(1)
					continue
				}
				failed.Add(1)
				mu.Lock()
				failures[reason] = append(failures[reason], path)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(done)
	printProgress(stderr, stored.Load(), failed.Load(), bytesSent.Load(), time.Since(start))
	fmt.Fprintln(stderr)
	fmt.Fprintf(stdout, "stored %d, failed %d, skipped %d (not DICOM: no DICM at byte 128)\n", stored.Load(), failed.Load(), len(skipped))
	sort.Strings(skipped)
	for i, p := range skipped {
		if i == maxSkippedListed {
			fmt.Fprintf(stdout, "    … and %d more skipped\n", len(skipped)-i)
			break
		}
		fmt.Fprintf(stdout, "    skipped %s\n", p)
	}
	reasons := make([]string, 0, len(failures))
	for r := range failures {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		fmt.Fprintf(stdout, "  %s: %d\n", r, len(failures[r]))
		for _, p := range failures[r] {
			fmt.Fprintf(stdout, "    %s\n", p)
		}
	}
	if walkErr != nil {
		return walkErr
	}
	if failed.Load() > 0 {
		return fmt.Errorf("%d instances not stored", failed.Load())
	}
	return nil
}

// storeCandidate is a file to send; scanned is true when it was found
// under a directory rather than named on the command line.
type storeCandidate struct {
	path    string
	scanned bool
}

// maxSkippedListed bounds the skipped files named in the summary (a
// directory of JPEGs should not bury the failures).
const maxSkippedListed = 20

// isPart10File reports whether the file has "DICM" at byte 128, the mark of
// a DICOM Part 10 file (PS3.10 7.1). An unreadable file counts as DICOM, so
// that sending it reports why it cannot be read.
func isPart10File(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return true
	}
	defer f.Close()
	var magic [4]byte
	if _, err := f.ReadAt(magic[:], 128); err != nil {
		return !errors.Is(err, io.EOF)
	}
	return string(magic[:]) == "DICM"
}

func printProgress(w io.Writer, stored, failed, n int64, d time.Duration) {
	sec := max(d.Seconds(), 0.001)
	fmt.Fprintf(w, "\r%d stored, %d failed, %.1f MB, %.1f instances/s, %.1f MB/s   ",
		stored, failed, float64(n)/1e6, float64(stored+failed)/sec, float64(n)/1e6/sec)
}

// reasonNames names the FailureReason codes in the summary.
var reasonNames = map[int64]string{
	int64(gateway.ReasonProcessingFailure):         "processing failure",
	int64(gateway.ReasonDuplicateRejected):         "duplicate with different content",
	int64(gateway.ReasonNoSuchSOPClass):            "SOP class not supported",
	int64(gateway.ReasonOutOfResources):            "out of resources / storage unavailable",
	int64(gateway.ReasonDataSetSOPClassMismatch):   "data set does not match (missing UIDs or other study)",
	int64(gateway.ReasonCannotUnderstand):          "cannot understand (not DICOM, malformed or truncated)",
	int64(gateway.ReasonTransferSyntaxUnsupported): "transfer syntax not supported",
}

// storeFile sends one file as a one-part STOW-RS request, streamed, and
// returns the bytes sent and "" or the reason it was not stored.
func storeFile(ctx context.Context, client *http.Client, url, token, path string) (int64, string) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "cannot read file"
	}
	defer f.Close()
	info, _ := f.Stat()
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		part, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/dicom"}})
		if err == nil {
			_, err = io.Copy(part, f)
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, pr)
	if err != nil {
		pr.CloseWithError(err)
		return 0, "bad --url"
	}
	req.Header.Set("Content-Type", `multipart/related; type="application/dicom"; boundary=`+mw.Boundary())
	req.Header.Set("Accept", "application/dicom+json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	pr.CloseWithError(io.ErrClosedPipe)
	if err != nil {
		return 0, "request failed: " + err.Error()
	}
	defer resp.Body.Close()
	size := int64(0)
	if info != nil {
		size = info.Size()
	}
	if resp.StatusCode == http.StatusOK {
		io.Copy(io.Discard, resp.Body)
		return size, ""
	}
	var ds dicomcodec.Dataset
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&ds); err == nil {
		if resp.StatusCode == http.StatusAccepted && len(ds["00081198"].Value) == 0 && len(ds["00081199"].Value) > 0 {
			// Stored with a warning (PS3.18 10.5.3: 202 without failures),
			// e.g. a UID with a leading zero in a component.
			return size, ""
		}
		for _, it := range ds["00081198"].Value {
			if item, ok := it.(dicomcodec.Dataset); ok {
				if v := item["00081197"].Value; len(v) == 1 {
					code, _ := v[0].(int64)
					name := reasonNames[code]
					if name == "" {
						name = "failure"
					}
					return size, fmt.Sprintf("0x%04X %s", code, name)
				}
			}
		}
	}
	return size, fmt.Sprintf("HTTP %d", resp.StatusCode)
}

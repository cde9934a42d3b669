package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dicom-gateway/gateway/client"
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
	api := &client.Client{DICOMweb: *base, Token: *token}

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
				n, reason := storeFile(ctx, api, path)
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

// storeFile sends one file as a one-part STOW-RS request, streamed, and
// returns the bytes sent and "" or the reason it was not stored.
func storeFile(ctx context.Context, api *client.Client, path string) (int64, string) {
	f, err := client.NewFile(path)
	if err != nil {
		return 0, "cannot read file"
	}
	resp, err := api.Store(ctx, "", []client.Instance{f}, nil)
	if err != nil {
		if _, ok := errors.AsType[*client.InstanceWriteError](err); ok {
			return 0, "cannot read file"
		}
		return 0, "request failed: " + err.Error()
	}
	if resp.StatusCode == http.StatusOK {
		return f.Size(), ""
	}
	if ans, err := resp.Answer(); err == nil {
		if resp.StatusCode == http.StatusAccepted && len(ans.Failed) == 0 && len(ans.Stored) > 0 {
			// Stored with a warning (PS3.18 10.5.3: 202 without failures),
			// e.g. a UID with a leading zero in a component.
			return f.Size(), ""
		}
		if len(ans.Failed) > 0 {
			return f.Size(), gateway.ReasonText(ans.Failed[0].Reason)
		}
	}
	return f.Size(), fmt.Sprintf("HTTP %d", resp.StatusCode)
}

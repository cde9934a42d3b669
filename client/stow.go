package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
)

// Instance is one part of a STOW-RS request. Size is the exact number of
// bytes WriteTo writes, or -1 when unknown (the request is then sent
// chunked: some servers refuse that). WriteTo is called once per request,
// while the request is being sent; an instance whose bytes are produced on
// the fly (internal/synth) or read from a file is never held in memory.
type Instance interface {
	Size() int64
	WriteTo(w io.Writer) (int64, error)
}

// File is a DICOM Part 10 file sent as one instance, read while sending.
type File struct {
	Path string
	// Bytes is the file's size, from os.Stat (NewFile).
	Bytes int64
}

// NewFile returns the Instance of the file at path.
func NewFile(path string) (*File, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	return &File{Path: path, Bytes: info.Size()}, nil
}

func (f *File) Size() int64 { return f.Bytes }

func (f *File) WriteTo(w io.Writer) (int64, error) {
	r, err := os.Open(f.Path)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	return io.Copy(w, r)
}

// Headers that tie a STOW-RS request to the sender's transfer, so that the
// receiving gateway records an incoming transfer under the same ID.
const (
	HeaderTransferID        = "X-Transfer-ID"
	HeaderSourceCentre      = "X-Source-Centre"
	HeaderTransferInstances = "X-Transfer-Instances"
)

// StoreResponse is a STOW-RS answer: any status (a failed request is an
// answer too; only a request that got none is an error).
type StoreResponse struct {
	StatusCode int
	Header     http.Header
	// Body is the answer as sent (at most 64 MiB).
	Body []byte
}

// StoreAnswer is what a STOW-RS answer's DICOM JSON says about the
// instances: those referenced as stored, those failed with their
// FailureReason.
type StoreAnswer struct {
	Stored []StoredInstance
	Failed []FailedInstance
}

// StoredInstance is an item of the ReferencedSOPSequence (0008,1199).
type StoredInstance struct {
	SOPInstanceUID string
	// WarningReason (0008,1196), 0 when none (PS3.18 10.5.3: stored with
	// a warning, answered with 202).
	WarningReason uint16
}

// FailedInstance is an item of the FailedSOPSequence (0008,1198).
type FailedInstance struct {
	SOPInstanceUID string
	Reason         uint16
	// Comment is the item's Error Comment (0000,0902), when the receiver
	// gave one.
	Comment string
}

// Answer decodes the DICOM JSON of the answer (an object, or an array
// whose first object is used). An empty body is an empty answer.
func (r *StoreResponse) Answer() (*StoreAnswer, error) {
	var obj Object
	trimmed := bytes.TrimSpace(r.Body)
	switch {
	case len(trimmed) == 0:
	case trimmed[0] == '[':
		var arr []Object
		if err := json.Unmarshal(trimmed, &arr); err != nil {
			return nil, err
		}
		if len(arr) > 0 {
			obj = arr[0]
		}
	default:
		if err := json.Unmarshal(trimmed, &obj); err != nil {
			return nil, err
		}
	}
	a := &StoreAnswer{}
	for _, it := range obj.Items("00081199") {
		a.Stored = append(a.Stored, StoredInstance{SOPInstanceUID: it.Str("00081155"), WarningReason: uint16(it.Int("00081196"))})
	}
	for _, it := range obj.Items("00081198") {
		a.Failed = append(a.Failed, FailedInstance{SOPInstanceUID: it.Str("00081155"), Reason: uint16(it.Int("00081197")), Comment: it.Str("00000902")})
	}
	return a, nil
}

// errRequestDone ends the body writer once the request is over (answered
// early, or failed): its error is then the request's, not the writer's.
var errRequestDone = errors.New("request finished")

// bodyBuffer is the buffer between the multipart writer and the pipe: the
// small part headers and an instance's small writes reach the HTTP
// transport in 64 KiB pieces, while large writes pass straight through.
const bodyBuffer = 64 << 10

// Store sends instances as one multipart/related STOW-RS request to the
// DICOMweb root's /studies (or /studies/{studyUID} when studyUID is set),
// with header's fields added. The body is streamed: a goroutine writes each
// instance through a multipart writer into an io.Pipe that the request
// reads, so memory does not grow with the study. When every Size is known
// the request carries its exact Content-Length.
//
// Any answer, whatever its status, is returned as a StoreResponse. The
// error is the one that stopped an instance's WriteTo (wrapped, so that
// errors.As finds the caller's own types), else the transport's.
func (c *Client) Store(ctx context.Context, studyUID string, instances []Instance, header http.Header) (*StoreResponse, error) {
	if c.DICOMweb == "" {
		return nil, errors.New("client: no DICOMweb URL to store to")
	}
	u := strings.TrimRight(c.DICOMweb, "/") + "/studies"
	if studyUID != "" {
		u += "/" + url.PathEscape(studyUID)
	}
	resp, sent, err := c.store(ctx, u, instances, header)
	if err != nil && c.RetryStaleConnection && sent < staleConnectionBytes && ctx.Err() == nil {
		if _, ok := errors.AsType[*InstanceWriteError](err); !ok {
			c.httpClient().CloseIdleConnections()
			resp, _, err = c.store(ctx, u, instances, header)
		}
	}
	return resp, err
}

// staleConnectionBytes: a request whose connection failed before this
// much of its body was sent is retried under RetryStaleConnection.
const staleConnectionBytes = 1 << 20

// store sends one STOW-RS request and returns its answer and how many body
// bytes went into the pipe.
func (c *Client) store(ctx context.Context, u string, instances []Instance, header http.Header) (*StoreResponse, int64, error) {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	length, err := multipartLength(mw.Boundary(), instances)
	if err != nil {
		return nil, 0, err
	}
	req, err := c.newRequest(ctx, http.MethodPost, u, pr)
	if err != nil {
		return nil, 0, err
	}
	req.ContentLength = length
	for k, vs := range header {
		req.Header[k] = vs
	}
	req.Header.Set("Content-Type", `multipart/related; type="application/dicom"; boundary=`+mw.Boundary())
	req.Header.Set("Accept", "application/dicom+json")

	cw := &countingWriter{w: pw}
	var writeErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		writeErr = writeParts(cw, instances, mw.Boundary())
		pw.CloseWithError(writeErr)
	}()
	resp, err := c.httpClient().Do(req)
	pr.CloseWithError(errRequestDone) // unblocks the writer if the request ended early
	<-done
	// A write that failed because the transport closed the body (it gave
	// up on the request) is the transport's error, not the instance's.
	if writeErr != nil && !errors.Is(writeErr, errRequestDone) && !errors.Is(writeErr, io.ErrClosedPipe) {
		if resp != nil {
			resp.Body.Close()
		}
		return nil, cw.n, writeErr
	}
	if err != nil {
		return nil, cw.n, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if err != nil {
		return nil, cw.n, fmt.Errorf("reading the STOW-RS answer: %w", err)
	}
	return &StoreResponse{StatusCode: resp.StatusCode, Header: resp.Header, Body: body}, cw.n, nil
}

// countingWriter counts the bytes written through it; read only after the
// writer goroutine has ended.
type countingWriter struct {
	w io.Writer
	n int64
}

func (cw *countingWriter) Write(p []byte) (int, error) {
	n, err := cw.w.Write(p)
	cw.n += int64(n)
	return n, err
}

// InstanceWriteError is the failure of an instance's WriteTo.
type InstanceWriteError struct {
	Index int // position in the request
	Err   error
}

func (e *InstanceWriteError) Error() string {
	return fmt.Sprintf("instance %d of the request: %v", e.Index+1, e.Err)
}
func (e *InstanceWriteError) Unwrap() error { return e.Err }

// Digested is an Instance that knows the SHA-256 (hex) of the bytes its
// WriteTo writes; its part then declares it in a Content-Digest header, for
// a receiver to check (digest.go).
type Digested interface {
	SHA256() string
}

func partHeader(in Instance) textproto.MIMEHeader {
	h := textproto.MIMEHeader{"Content-Type": {"application/dicom"}}
	if d, ok := in.(Digested); ok {
		if v := ContentDigestSHA256(d.SHA256()); v != "" {
			h.Set(HeaderContentDigest, v)
		}
	}
	return h
}

// writeParts writes the multipart body into w (through a bodyBuffer).
// An instance that writes other than its Size bytes is an error: the
// request's Content-Length would be wrong.
func writeParts(w io.Writer, instances []Instance, boundary string) error {
	bw := bufio.NewWriterSize(w, bodyBuffer)
	mw := multipart.NewWriter(bw)
	if err := mw.SetBoundary(boundary); err != nil {
		return err
	}
	for i, in := range instances {
		pw, err := mw.CreatePart(partHeader(in))
		if err != nil {
			return err
		}
		n, err := in.WriteTo(pw)
		if err != nil {
			return &InstanceWriteError{Index: i, Err: err}
		}
		if size := in.Size(); size >= 0 && n != size {
			return &InstanceWriteError{Index: i, Err: fmt.Errorf("wrote %d bytes, its size is %d", n, size)}
		}
	}
	if err := mw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

// multipartLength is the exact length of the body writeParts produces, or
// -1 (chunked) when an instance's size is unknown.
func multipartLength(boundary string, instances []Instance) (int64, error) {
	var framing bytes.Buffer
	mw := multipart.NewWriter(&framing)
	if err := mw.SetBoundary(boundary); err != nil {
		return 0, err
	}
	var n int64
	for _, in := range instances {
		size := in.Size()
		if size < 0 {
			return -1, nil
		}
		if _, err := mw.CreatePart(partHeader(in)); err != nil {
			return 0, err
		}
		n += size
	}
	if err := mw.Close(); err != nil {
		return 0, err
	}
	return n + int64(framing.Len()), nil
}

// StoreAll sends instances in requests of at most batch instances, conc
// requests at a time, and calls check (serialised, in no set order) with
// each request's outcome. The first error check returns stops the requests
// not yet started, cancels those in flight and is returned; without one,
// StoreAll returns when every request is answered, or ctx's error if it
// ended first.
func (c *Client) StoreAll(ctx context.Context, instances []Instance, batch, conc int, check func(batch []Instance, resp *StoreResponse, err error) error) error {
	batch, conc = max(batch, 1), max(conc, 1)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		next     atomic.Int64
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	nBatches := (len(instances) + batch - 1) / batch
	for range conc {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= nBatches {
					return
				}
				part := instances[i*batch : min((i+1)*batch, len(instances))]
				resp, err := c.Store(ctx, "", part, nil)
				mu.Lock()
				if firstErr == nil {
					if cerr := check(part, resp, err); cerr != nil {
						firstErr = cerr
						cancel(cerr)
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return context.Cause(ctx)
}

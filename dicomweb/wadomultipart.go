package dicomweb

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/gin-gonic/gin"
	"golang.org/x/sync/semaphore"

	"github.com/dicom-gateway/gateway/gateway"
)

// copyBufs holds the buffers parts are copied through: big enough that a
// part streams in few writes, pooled so that concurrent retrieves share them.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// part is one part of a multipart/related response, opened only when its
// turn comes so that a study streams with one blob open at a time.
type part struct {
	contentType string
	location    string // Content-Location, "" for none
	length      int64  // Content-Length, < 0 when unknown
	open        func(ctx context.Context) (io.ReadCloser, error)
}

// writeMultipart streams parts as multipart/related; type=partType with a
// random boundary (crypto/rand, from mime/multipart). The first part is
// opened before the status line is written, so a missing first blob is a
// clean error response. Once the response has started, a failure to open or
// read a part (storage gone, blob shorter than its record) aborts the
// connection with http.ErrAbortHandler: the client sees a truncated
// response, never a complete-looking one with an instance missing.
//
// Parts are opened partsOpenedAhead ahead of the one being copied, so that
// an object store's per-request latency overlaps the copy instead of adding
// up part after part; an opened body holds a connection and what the kernel
// buffers for it, never a heap buffer, so memory stays bounded.
func (s *Server) writeMultipart(c *gin.Context, partType string, parts []part) {
	ctx := c.Request.Context()
	ahead := openAhead(ctx, parts, gateway.OverNetwork(s.Blobs))
	defer ahead.close()
	var firstBody io.ReadCloser
	if len(parts) > 0 {
		var err error
		if firstBody, err = ahead.open(0); err != nil {
			s.writeError(c, err)
			return
		}
	}
	mw := multipart.NewWriter(c.Writer)
	c.Header("Content-Type", fmt.Sprintf("%s; type=%q; boundary=%s", mediaMultipart, partType, mw.Boundary()))
	c.Status(http.StatusOK)
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	for i, p := range parts {
		body := firstBody
		if i > 0 {
			var err error
			if body, err = ahead.open(i); err != nil {
				s.abortStream(c, i, err)
			}
		}
		h := textproto.MIMEHeader{"Content-Type": {p.contentType}}
		if p.length >= 0 {
			h.Set("Content-Length", strconv.FormatInt(p.length, 10))
		}
		if p.location != "" {
			h.Set("Content-Location", p.location)
		}
		w, err := mw.CreatePart(h)
		if err != nil {
			body.Close()
			s.abortStream(c, i, err)
		}
		// struct{io.Reader} hides WriterTo, so the copy goes through buf.
		n, err := io.CopyBuffer(w, struct{ io.Reader }{body}, *buf)
		if cerr := body.Close(); err == nil {
			err = cerr
		}
		if err == nil && p.length >= 0 && n != p.length {
			err = fmt.Errorf("part has %d bytes, want %d: %w", n, p.length, io.ErrUnexpectedEOF)
		}
		if err != nil {
			s.abortStream(c, i, err)
		}
		c.Writer.Flush()
	}
	if err := mw.Close(); err != nil {
		s.abortStream(c, len(parts), err)
	}
}

// partsOpenedAhead is how many parts after the one being copied are opened
// in advance.
const partsOpenedAhead = 4

// partsReadAhead is how many parts are opened (and read, when small) ahead
// from a gateway.NetworkStore: enough GETs in flight to keep an object
// store busy while the client is sent one part.
const partsReadAhead = 8

// Parts of up to readAheadMaxPart bytes opened ahead are also read ahead
// into memory, concurrently: an object store then serves several GETs at
// once instead of one after another at the pace of the client, which is
// what brings a whole-study retrieve from S3 near the store's own GET rate.
// readAheadBudget bounds those buffers across every response of the
// process; a part that finds it spent is streamed as before.
const (
	readAheadMaxPart   = 4 << 20
	readAheadMaxMemory = 32 << 20
)

var readAheadBudget = semaphore.NewWeighted(readAheadMaxMemory)

// readAhead reads body's length bytes into a pooled buffer now and returns a
// reader over them whose Close gives the buffer back and releases its
// readAheadSize from readAheadBudget (which the caller took). A read error
// is returned by the first Read, so the copy fails as a streamed one would.
func readAhead(body io.ReadCloser, length int64) io.ReadCloser {
	pooled := readAheadBuffer(length)
	buf := (*pooled)[:length]
	n, err := io.ReadFull(body, buf)
	if err == nil {
		// The part must end where its record says: one more byte is an
		// error too (the copy checks the count only).
		var one [1]byte
		if m, _ := body.Read(one[:]); m > 0 {
			err = fmt.Errorf("part longer than its %d bytes: %w", length, io.ErrUnexpectedEOF)
		}
	}
	body.Close()
	return &readAheadBody{r: io.MultiReader(bytes.NewReader(buf[:n]), errorReader{err}), size: readAheadSize(length), buf: pooled}
}

type readAheadBody struct {
	r        io.Reader
	size     int64
	buf      *[]byte
	released atomic.Bool
}

func (b *readAheadBody) Read(p []byte) (int, error) { return b.r.Read(p) }

// Close gives the buffer back; the body must not be read after it.
func (b *readAheadBody) Close() error {
	if !b.released.Swap(true) {
		b.r = errorReader{io.ErrClosedPipe}
		putReadAheadBuffer(b.buf)
		readAheadBudget.Release(b.size)
	}
	return nil
}

// readAheadPools hold read-ahead buffers by power-of-two size, from 64 KiB
// to readAheadMaxPart, so that reading ahead neither allocates nor clears a
// buffer per part (at a few hundred parts a second that was a visible share
// of the garbage collector's work).
var readAheadPools [7]sync.Pool // 64 KiB << i

func readAheadClass(n int64) int {
	i := 0
	for int64(64<<10)<<i < n {
		i++
	}
	return i
}

// readAheadSize is the size of the buffer a part of n bytes is read into,
// which is what it takes from readAheadBudget.
func readAheadSize(n int64) int64 { return int64(64<<10) << readAheadClass(n) }

func readAheadBuffer(n int64) *[]byte {
	i := readAheadClass(n)
	if b, ok := readAheadPools[i].Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, int64(64<<10)<<i)
	return &b
}

func putReadAheadBuffer(b *[]byte) {
	readAheadPools[readAheadClass(int64(cap(*b)))].Put(b)
}

// errorReader returns err from every Read, or io.EOF when err is nil.
type errorReader struct{ err error }

func (e errorReader) Read([]byte) (int, error) {
	if e.err == nil {
		return 0, io.EOF
	}
	return 0, e.err
}

// opener opens parts ahead of their turn.
type opener struct {
	ctx       context.Context
	readAhead bool
	parts     []part
	pending   []chan openedPart // nil: not started; taken by open
	taken     []bool
}

type openedPart struct {
	body io.ReadCloser
	err  error
}

// openAhead opens parts ahead of their turn and, when readAhead is set (the
// parts come from a gateway.NetworkStore), reads the small ones ahead too.
func openAhead(ctx context.Context, parts []part, readAhead bool) *opener {
	return &opener{ctx: ctx, parts: parts, readAhead: readAhead, pending: make([]chan openedPart, len(parts)), taken: make([]bool, len(parts))}
}

// open returns part i's body (the caller closes it), after starting the
// opens of the parts that follow it.
func (o *opener) open(i int) (io.ReadCloser, error) {
	ahead := partsOpenedAhead
	if o.readAhead {
		ahead = partsReadAhead
	}
	for j := i; j < min(len(o.parts), i+1+ahead); j++ {
		if o.pending[j] == nil {
			ch := make(chan openedPart, 1)
			o.pending[j] = ch
			go func(p part) {
				body, err := p.open(o.ctx)
				if err == nil && o.readAhead && p.length > 0 && p.length <= readAheadMaxPart && readAheadBudget.TryAcquire(readAheadSize(p.length)) {
					body = readAhead(body, p.length)
				}
				ch <- openedPart{body, err}
			}(o.parts[j])
		}
	}
	o.taken[i] = true
	r := <-o.pending[i]
	return r.body, r.err
}

// close closes the bodies opened ahead but never taken (a response cut
// short), in the background: their opens may still be in flight.
func (o *opener) close() {
	for i, ch := range o.pending {
		if ch != nil && !o.taken[i] {
			go func() {
				if r := <-ch; r.body != nil {
					r.body.Close()
				}
			}()
		}
	}
}

// writeSingle streams one body with a known length, for single-part
// representations (application/dicom, one frame).
func (s *Server) writeSingle(c *gin.Context, contentType string, length int64, open func(ctx context.Context) (io.ReadCloser, error)) {
	body, err := open(c.Request.Context())
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.Header("Content-Type", contentType)
	if length >= 0 {
		c.Header("Content-Length", strconv.FormatInt(length, 10))
	}
	c.Status(http.StatusOK)
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	n, err := io.CopyBuffer(c.Writer, struct{ io.Reader }{body}, *buf)
	if cerr := body.Close(); err == nil {
		err = cerr
	}
	if err == nil && length >= 0 && n != length {
		err = fmt.Errorf("body has %d bytes, want %d: %w", n, length, io.ErrUnexpectedEOF)
	}
	if err != nil {
		s.abortStream(c, 0, err)
	}
}

// abortStream logs why a started response is cut short and aborts the
// connection (the client sees truncation, not a complete response).
func (s *Server) abortStream(c *gin.Context, partIndex int, err error) {
	if c.Request.Context().Err() == nil { // not just the client going away
		s.Logger.ErrorContext(c.Request.Context(), "retrieve aborted mid-stream",
			"route", c.FullPath(), "part", partIndex, gateway.LogKeyError, err.Error())
	}
	panic(http.ErrAbortHandler)
}

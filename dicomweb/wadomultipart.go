package dicomweb

import (
	"context"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"

	"github.com/gin-gonic/gin"

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
	ahead := openAhead(ctx, parts, s.svc.Retrieve.OverNetwork())
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
	c.Header("Content-Type", multipartContentType(partType, parts, mw.Boundary()))
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

// multipartContentType is the Content-Type of a multipart/related response
// (PS3.18 8.7.1, 8.7.3.5.2): type is the bare media type of the parts, and
// the transfer syntax, when every part has the same one, is a parameter of
// its own (a study of mixed syntaxes names none: each part says its own).
func multipartContentType(partType string, parts []part, boundary string) string {
	ts := ""
	for i, p := range parts {
		_, pts, _ := strings.Cut(p.contentType, "; transfer-syntax=")
		if i > 0 && pts != ts {
			ts = ""
			break
		}
		ts = pts
	}
	ct := fmt.Sprintf("%s; type=%q", mediaMultipart, partType)
	if ts != "" {
		ct += "; transfer-syntax=" + ts
	}
	return ct + "; boundary=" + boundary
}

// partsOpenedAhead is how many parts after the one being copied are opened
// in advance.
const partsOpenedAhead = 4

// partsOpenedAheadRemote is how many parts are opened ahead from a
// gateway.NetworkStore: enough GETs in flight to keep an object store busy
// while the client is sent one part. An opened GET's first bytes wait in the
// kernel's socket buffers, so this needs no memory of the gateway's own
// (reading them ahead into buffers was measured: no faster).
const partsOpenedAheadRemote = 8

// opener opens parts ahead of their turn.
type opener struct {
	ctx     context.Context
	remote  bool // the parts come from a gateway.NetworkStore
	parts   []part
	pending []chan openedPart // nil: not started; taken by open
	taken   []bool
}

type openedPart struct {
	body io.ReadCloser
	err  error
}

// openAhead opens parts ahead of their turn, more of them when they come
// from a gateway.NetworkStore (remote).
func openAhead(ctx context.Context, parts []part, remote bool) *opener {
	return &opener{ctx: ctx, parts: parts, remote: remote, pending: make([]chan openedPart, len(parts)), taken: make([]bool, len(parts))}
}

// open returns part i's body (the caller closes it), after starting the
// opens of the parts that follow it.
func (o *opener) open(i int) (io.ReadCloser, error) {
	ahead := partsOpenedAhead
	if o.remote {
		ahead = partsOpenedAheadRemote
	}
	for j := i; j < min(len(o.parts), i+1+ahead); j++ {
		if o.pending[j] == nil {
			ch := make(chan openedPart, 1)
			o.pending[j] = ch
			go func(p part) {
				body, err := p.open(o.ctx)
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

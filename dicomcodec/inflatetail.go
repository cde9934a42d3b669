package dicomcodec

import (
	"bufio"
	"compress/flate"
	"compress/zlib"
	"errors"
	"io"
)

// inflateState is what ParseHeader leaves of a deflated instance whose
// header ends at its top-level Pixel Data: the inflater, part-way through
// the deflate stream, for Tail to carry on with. The rest of the instance
// is then inflated as it streams past, never held (PS3.5 A.5 puts the whole
// dataset, pixel data included, inside one deflate stream).
type inflateState struct {
	inflated    *bufio.Reader   // inflated bytes from pos on
	pos         int64           // inflated bytes ParseHeader consumed
	compressed  *bufio.Reader   // what the inflater reads; holds bytes ParseHeader buffered
	source      *countingReader // below compressed: the caller's reader until Tail switches it to its pipe
	maxInflated int64
}

// errTailClosed ends the inflater of a scanner closed before Finish.
var errTailClosed = errors.New("tail scanner closed")

// inflatingTail is the TailScanner of a deflated instance. Write takes the
// instance's own (compressed) bytes; a goroutine started on first use
// inflates them through an io.Pipe, so memory stays at the inflater's
// window and buffers, and checks the inflated bytes with an ordinary
// TailScanner. The pipe makes Write wait until the goroutine has taken the
// bytes, and carries the goroutine's error back to Write.
type inflatingTail struct {
	st     *inflateState
	inner  *TailScanner
	pw     *io.PipeWriter
	done   chan struct{}
	closed bool
	err    error // the goroutine's verdict, read after done
}

func newInflatingTail(h *Header) *inflatingTail {
	inner := &TailScanner{h: h, pos: h.inflate.pos}
	inner.stack = []scanLevel{{state: scanElement, explicit: h.ts.explicit}}
	return &inflatingTail{st: h.inflate, inner: inner}
}

func (t *inflatingTail) start() {
	if t.done != nil {
		return
	}
	pr, pw := io.Pipe()
	t.pw, t.done = pw, make(chan struct{})
	t.st.source.r = pr
	go func() {
		defer close(t.done)
		if err := t.run(); err != nil {
			t.err = err
			pr.CloseWithError(err)
			return
		}
		// Bytes after the end of the deflate stream are not interpreted,
		// but must be taken so that Write does not wait for ever.
		_, _ = io.Copy(io.Discard, t.st.compressed)
	}()
}

// run inflates the rest of the stream into the inner scanner.
func (t *inflatingTail) run() error {
	buf := make([]byte, 32<<10)
	total := t.st.pos
	for {
		n, err := t.st.inflated.Read(buf)
		if n > 0 {
			if total += int64(n); total > t.st.maxInflated {
				return tooLarge("deflated dataset inflates to more than %d bytes", t.st.maxInflated)
			}
			if _, werr := t.inner.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			var ce flate.CorruptInputError
			switch {
			case errors.Is(err, io.ErrUnexpectedEOF):
				return notUnderstood("deflated dataset truncated after %d inflated bytes", total)
			case errors.As(err, &ce) || errors.Is(err, zlib.ErrChecksum) || errors.Is(err, zlib.ErrHeader):
				return notUnderstood("deflated dataset is corrupt: %v", err)
			}
			return err
		}
	}
	_, err := t.inner.Finish()
	return err
}

func (t *inflatingTail) write(p []byte) (int, error) {
	if t.closed {
		return 0, errTailClosed
	}
	t.start()
	return t.pw.Write(p)
}

// finish waits for the inflater to reach the end of what was written.
func (t *inflatingTail) finish() error {
	if t.closed {
		return errTailClosed
	}
	t.start()
	_ = t.pw.Close()
	<-t.done
	t.closed = true
	return t.err
}

func (t *inflatingTail) close() {
	if t.closed || t.done == nil {
		t.closed = true
		return
	}
	_ = t.pw.CloseWithError(errTailClosed)
	<-t.done
	t.closed = true
}

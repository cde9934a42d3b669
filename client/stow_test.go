package client

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// pattern is an instance of n bytes generated while it is written, like
// internal/synth's: nothing of it is held in memory.
type pattern struct {
	n    int64
	seed byte
	fail error // returned after half the bytes when set
}

func (p pattern) Size() int64 { return p.n }

func (p pattern) WriteTo(w io.Writer) (int64, error) {
	buf := make([]byte, 32<<10)
	for i := range buf {
		buf[i] = p.seed + byte(i)
	}
	var done int64
	for done < p.n {
		if p.fail != nil && done >= p.n/2 {
			return done, p.fail
		}
		k, err := w.Write(buf[:min(int64(len(buf)), p.n-done)])
		done += int64(k)
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

func (p pattern) sum() [32]byte {
	h := sha256.New()
	_, _ = p.WriteTo(h)
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// received is what a STOW-RS receiver saw of one request.
type received struct {
	contentLength int64
	bodyBytes     int64
	parts         [][32]byte
	err           error
}

// receiver answers every STOW-RS request 200 after reading it part by
// part (hashing, never keeping, the bytes) and records what it saw.
func receiver(t *testing.T) (*httptest.Server, func() []received) {
	var mu sync.Mutex
	var seen []received
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := received{contentLength: r.ContentLength}
		cr := &countingReader{r: r.Body}
		_, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err == nil {
			mr := multipart.NewReader(cr, params["boundary"])
			for {
				p, perr := mr.NextPart()
				if perr == io.EOF {
					break
				}
				if perr != nil {
					err = perr
					break
				}
				h := sha256.New()
				if _, err = io.Copy(h, p); err != nil {
					break
				}
				var s [32]byte
				copy(s[:], h.Sum(nil))
				rec.parts = append(rec.parts, s)
			}
		}
		_, _ = io.Copy(io.Discard, cr)
		rec.bodyBytes, rec.err = cr.n, err
		mu.Lock()
		seen = append(seen, rec)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/dicom+json")
		fmt.Fprint(w, `{"00081199":{"vr":"SQ","Value":[]}}`)
	}))
	t.Cleanup(ts.Close)
	return ts, func() []received { mu.Lock(); defer mu.Unlock(); return append([]received(nil), seen...) }
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// TestStoreStreamsWithExactLength: the request carries the exact
// Content-Length, every part arrives intact and in order, and sending
// 96 MiB allocates a small fraction of that (the body is streamed, never
// assembled).
func TestStoreStreamsWithExactLength(t *testing.T) {
	ts, seen := receiver(t)
	insts := []Instance{pattern{n: 0, seed: 1}, pattern{n: 1, seed: 2}, pattern{n: 70000, seed: 3}, pattern{n: 96 << 20, seed: 4}}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	resp, err := (&Client{DICOMweb: ts.URL}).Store(t.Context(), "1.2.3", insts, http.Header{HeaderTransferID: {"t1"}})
	runtime.ReadMemStats(&after)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("Store = %+v, %v", resp, err)
	}
	got := seen()
	if len(got) != 1 || got[0].err != nil {
		t.Fatalf("receiver saw %+v", got)
	}
	if got[0].contentLength != got[0].bodyBytes {
		t.Errorf("Content-Length %d, body %d bytes", got[0].contentLength, got[0].bodyBytes)
	}
	if len(got[0].parts) != len(insts) {
		t.Fatalf("%d parts arrived, want %d", len(got[0].parts), len(insts))
	}
	for i, in := range insts {
		if got[0].parts[i] != in.(pattern).sum() {
			t.Errorf("part %d differs", i)
		}
	}
	// The receiver runs in this process too; both sides together stay far
	// below the body's size.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 24<<20 {
		t.Errorf("sending 96 MiB allocated %d MiB: the body is not streamed", alloc>>20)
	}
}

// TestStoreReturnsTheInstancesError: an instance that fails while it is
// written stops the request, and Store returns that failure (findable with
// errors.Is/As), not the transport's.
func TestStoreReturnsTheInstancesError(t *testing.T) {
	ts, seen := receiver(t)
	errDisk := errors.New("disk gone")
	_, err := (&Client{DICOMweb: ts.URL}).Store(t.Context(), "", []Instance{pattern{n: 1000, seed: 1}, pattern{n: 1 << 20, seed: 2, fail: errDisk}}, nil)
	var we *InstanceWriteError
	if !errors.Is(err, errDisk) || !errors.As(err, &we) || we.Index != 1 {
		t.Fatalf("Store = %v, want the second instance's error", err)
	}
	for _, r := range seen() {
		if r.err == nil && len(r.parts) == 2 {
			t.Errorf("the receiver got a complete request: %+v", r)
		}
	}
}

// TestStoreRetriesStaleConnection: the first connection is closed by the
// server as the request arrives (what a server closing an idle kept-alive
// connection does to a request sent on it); with RetryStaleConnection the
// request goes again on a new connection, without it the error is
// returned.
func TestStoreRetriesStaleConnection(t *testing.T) {
	for _, retry := range []bool{true, false} {
		t.Run(fmt.Sprint("retry=", retry), func(t *testing.T) {
			ts, seen := receiver(t)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			drop := &dropFirst{Listener: ln}
			srv := &http.Server{Handler: ts.Config.Handler}
			go func() { _ = srv.Serve(drop) }()
			t.Cleanup(func() { _ = srv.Close() })
			c := &Client{DICOMweb: "http://" + ln.Addr().String(), HTTP: &http.Client{}, RetryStaleConnection: retry}
			resp, err := c.Store(t.Context(), "", []Instance{pattern{n: 5000, seed: 1}}, nil)
			if retry {
				if err != nil || resp.StatusCode != http.StatusOK || len(seen()) != 1 {
					t.Fatalf("Store = %+v, %v; receiver saw %d requests", resp, err, len(seen()))
				}
			} else if err == nil {
				t.Fatalf("Store on a dropped connection without retry = %+v, want an error", resp)
			}
			if got := drop.accepted.Load(); retry && got != 2 {
				t.Errorf("%d connections accepted, want 2", got)
			}
		})
	}
}

// dropFirst closes the first connection it accepts as soon as it is made.
type dropFirst struct {
	net.Listener
	accepted atomic.Int32
}

func (d *dropFirst) Accept() (net.Conn, error) {
	for {
		c, err := d.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if d.accepted.Add(1) == 1 {
			buf := make([]byte, 1)
			_, _ = c.Read(buf) // the request has started
			_ = c.Close()
			continue
		}
		return c, nil
	}
}

// TestStoreAllStopsAtTheFirstError: with one request at a time, check's
// error on the second batch is returned and no later batch is sent.
func TestStoreAllStopsAtTheFirstError(t *testing.T) {
	ts, seen := receiver(t)
	var insts []Instance
	for i := range 10 {
		insts = append(insts, pattern{n: 100, seed: byte(i)})
	}
	errStop := errors.New("stop")
	calls := 0
	err := (&Client{DICOMweb: ts.URL}).StoreAll(t.Context(), insts, 2, 1, func(batch []Instance, resp *StoreResponse, err error) error {
		calls++
		if err != nil || resp.StatusCode != http.StatusOK || len(batch) != 2 {
			t.Errorf("batch %d: %d instances, %+v, %v", calls, len(batch), resp, err)
		}
		if calls == 2 {
			return errStop
		}
		return nil
	})
	if !errors.Is(err, errStop) || calls != 2 || len(seen()) != 2 {
		t.Fatalf("StoreAll = %v after %d checks and %d requests, want errStop after 2", err, calls, len(seen()))
	}

	// Every batch sent when check accepts them all, conc at a time.
	ts2, seen2 := receiver(t)
	if err := (&Client{DICOMweb: ts2.URL}).StoreAll(context.Background(), insts, 3, 4, func([]Instance, *StoreResponse, error) error { return nil }); err != nil {
		t.Fatal(err)
	}
	parts := 0
	for _, r := range seen2() {
		parts += len(r.parts)
	}
	if len(seen2()) != 4 || parts != len(insts) {
		t.Fatalf("%d requests with %d parts, want 4 with %d", len(seen2()), parts, len(insts))
	}
}

// TestAnswer reads referenced (with warnings) and failed instances from
// an object or an array, and refuses what is not JSON.
func TestAnswer(t *testing.T) {
	body := `[{"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1"]},"00081196":{"vr":"US","Value":[45063]}}]},
	 "00081198":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["2"]},"00081197":{"vr":"US","Value":[49152]},"00000902":{"vr":"LO","Value":["why"]}}]}}]`
	a, err := (&StoreResponse{Body: []byte(body)}).Answer()
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Stored) != 1 || a.Stored[0] != (StoredInstance{"1", 0xB007}) || len(a.Failed) != 1 || a.Failed[0] != (FailedInstance{"2", 0xC000, "why"}) {
		t.Fatalf("answer %+v", a)
	}
	if a, err := (&StoreResponse{}).Answer(); err != nil || len(a.Stored)+len(a.Failed) != 0 {
		t.Fatalf("empty answer = %+v, %v", a, err)
	}
	if _, err := (&StoreResponse{Body: []byte("<html>")}).Answer(); err == nil {
		t.Fatal("an HTML answer parsed")
	}
}

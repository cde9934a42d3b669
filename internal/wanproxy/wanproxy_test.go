package wanproxy

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// The tests assert lower bounds only (a link is never faster than its
// delay and cap allow), which a loaded machine cannot break.

// listen starts a TCP server on loopback whose connections are handled by
// handle; it is stopped at the end of the test.
func listen(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

func startProxy(t *testing.T, target string, cfg Config) *Proxy {
	t.Helper()
	p, err := Listen("127.0.0.1:0", target, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestRoundTripTakesAtLeastRTT(t *testing.T) {
	echo := listen(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	const rtt = 60 * time.Millisecond
	p := startProxy(t, echo, Config{RTT: rtt})
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 3 { // every exchange pays the delay, not only the first
		msg := []byte{'p', 'i', 'n', 'g', byte('0' + i)}
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d < rtt {
			t.Errorf("exchange %d took %s, want at least the RTT %s", i, d, rtt)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("echo %q, want %q", got, msg)
		}
	}
}

func TestBandwidthCapHoldsInEachDirection(t *testing.T) {
	const (
		mbit = 40.0    // 5 MB/s
		size = 3 << 20 // 0.63 s at the cap
	)
	payload := randomBytes(size, 7)
	want := sha256.Sum256(payload)
	// The target reads the upload to its end, answers its SHA-256, then
	// sends the payload back.
	target := listen(t, func(c net.Conn) {
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			return
		}
		_, _ = c.Write(h.Sum(nil))
		_, _ = c.Write(payload)
	})
	p := startProxy(t, target, Config{Mbit: mbit, RTT: 2 * time.Millisecond})
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The token bucket lets one chunk through at once; the rest is paced.
	minDuration := time.Duration(float64(size-chunkSize) / (mbit * 1e6 / 8) * float64(time.Second))

	start := time.Now()
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil { // the EOF crosses the proxy as a half-close
		t.Fatal(err)
	}
	var sum [32]byte
	if _, err := io.ReadFull(c, sum[:]); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < minDuration {
		t.Errorf("upload of %d bytes took %s, faster than %g Mbit/s allows (%s)", size, d, mbit, minDuration)
	}
	if sum != want {
		t.Fatalf("the target received different bytes (SHA-256 %x, want %x)", sum, want)
	}

	// The download starts once the target has the whole upload; bytes of
	// it may be on their way before the hash is read, so the bound is on
	// the time since the upload began: both directions, one after the other.
	back, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 2*minDuration {
		t.Errorf("upload then download of %d bytes took %s, faster than %g Mbit/s allows (%s)", len(back), d, mbit, 2*minDuration)
	}
	if !bytes.Equal(back, payload) {
		t.Fatalf("downloaded %d bytes, not the %d sent", len(back), len(payload))
	}
}

func TestCapIsSharedByConnections(t *testing.T) {
	const (
		mbit  = 40.0 // 5 MB/s for both connections together
		size  = 1500 << 10
		conns = 2
	)
	sink := listen(t, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		_, _ = c.Write([]byte{byte(n >> 20)}) // acknowledges the end
	})
	p := startProxy(t, sink, Config{Mbit: mbit})
	payload := randomBytes(size, 3)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", p.Addr())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if _, err := c.Write(payload); err != nil {
				errs <- err
				return
			}
			_ = c.(*net.TCPConn).CloseWrite()
			var ack [1]byte
			if _, err := io.ReadFull(c, ack[:]); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	minDuration := time.Duration(float64(conns*size-chunkSize) / (mbit * 1e6 / 8) * float64(time.Second))
	if d := time.Since(start); d < minDuration {
		t.Errorf("%d connections sent %d bytes each in %s, faster than one %g Mbit/s link allows (%s)", conns, size, d, mbit, minDuration)
	}
}

func TestBufferIsBoundedAndSenderFeelsBackPressure(t *testing.T) {
	const buffer = 256 << 10
	release := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	got := make(chan []byte, 1)
	// The target reads nothing until released: the bytes pile up in the
	// kernel's socket buffers, then in the proxy up to its bound, then
	// the sender blocks.
	target := listen(t, func(c net.Conn) {
		<-release
		b, _ := io.ReadAll(c)
		got <- b
	})
	t.Cleanup(open) // runs before listen's cleanup (LIFO): a failing test does not leave the target waiting
	p := startProxy(t, target, Config{RTT: 10 * time.Millisecond, Buffer: buffer})
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const size = 96 << 20 // more than the kernel buffers of both loopback legs hold
	payload := randomBytes(size, 11)
	written := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		written <- err
	}()
	select {
	case err := <-written:
		t.Fatalf("the sender wrote all %d bytes (%v) while the target read nothing: no back-pressure", size, err)
	case <-time.After(time.Second):
	}
	if peak := p.PeakHeld(); peak > buffer+chunkSize || peak == 0 {
		t.Errorf("the proxy held up to %d bytes of one direction, want between 1 and %d (buffer + one read)", peak, buffer+chunkSize)
	}
	open()
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, payload) {
		t.Fatalf("the target received %d bytes, not the %d sent", len(b), size)
	}
	if peak := p.PeakHeld(); peak > buffer+chunkSize {
		t.Errorf("the proxy held up to %d bytes of one direction, want at most %d", peak, buffer+chunkSize)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		cfg Config
		ok  bool
	}{
		{Config{}, true},
		{Config{RTT: 20 * time.Millisecond, Mbit: 1000}, true},
		{Config{RTT: -time.Millisecond}, false},
		{Config{Mbit: -1}, false},
		{Config{Buffer: -1}, false},
	} {
		if err := tt.cfg.Validate(); (err == nil) != tt.ok {
			t.Errorf("Validate(%+v) = %v, want ok=%v", tt.cfg, err, tt.ok)
		}
	}
	if got, want := (Config{RTT: 20 * time.Millisecond, Mbit: 1000}).buffer(), 2_500_000+1<<20; got != want {
		t.Errorf("buffer of 20 ms × 1000 Mbit/s = %d, want %d (the bandwidth-delay product + 1 MiB)", got, want)
	}
}

// Package wanproxy is a TCP proxy that makes a loopback connection behave
// like a wide-area link between two centres: every byte is held for half
// the round-trip time in each direction, and each direction is paced to a
// bandwidth cap shared by all connections through the proxy. The bytes held
// per connection and direction are bounded (a bandwidth-delay product plus
// a margin), so memory stays bounded and a sender that outruns the link
// feels back-pressure, as it would from a real one.
//
// It emulates what decides a transfer's speed at the application level:
// request/response round trips and the link's capacity. It does not
// emulate TCP's own dynamics on a long path (slow start, window limits,
// loss): each leg of a proxied connection is a loopback TCP connection.
//
// The package imports only the standard library and golang.org/x/time/rate;
// the transfer benchmark (cmd/bench transfer) and its wanproxy subcommand
// use it.
package wanproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// chunkSize is the most one read takes from a socket, and the token
// bucket's burst: a chunk of 64 KiB lasts 0.5 ms at 1 Gbit/s.
const chunkSize = 64 << 10

// Config describes the emulated link.
type Config struct {
	// RTT is the round-trip time: each direction delays every byte by RTT/2.
	RTT time.Duration
	// Mbit is the bandwidth of each direction in 10^6 bits per second, shared
	// by all connections (0: unlimited).
	Mbit float64
	// Buffer bounds the bytes held per connection and direction (0: the
	// bandwidth-delay product Mbit×RTT plus 1 MiB, or 4 MiB when the
	// bandwidth is unlimited). A buffer smaller than the one-way
	// bandwidth-delay product caps one connection below the link rate.
	Buffer int
}

func (c Config) bytesPerSecond() float64 { return c.Mbit * 1e6 / 8 }

func (c Config) buffer() int {
	switch {
	case c.Buffer > 0:
		return c.Buffer
	case c.Mbit <= 0:
		return 4 << 20
	default:
		return int(c.bytesPerSecond()*c.RTT.Seconds()) + 1<<20
	}
}

// Validate rejects negative settings.
func (c Config) Validate() error {
	if c.RTT < 0 || c.Mbit < 0 || c.Buffer < 0 {
		return fmt.Errorf("wanproxy: rtt %s, mbit %g and buffer %d may not be negative", c.RTT, c.Mbit, c.Buffer)
	}
	return nil
}

// Proxy forwards every connection it accepts to Target through the
// emulated link. Close stops it.
type Proxy struct {
	Target string
	cfg    Config
	ln     net.Listener
	// up paces client→target bytes, down target→client, over all connections.
	up, down *rate.Limiter
	ctx      context.Context // ended by Close
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	peak     int // most bytes held by one direction of one connection (tests)
}

// Listen starts a proxy on addr (e.g. "127.0.0.1:0") forwarding to target.
func Listen(addr, target string, cfg Config) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	limiter := func() *rate.Limiter {
		if cfg.Mbit <= 0 {
			return rate.NewLimiter(rate.Inf, chunkSize)
		}
		return rate.NewLimiter(rate.Limit(cfg.bytesPerSecond()), chunkSize)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{Target: target, cfg: cfg, ln: ln, up: limiter(), down: limiter(),
		ctx: ctx, cancel: cancel, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's listening host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Config is the link the proxy emulates.
func (p *Proxy) Config() Config { return p.cfg }

// Close stops listening, cuts every connection and waits for its
// goroutines.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.cancel()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(c)
		}()
	}
}

// track adds c to the connections Close cuts; false once Close has begun.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx.Err() != nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) serve(client net.Conn) {
	if !p.track(client) {
		client.Close()
		return
	}
	defer p.untrack(client)
	var d net.Dialer
	target, err := d.DialContext(p.ctx, "tcp", p.Target)
	if err != nil {
		return
	}
	if !p.track(target) {
		target.Close()
		return
	}
	defer p.untrack(target)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.direction(target, client, p.up) }()
	go func() { defer wg.Done(); p.direction(client, target, p.down) }()
	wg.Wait()
}

// chunk is bytes read from one side, due at the other at release. A chunk
// without data carries the end of the stream: err nil for a clean EOF
// (half-close), else an abort.
type chunk struct {
	data    []byte
	release time.Time
	end     bool
	err     error
}

// line is one direction of one connection: a FIFO of chunks in flight,
// bounded in bytes.
type line struct {
	mu     sync.Mutex
	cond   *sync.Cond
	queue  []chunk
	held   int // bytes in queue
	limit  int
	closed bool // the writer gave up: the reader stops too
}

// direction copies src to dst through the link: this goroutine reads,
// reserves the bytes' transmission on lim (the direction's token bucket)
// and queues them due RTT/2 after their transmission; a second goroutine
// writes each chunk when it is due. Reading waits while the line holds its
// limit, so a sender faster than the link is slowed down.
func (p *Proxy) direction(dst, src net.Conn, lim *rate.Limiter) {
	l := &line{limit: p.cfg.buffer()}
	l.cond = sync.NewCond(&l.mu)
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.deliver(dst, src, l)
	}()
	delay := p.cfg.RTT / 2
	buf := make([]byte, chunkSize)
	for {
		l.mu.Lock()
		for l.held >= l.limit && !l.closed {
			l.cond.Wait()
		}
		closed := l.closed
		l.mu.Unlock()
		if closed {
			break
		}
		n, err := src.Read(buf)
		now := time.Now()
		c := chunk{}
		if n > 0 {
			r := lim.ReserveN(now, n) // n <= chunkSize = burst: always OK
			c.data = append([]byte(nil), buf[:n]...)
			c.release = now.Add(r.DelayFrom(now) + delay)
		}
		if err != nil {
			c.end = true
			if !errors.Is(err, io.EOF) {
				c.err = err
			}
			if c.release.IsZero() {
				c.release = now.Add(delay)
			}
		}
		l.mu.Lock()
		l.queue = append(l.queue, c)
		l.held += n
		if l.held > 0 {
			p.notePeak(l.held)
		}
		l.cond.Broadcast()
		l.mu.Unlock()
		if err != nil {
			break
		}
	}
	<-done
}

// deliver writes the line's chunks to dst as they fall due; at the end of
// the stream it half-closes dst (or cuts both sides after an error).
func (p *Proxy) deliver(dst, src net.Conn, l *line) {
	stop := func() {
		l.mu.Lock()
		l.closed = true
		l.cond.Broadcast()
		l.mu.Unlock()
		// Unblocks the reader's Read; the other direction sees the reset.
		src.Close()
		dst.Close()
	}
	timer := time.NewTimer(0)
	<-timer.C
	for {
		l.mu.Lock()
		for len(l.queue) == 0 && !l.closed {
			l.cond.Wait()
		}
		if len(l.queue) == 0 {
			l.mu.Unlock()
			return
		}
		c := l.queue[0]
		l.queue[0] = chunk{}
		l.queue = l.queue[1:]
		l.mu.Unlock()

		if wait := time.Until(c.release); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-p.ctx.Done():
				stop()
				return
			}
		}
		if len(c.data) > 0 {
			if _, err := dst.Write(c.data); err != nil {
				stop()
				return
			}
		}
		l.mu.Lock()
		l.held -= len(c.data)
		l.cond.Broadcast()
		l.mu.Unlock()
		if c.end {
			if c.err != nil {
				stop()
				return
			}
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			} else {
				dst.Close()
			}
			return
		}
	}
}

func (p *Proxy) notePeak(held int) {
	p.mu.Lock()
	p.peak = max(p.peak, held)
	p.mu.Unlock()
}

// PeakHeld is the most bytes one direction of one connection has held at
// once since the proxy started: at most the buffer plus one read (64 KiB).
func (p *Proxy) PeakHeld() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.peak
}

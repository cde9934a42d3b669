package cluster

import (
	"context"
	"io"
	"net"
	"sync"

	"golang.org/x/time/rate"
)

// Proxy is a TCP proxy on loopback that forwards to Target and limits the
// bytes sent towards it (all connections together) to a rate: a slow
// network link between two centres, so that a transfer lasts long enough
// to be interrupted.
type Proxy struct {
	Target string
	ln     net.Listener
	lim    *rate.Limiter
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
}

// StartProxy listens on a free loopback port and forwards to target at
// most bytesPerSecond towards it (0: unlimited).
func StartProxy(target string, bytesPerSecond int) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	lim := rate.NewLimiter(rate.Inf, 0)
	if bytesPerSecond > 0 {
		lim = rate.NewLimiter(rate.Limit(bytesPerSecond), 64<<10)
	}
	p := &Proxy{Target: target, ln: ln, lim: lim, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c, true) {
			c.Close()
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.track(c, false)
			defer c.Close()
			up, err := net.Dial("tcp", p.Target)
			if err != nil {
				return
			}
			if !p.track(up, true) {
				up.Close()
				return
			}
			defer p.track(up, false)
			defer up.Close()
			done := make(chan struct{})
			go func() {
				_, _ = io.Copy(c, up)
				c.Close()
				close(done)
			}()
			p.copyLimited(up, c)
			up.Close()
			<-done
		}()
	}
}

func (p *Proxy) copyLimited(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if p.lim.Limit() != rate.Inf {
				if werr := p.lim.WaitN(context.Background(), n); werr != nil {
					return
				}
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *Proxy) track(c net.Conn, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		if p.closed {
			return false
		}
		p.conns[c] = true
		return true
	}
	delete(p.conns, c)
	return true
}

// Close stops listening, cuts every connection and waits for the copiers.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

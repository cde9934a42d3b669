package dicomweb

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
)

// Slow and stalled clients. A connection costs a goroutine and buffers, and a
// request may hold a STOW or retrieve slot (backpressure.go), so no client may
// keep one without making progress: the header, every request body and every
// response has a deadline that moves only while bytes flow, and the number of
// open connections is capped. A whole-request ReadTimeout/WriteTimeout is not
// used: a 2 GB upload or retrieve over a slow link must not be cut while it
// progresses.

// Default timeouts (Timeouts) and connection cap (serve flag
// --max-connections).
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultReadTimeout       = time.Minute
	DefaultStowIdleTimeout   = 2 * time.Minute
	DefaultWriteIdleTimeout  = time.Minute
	DefaultIdleTimeout       = 2 * time.Minute
	DefaultMaxConnections    = 1024
)

// stowMinProgress is how many bytes of a STOW-RS body must arrive within
// Timeouts.StowIdle: 64 KiB per 2 minutes is about 550 bytes a second, far
// below any real sender.
const stowMinProgress = 64 << 10

// Timeouts bound how long a client may hold a connection without progress.
// A zero field takes its Default… value; tests set milliseconds.
type Timeouts struct {
	// ReadHeader bounds the request line and headers.
	ReadHeader time.Duration
	// Read bounds the whole body of a request other than STOW-RS (admin
	// JSON, DELETE): such bodies are small, so a client that declares one
	// and does not send it is cut off.
	Read time.Duration
	// StowIdle is the longest a STOW-RS upload may take to send the next
	// stowMinProgress bytes: the deadline moves forward only with progress,
	// so a client trickling a byte now and then is cut off too.
	StowIdle time.Duration
	// WriteIdle is the longest a response may wait for the client to take
	// more bytes; the deadline moves forward with every write, so a viewer
	// that stops reading a retrieve frees its slot after WriteIdle.
	WriteIdle time.Duration
	// Idle bounds a keep-alive connection between requests.
	Idle time.Duration
}

func (t Timeouts) withDefaults() Timeouts {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.ReadHeader, DefaultReadHeaderTimeout)
	def(&t.Read, DefaultReadTimeout)
	def(&t.StowIdle, DefaultStowIdleTimeout)
	def(&t.WriteIdle, DefaultWriteIdleTimeout)
	def(&t.Idle, DefaultIdleTimeout)
	return t
}

// HTTPServer returns the http.Server that serves Handler() with the
// server-level bounds of s.Timeouts (headers, keep-alive) and a 64 KiB header
// limit. The caller adds TLSConfig and serves a listener wrapped by
// LimitListener.
func (s *Server) HTTPServer() *http.Server {
	h := s.Handler()
	t := s.Timeouts.withDefaults()
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.ReadHeader,
		IdleTimeout:       t.Idle,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.Logger.Handler(), slog.LevelWarn),
	}
}

// deadlines is the first middleware of every route: it bounds the request
// body (stow: the route is STOW-RS, whose handler moves the deadline while
// bytes arrive) and makes every response write move a write deadline
// WriteIdle ahead.
func (s *Server) deadlines(stow map[string]bool) gin.HandlerFunc {
	t := s.Timeouts.withDefaults()
	return func(c *gin.Context) {
		rc := http.NewResponseController(c.Writer)
		// The previous request on this connection may have left a write
		// deadline that has passed by now.
		_ = rc.SetWriteDeadline(time.Time{})
		if c.Request.Body != nil && c.Request.Body != http.NoBody && c.Request.ContentLength != 0 {
			if stow[c.Request.Method+" "+c.FullPath()] {
				_ = rc.SetReadDeadline(time.Now().Add(t.StowIdle))
			} else {
				_ = rc.SetReadDeadline(time.Now().Add(t.Read))
				c.Request.Body = &deadlineBody{ReadCloser: c.Request.Body, rc: rc}
			}
		}
		c.Writer = &idleWriter{ResponseWriter: c.Writer, rc: rc, idle: t.WriteIdle, every: min(time.Second, t.WriteIdle/4)}
		c.Next()
	}
}

// refusalDrain is how long the rest of a refused request's body may take
// to arrive before the connection is closed on it.
const refusalDrain = 2 * time.Second

// stopReading bounds what is left of the request's body, for an answer
// given without reading it (a refusal, with Connection: close, which
// net/http sends at once). net/http then reads what remains of the body
// before closing (up to 256 KiB, or all of a chunked body), so that a client
// still sending does not get a reset that destroys the answer; a client
// that never sends it would hold the connection indefinitely. After
// refusalDrain the connection is closed whatever the client does.
func stopReading(c *gin.Context) {
	_ = http.NewResponseController(c.Writer).SetReadDeadline(time.Now().Add(refusalDrain))
}

// deadlineBody clears the read deadline once the body has been read to its
// end. net/http then keeps reading the connection in the background to
// notice a client that hangs up, and a deadline passing there would cancel
// the request's context in the middle of a long response.
type deadlineBody struct {
	io.ReadCloser
	rc *http.ResponseController
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) {
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// idleWriter moves the connection's write deadline idle ahead before each
// write (at most once per every), so a response is cut only when the client
// has taken no bytes for idle, however long the whole response takes. A
// write that fails on the deadline ends the handler's copy, which frees its
// retrieve slot; net/http then closes the connection.
type idleWriter struct {
	gin.ResponseWriter
	rc       *http.ResponseController
	idle     time.Duration
	every    time.Duration
	extended time.Time
}

func (w *idleWriter) extend() {
	if now := time.Now(); now.Sub(w.extended) >= w.every {
		_ = w.rc.SetWriteDeadline(now.Add(w.idle))
		w.extended = now
	}
}

func (w *idleWriter) Write(p []byte) (int, error) {
	w.extend()
	return w.ResponseWriter.Write(p)
}

func (w *idleWriter) WriteString(v string) (int, error) {
	w.extend()
	return w.ResponseWriter.WriteString(v)
}

func (w *idleWriter) Flush() {
	w.extend()
	w.ResponseWriter.Flush()
}

// Unwrap lets http.ResponseController reach the connection.
func (w *idleWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// LimitListener caps the connections served at once at s.MaxConnections (0:
// no cap). A connection beyond the cap is closed as soon as it is accepted,
// rather than left waiting in the kernel's backlog behind clients that may
// never finish: the client sees the connection closed at once and retries,
// as it does for a 503 (counted in gateway_http_connections_refused_total).
func (s *Server) LimitListener(ln net.Listener) net.Listener {
	if s.MaxConnections <= 0 {
		return ln
	}
	s.defaults()
	open := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "gateway_http_connections_open",
		Help: "Client connections open, bounded by --max-connections.",
	})
	refused := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gateway_http_connections_refused_total",
		Help: "Client connections closed on accept because --max-connections were open.",
	})
	open = registerOr(s.Registerer, open)
	refused = registerOr(s.Registerer, refused)
	return &connLimitListener{Listener: ln, slots: make(chan struct{}, s.MaxConnections), open: open, refused: refused, logger: s.Logger}
}

// registerOr registers c, or returns the collector already registered under
// its name (a second listener of the same server).
func registerOr[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
	}
	return c
}

type connLimitListener struct {
	net.Listener
	slots   chan struct{}
	open    prometheus.Gauge
	refused prometheus.Counter
	logger  *slog.Logger

	mu         sync.Mutex
	lastWarned time.Time
}

func (l *connLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			l.open.Inc()
			return &limitedConn{Conn: c, release: l.release}, nil
		default:
			// Counted before the close: whoever sees the connection end
			// (a client, a test) then also sees it counted.
			l.refused.Inc()
			_ = c.Close()
			l.warn()
		}
	}
}

func (l *connLimitListener) release() {
	l.open.Dec()
	<-l.slots
}

// warn logs refusals at most once a minute: a flood must not flood the log.
func (l *connLimitListener) warn() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := time.Now(); now.Sub(l.lastWarned) >= time.Minute {
		l.lastWarned = now
		l.logger.Warn("connection refused: --max-connections are open", "max_connections", cap(l.slots))
	}
}

// limitedConn gives its slot back when closed (once, however often Close is
// called).
type limitedConn struct {
	net.Conn
	release func()
	once    sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite lets net/http half-close before closing, so that the client
// reads a final answer (a 401 on an unread body) instead of a reset.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// ReadFrom keeps sendfile for responses copied from files.
func (c *limitedConn) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(c.Conn, r)
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/dimse"
	"github.com/dicom-gateway/gateway/gateway"
)

// runServe is `gateway serve`: parse the configuration, start, wait for
// SIGINT/SIGTERM, then shut down gracefully.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseServeConfig(args, os.Getenv, stderr)
	if err != nil {
		return err
	}
	m := NewMain(cfg, newLogger(stderr, cfg.LogLevel))
	if err := m.Run(ctx); err != nil {
		_ = m.Close(context.Background())
		return err
	}
	<-ctx.Done()
	m.Logger.Info("shutting down", "timeout", cfg.ShutdownTimeout.String())
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	return m.Close(shutdownCtx)
}

// newLogger builds the JSON logger every package receives; ContextHandler
// adds the request ID to each line logged with a request's context, and
// gateway.RedactLogAttr withholds a peer's words (they may name a patient).
func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(dicomweb.ContextHandler{Handler: slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l, ReplaceAttr: gateway.RedactLogAttr})})
}

// Main is a running gateway: its backends, services and HTTP server. Tests
// build one with NewMain and a Config whose Listen is 127.0.0.1:0, call Run,
// read Addr, and Close it.
type Main struct {
	Config *Config
	Logger *slog.Logger

	// Set by Run.
	Addr     string // the address actually listened on
	Backends *Backends
	// Services are the use cases every front end calls (wireServices).
	Services  *gateway.Services
	Server    *dicomweb.Server
	Transfers *gateway.Transfers
	// AuditExporter is set when audit events are exported to syslog.
	AuditExporter *gateway.SyslogExporter
	// Dicom is the DIMSE listener when --dicom-listen is set; DicomAddr
	// the address it listens on.
	Dicom        *dimse.Server
	DicomAddr    string
	DicomTLSAddr string // --dicom-tls-listen's address

	httpServer *http.Server
	listener   net.Listener
	serveDone  chan error
	closeOnce  sync.Once
	closeErr   error
}

// NewMain returns a Main for cfg that logs to logger.
func NewMain(cfg *Config, logger *slog.Logger) *Main {
	return &Main{Config: cfg, Logger: logger}
}

// Run opens the backends, starts the background services and begins serving
// HTTP. It returns once the listener is bound (so a bind error is reported
// synchronously); ctx bounds start-up only.
func (m *Main) Run(ctx context.Context) error {
	cfg := m.Config
	auth, err := dicomweb.NewAuthenticator(cfg.File.Auth)
	if err != nil {
		return err
	}
	tlsConf, err := dicomweb.ServerTLS(cfg.File.TLS, cfg.File.Auth)
	if err != nil {
		return err
	}
	rateLimit, err := dicomweb.NewRateLimiter(cfg.File.RateLimit)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	if err := m.startAuditExport(); err != nil {
		return err
	}
	b, err := OpenBackends(ctx, cfg, m.Logger, reg)
	if err != nil {
		return err
	}
	b.RunAuditArchive()
	b.StartBackgroundChecks(m.Logger)
	m.Backends = b

	m.Services = wireServices(m, b, reg)
	if err := wireIdentity(m); err != nil {
		return err
	}
	m.Server = dicomweb.New(dicomweb.Config{
		Services:              m.Services,
		Auth:                  auth,
		RateLimit:             rateLimit,
		TrustedProxies:        cfg.File.TrustedProxies,
		Ready:                 b.Ready,
		PublicBaseURL:         cfg.PublicBaseURL,
		Limits:                dicomweb.Limits{MaxRequestBytes: cfg.MaxRequestBytes, MaxParts: cfg.MaxStowParts},
		MaxConcurrentStow:     cfg.MaxConcurrentStow,
		MaxConcurrentRetrieve: cfg.MaxConcurrentRetrieve,
		MaxConnections:        cfg.MaxConnections,
		CORSOrigins:           splitList(cfg.CORSOrigins),
		Logger:                m.Logger,
		Registerer:            reg,
		Gatherer:              reg,
		Mounts:                fhirMounts(m),
	})

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", cfg.Listen, err)
	}
	m.Addr = ln.Addr().String()
	m.listener = m.Server.LimitListener(ln)
	ln = m.listener
	// No whole-request ReadTimeout/WriteTimeout: a 2 GB STOW over a slow link
	// must not be cut while bytes flow. Slow, stalled and idle clients are
	// bounded by the header, body, per-write and idle deadlines of
	// dicomweb.Timeouts and by --max-connections.
	m.httpServer = m.Server.HTTPServer()
	m.httpServer.TLSConfig = tlsConf
	m.serveDone = make(chan error, 1)
	go func() {
		if tlsConf != nil {
			m.serveDone <- m.httpServer.ServeTLS(ln, "", "")
			return
		}
		m.serveDone <- m.httpServer.Serve(ln)
	}()
	if err := m.startDicom(); err != nil {
		return err
	}
	if err := m.Transfers.Run(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("start transfer workers: %w", err)
	}
	if p := m.Services.Retention.Policy; p.Enabled() {
		m.Services.Retention.Start(ctx)
		m.Logger.Info("retention runner started", "interval", p.RunInterval().String(), "dry_run", p.DryRun,
			"max_age", p.MaxAge.String(), "max_bytes", p.MaxBytes, "rules", len(p.Rules))
	}
	m.Logger.Info("gateway listening", "addr", m.Addr, "name", cfg.Name,
		"blob_store", b.BlobKind, "state", b.StateKind, "auth", auth != nil, "tls", tlsConf != nil)
	m.warnInsecurePeers(cfg.File.Peers)
	m.warnUnkeyedAudit()
	return nil
}

// startAuditExport starts the syslog exporter when audit_syslog is
// configured, warning when patient IDs would cross a network in clear text.
func (m *Main) startAuditExport() error {
	c := m.Config.File.AuditSyslog
	if c.URL == "" {
		return nil
	}
	tlsConf, err := dicomweb.ClientTLSConfig(c.TLS)
	if err != nil {
		return fmt.Errorf("audit_syslog.tls: %w", err)
	}
	e := &gateway.SyslogExporter{URL: c.URL, TLS: tlsConf, QueueSize: c.QueueSize, Logger: m.Logger}
	if err := e.Start(); err != nil {
		return err
	}
	if u, err := url.Parse(c.URL); err == nil && u.Scheme != "tls" {
		if ip, err := netip.ParseAddr(u.Hostname()); (err != nil && u.Hostname() != "localhost") || (err == nil && !ip.IsLoopback()) {
			m.Logger.Warn("audit events are exported without TLS: they carry patient IDs; use tls:// across a network", "receiver", u.Host)
		}
	}
	m.AuditExporter = e
	return nil
}

// Close drains HTTP (in-flight requests finish until ctx ends), stops the
// background services, then closes the backends. Safe to call more than once.
func (m *Main) Close(ctx context.Context) error {
	m.closeOnce.Do(func() {
		var errs []error
		if m.httpServer != nil {
			if err := m.httpServer.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("http shutdown: %w", err))
			}
			if err := <-m.serveDone; err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs = append(errs, err)
			}
		}
		if err := m.closeDicom(ctx); err != nil {
			errs = append(errs, err)
		}
		if m.Transfers != nil {
			// Unfinished transfers stay unacknowledged in the queue, for
			// this gateway's next start or another replica.
			if err := m.Transfers.Close(ctx); err != nil {
				errs = append(errs, fmt.Errorf("stop transfer workers: %w", err))
			}
		}
		if m.Services != nil && m.Services.Retention != nil {
			// A deletion under way completes; the next run goes on.
			if err := m.Services.Retention.Close(ctx); err != nil {
				errs = append(errs, err)
			}
		}
		if m.AuditExporter != nil {
			// After the last request and transfer: their events are queued.
			// A receiver that is down gets a few seconds, not the shutdown.
			ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if err := m.AuditExporter.Close(ectx); err != nil {
				errs = append(errs, err)
			}
			cancel()
		}
		if m.Backends != nil {
			errs = append(errs, m.Backends.Close(ctx))
		}
		m.closeErr = errors.Join(errs...)
	})
	return m.closeErr
}

var _ gateway.Pinger = (*pingFunc)(nil)

// pingFunc adapts a function to gateway.Pinger.
type pingFunc func(ctx context.Context) error

func (f pingFunc) Ping(ctx context.Context) error { return f(ctx) }

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

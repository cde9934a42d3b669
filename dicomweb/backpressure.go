package dicomweb

import (
	"fmt"
	"net/http"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dicom-gateway/gateway/gateway"
)

// Default bounds on requests in flight (serve flags --max-concurrent-stow
// and --max-concurrent-retrieve).
const (
	DefaultMaxConcurrentStow     = 64
	DefaultMaxConcurrentRetrieve = 256
)

// Backpressure: each STOW-RS request holds an S3 part buffer and a
// storage connection, each WADO-RS retrieve a storage stream. When clients
// send faster than storage absorbs, requests pile up inside the gateway;
// beyond a bound the gateway answers 503 with Retry-After at once, before
// reading the body, instead of queueing unbounded work in memory. A client
// that sends "Expect: 100-continue" then sends no body at all.

// inflight is a counting semaphore for one class of requests.
type inflight struct {
	class string
	slots chan struct{}
}

// concurrencyLimits returns, per "METHOD path" of the route table, the
// middleware that bounds the class the route belongs to: "stow" (every
// route of stowRoutes) and "retrieve" (the GET routes of wadoRoutes). A
// class whose bound is 0 or less is not limited.
func (s *Server) concurrencyLimits(base string) map[string]gin.HandlerFunc {
	inFlight := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "gateway_http_inflight_requests",
		Help: "Requests being served, by class (stow, retrieve), for the bounds --max-concurrent-stow and --max-concurrent-retrieve.",
	}, []string{"class"})
	shed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gateway_http_shed_total",
		Help: "Requests answered 503 at once because their class was at its concurrency bound.",
	}, []string{"class"})
	if s.Registerer != nil {
		s.Registerer.MustRegister(inFlight, shed)
	}
	out := map[string]gin.HandlerFunc{}
	add := func(class string, limit int, routes []route, method string) {
		if limit <= 0 {
			return
		}
		l := &inflight{class: class, slots: make(chan struct{}, limit)}
		h := s.limit(l, inFlight.WithLabelValues(class), shed.WithLabelValues(class))
		for _, rt := range routes {
			if method == "" || rt.method == method {
				out[rt.method+" "+rt.path] = h
			}
		}
	}
	add("stow", s.MaxConcurrentStow, s.stowRoutes(base), "")
	add("retrieve", s.MaxConcurrentRetrieve, s.wadoRoutes(base), http.MethodGet)
	return out
}

// limit takes a slot of l for the rest of the chain, or answers 503 with
// Retry-After (writeError) when none is free.
func (s *Server) limit(l *inflight, gauge prometheus.Gauge, shed prometheus.Counter) gin.HandlerFunc {
	return func(c *gin.Context) {
		select {
		case l.slots <- struct{}{}:
		default:
			shed.Inc()
			// The body stays unread: close the connection after the answer
			// rather than drain a large upload.
			c.Header("Connection", "close")
			s.writeError(c, fmt.Errorf("the gateway is busy: %d %s requests in progress, try again later: %w",
				cap(l.slots), l.class, gateway.ErrUnavailable))
			return
		}
		gauge.Inc()
		defer func() {
			gauge.Dec()
			<-l.slots
		}()
		c.Next()
	}
}

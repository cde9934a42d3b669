package dicomweb

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dicom-gateway/gateway/gateway"
)

// retentionRoutes serve legal holds and the retention policy to admins:
// PUT, GET and DELETE base/studies/{study}/hold, GET base/holds, GET
// base/retention/plan (what a run would delete now, deleting nothing) and
// POST base/retention/run (run the policy now, as the runner would).
func (s *Server) retentionRoutes(base string) []route {
	return []route{
		{http.MethodPut, base + "/studies/:study/hold", gateway.RoleAdmin, s.handleHoldSet},
		{http.MethodGet, base + "/studies/:study/hold", gateway.RoleAdmin, s.handleHoldShow},
		{http.MethodDelete, base + "/studies/:study/hold", gateway.RoleAdmin, s.handleHoldClear},
		{http.MethodGet, base + "/holds", gateway.RoleAdmin, s.handleHoldList},
		{http.MethodGet, base + "/retention/plan", gateway.RoleAdmin, s.handleRetentionPlan},
		{http.MethodPost, base + "/retention/run", gateway.RoleAdmin, s.handleRetentionRun},
	}
}

// holdRequest is the body of PUT .../hold.
type holdRequest struct {
	Reason string `json:"reason"`
}

// handleHoldSet answers PUT /studies/{study}/hold {"reason":"…"} with the
// hold stored (200), replacing one already there.
func (s *Server) handleHoldSet(c *gin.Context) {
	if err := gateway.ValidateUID(c.Param("study")); err != nil {
		s.writeError(c, fmt.Errorf("study: %w", err))
		return
	}
	if mt, _, err := mime.ParseMediaType(c.GetHeader("Content-Type")); err != nil || mt != "application/json" {
		s.writeError(c, fmt.Errorf("Content-Type %q: the admin API takes application/json: %w", truncate(c.GetHeader("Content-Type"), 100), errUnsupportedMediaType))
		return
	}
	var req holdRequest
	dec := json.NewDecoder(io.LimitReader(c.Request.Body, 16<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		s.writeError(c, fmt.Errorf("body: want {\"reason\":\"…\"}: %v: %w", err, gateway.ErrInvalid))
		return
	}
	h, err := s.svc.Retention.SetHold(c.Request.Context(), s.caller(c), c.Param("study"), req.Reason)
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, h)
}

func (s *Server) handleHoldShow(c *gin.Context) {
	h, err := s.svc.Retention.Hold(c.Request.Context(), c.Param("study"))
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, h)
}

// handleHoldClear answers DELETE /studies/{study}/hold: 204, or 404 when
// the study has no hold.
func (s *Server) handleHoldClear(c *gin.Context) {
	if err := s.svc.Retention.ClearHold(c.Request.Context(), s.caller(c), c.Param("study")); err != nil {
		s.writeError(c, err)
		return
	}
	c.Status(http.StatusNoContent)
}

// handleHoldList answers GET /holds: {"holds":[…]}.
func (s *Server) handleHoldList(c *gin.Context) {
	hs, err := s.svc.Retention.ListHolds(c.Request.Context())
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"holds": hs})
}

// handleRetentionPlan answers GET /retention/plan with what a run would
// delete now and which due studies it would keep, and why.
func (s *Server) handleRetentionPlan(c *gin.Context) {
	p, err := s.svc.Retention.Plan(c.Request.Context())
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, p)
}

// handleRetentionRun answers POST /retention/run with the run's report
// (with dry_run in the policy, nothing is deleted).
func (s *Server) handleRetentionRun(c *gin.Context) {
	rep, err := s.svc.Retention.RunOnce(c.Request.Context())
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, rep)
}

// RetentionCollector exports the retention metrics: what the gateway holds
// (asked of the index at each scrape: two counters, no walk) and, since
// start, what this process's runs deleted, reclaimed and kept.
type RetentionCollector struct {
	r                                                   *gateway.Retention
	heldBytes, heldStudies, reclaimed, deleted, skipped *prometheus.Desc
	runs, lastRun                                       *prometheus.Desc
}

// NewRetentionCollector returns the collector for r; register it with
// reg.MustRegister.
func NewRetentionCollector(r *gateway.Retention) *RetentionCollector {
	return &RetentionCollector{
		r:           r,
		heldBytes:   prometheus.NewDesc("gateway_retention_held_bytes", "Bytes of the instances the index lists (what retention's max_bytes is compared with).", nil, nil),
		heldStudies: prometheus.NewDesc("gateway_retention_held_studies", "Studies the index lists.", nil, nil),
		reclaimed:   prometheus.NewDesc("gateway_retention_reclaimed_bytes_total", "Bytes freed by retention deletions since start.", nil, nil),
		deleted:     prometheus.NewDesc("gateway_retention_deleted_studies_total", "Studies deleted by retention since start.", nil, nil),
		skipped:     prometheus.NewDesc("gateway_retention_skipped_studies_total", "Due studies retention kept since start, by reason (held: a legal hold; transfer_pending: a transfer not completed and verified; received_since_planned: an instance arrived after the run planned the study; under_cap: due by max_bytes only, and stored bytes fell under it during the run).", []string{"reason"}, nil),
		runs:        prometheus.NewDesc("gateway_retention_runs_total", "Retention runs this process completed since start.", nil, nil),
		lastRun:     prometheus.NewDesc("gateway_retention_last_run_timestamp_seconds", "When this process last completed a retention run (Unix time; 0: never).", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (rc *RetentionCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{rc.heldBytes, rc.heldStudies, rc.reclaimed, rc.deleted, rc.skipped, rc.runs, rc.lastRun} {
		ch <- d
	}
}

// Collect implements prometheus.Collector; an index that does not answer
// within a short deadline only leaves the held series out.
func (rc *RetentionCollector) Collect(ch chan<- prometheus.Metric) {
	if rc.r.Usage != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if t, err := rc.r.Usage.UsageTotals(ctx); err == nil {
			ch <- prometheus.MustNewConstMetric(rc.heldBytes, prometheus.GaugeValue, float64(t.Bytes))
			ch <- prometheus.MustNewConstMetric(rc.heldStudies, prometheus.GaugeValue, float64(t.Studies))
		}
		cancel()
	}
	st := rc.r.Stats()
	ch <- prometheus.MustNewConstMetric(rc.reclaimed, prometheus.CounterValue, float64(st.ReclaimedBytes))
	ch <- prometheus.MustNewConstMetric(rc.deleted, prometheus.CounterValue, float64(st.DeletedStudies))
	for _, reason := range []string{gateway.RetentionSkipHeld, gateway.RetentionSkipTransfer, gateway.RetentionSkipReceived, gateway.RetentionSkipUnderCap} {
		ch <- prometheus.MustNewConstMetric(rc.skipped, prometheus.CounterValue, float64(st.Skipped[reason]), reason)
	}
	ch <- prometheus.MustNewConstMetric(rc.runs, prometheus.CounterValue, float64(st.Runs))
	last := 0.0
	if !st.LastRun.IsZero() {
		last = float64(st.LastRun.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(rc.lastRun, prometheus.GaugeValue, last)
}

package dicomweb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dicom-gateway/gateway/gateway"
)

// transferRoutes serves the transfer admin API (DESIGN.md): create, list
// and show transfers and list peers with role transfer; cancel and retry
// with role admin; and the SHA-256 of stored instances with role transfer,
// which a sending gateway reads to verify what arrived here.
func (s *Server) transferRoutes(base string) []route {
	return []route{
		{http.MethodPost, base + "/transfers", gateway.RoleTransfer, s.handleTransferCreate},
		{http.MethodGet, base + "/transfers", gateway.RoleTransfer, s.handleTransferList},
		{http.MethodGet, base + "/transfers/:id", gateway.RoleTransfer, s.handleTransferShow},
		{http.MethodPost, base + "/transfers/:id/cancel", gateway.RoleAdmin, s.handleTransferCancel},
		{http.MethodPost, base + "/transfers/:id/retry", gateway.RoleAdmin, s.handleTransferRetry},
		{http.MethodGet, base + "/peers", gateway.RoleTransfer, s.handlePeers},
		{http.MethodGet, base + "/instances/:sop/sha256", gateway.RoleTransfer, s.handleInstanceSHA256},
		{http.MethodGet, base + "/studies/:study/sha256", gateway.RoleTransfer, s.handleStudySHA256},
	}
}

// transfersOrUnavailable answers 503 when transfers are not configured.
func (s *Server) transfersOrUnavailable(c *gin.Context) *gateway.Transfers {
	if s.svc.Transfers == nil {
		s.writeError(c, fmt.Errorf("transfers are not configured on this gateway: %w", gateway.ErrUnavailable))
		return nil
	}
	return s.svc.Transfers
}

func (s *Server) handleTransferCreate(c *gin.Context) {
	tr := s.transfersOrUnavailable(c)
	if tr == nil {
		return
	}
	var req gateway.CreateTransfer
	dec := json.NewDecoder(io.LimitReader(c.Request.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		s.writeError(c, fmt.Errorf("body: want {\"study_uid\",\"destination\",\"priority\"}: %v: %w", err, gateway.ErrInvalid))
		return
	}
	t, err := tr.Create(c.Request.Context(), req)
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusAccepted, t)
}

func (s *Server) handleTransferList(c *gin.Context) {
	tr := s.transfersOrUnavailable(c)
	if tr == nil {
		return
	}
	f := gateway.TransferFilter{
		State:       gateway.TransferState(c.Query("state")),
		StudyUID:    c.Query("study_uid"),
		Destination: c.Query("destination"),
		Direction:   c.Query("direction"),
	}
	if v := c.Query("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			s.writeError(c, fmt.Errorf("limit %q: want 1 to 10000: %w", v, gateway.ErrInvalid))
			return
		}
		f.Limit = n
	}
	ts, err := tr.List(c.Request.Context(), f)
	if err != nil {
		s.writeError(c, err)
		return
	}
	if ts == nil {
		ts = []*gateway.Transfer{}
	}
	c.JSON(http.StatusOK, gin.H{"transfers": ts})
}

func (s *Server) handleTransferShow(c *gin.Context) {
	tr := s.transfersOrUnavailable(c)
	if tr == nil {
		return
	}
	t, err := tr.Get(c.Request.Context(), c.Param("id"))
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, t)
}

func (s *Server) handleTransferCancel(c *gin.Context) {
	tr := s.transfersOrUnavailable(c)
	if tr == nil {
		return
	}
	t, err := tr.Cancel(c.Request.Context(), c.Param("id"))
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, t)
}

func (s *Server) handleTransferRetry(c *gin.Context) {
	tr := s.transfersOrUnavailable(c)
	if tr == nil {
		return
	}
	t, err := tr.Retry(c.Request.Context(), c.Param("id"))
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusAccepted, t)
}

// peerView is a peer as the API shows it: never its secrets (the Secret
// fields do not marshal; a password in a URL, refused at config load, is
// redacted all the same).
type peerView struct {
	gateway.Peer
	Auth string `json:"auth"`
}

func newPeerView(p gateway.Peer) peerView {
	p.URL = gateway.RedactURL(p.URL)
	if p.AdminURL != "" {
		p.AdminURL = gateway.RedactURL(p.AdminURL)
	}
	return peerView{Peer: p, Auth: p.AuthMethod()}
}

func (s *Server) handlePeers(c *gin.Context) {
	peers := []peerView{}
	if s.svc.Transfers != nil {
		for _, p := range s.svc.Transfers.Peers {
			peers = append(peers, newPeerView(p))
		}
	}
	c.JSON(http.StatusOK, gin.H{"peers": peers})
}

func (s *Server) handleInstanceSHA256(c *gin.Context) {
	recompute := c.Query("recompute") == "true"
	d, err := s.svc.Verify.InstanceSHA256(c.Request.Context(), s.caller(c), c.Param("sop"), recompute)
	if err != nil {
		s.writeSHA256Error(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"sop_instance_uid": d.SOPInstanceUID, "study_uid": d.StudyUID, "size": d.Size, "sha256": d.SHA256})
}

func (s *Server) handleStudySHA256(c *gin.Context) {
	study := c.Param("study")
	recompute := c.Query("recompute") == "true"
	sums, err := s.svc.Verify.StudySHA256(c.Request.Context(), s.caller(c), study, recompute)
	if err != nil {
		s.writeSHA256Error(c, err)
		return
	}
	source := "index"
	if recompute {
		source = "storage"
	}
	c.JSON(http.StatusOK, studySHA256{StudyUID: study, Source: source, Instances: sums})
}

// writeSHA256Error answers err; a recompute refused because enough are
// running (gateway.ErrBusy: 429) says when to retry.
func (s *Server) writeSHA256Error(c *gin.Context, err error) {
	if errors.Is(err, gateway.ErrBusy) {
		c.Header("Retry-After", strconv.Itoa(int(gateway.RecomputeRetryAfter/time.Second)))
	}
	s.writeError(c, err)
}

// TransferCollector exports the transfer metrics on a Prometheus registry:
// queue depth by priority (one Depth call per scrape), and counters since
// start of the transfers this process moved into each state, bytes sent and
// automatic retries per peer, which gateway.Transfers counts as they happen,
// so that a scrape lists no transfers.
type TransferCollector struct {
	t                                *gateway.Transfers
	depthDesc, changes, bytes, retry *prometheus.Desc
}

// NewTransferCollector returns the collector for t; register it with
// reg.MustRegister.
func NewTransferCollector(t *gateway.Transfers) *TransferCollector {
	return &TransferCollector{
		t:         t,
		depthDesc: prometheus.NewDesc("gateway_transfer_queue_depth", "Transfers waiting to be handed to a worker, by priority.", []string{"priority"}, nil),
		changes:   prometheus.NewDesc("gateway_transfer_state_changes_total", "Outgoing transfers this process moved into each state since start (created, retried or deferred: queued; started: running; ended: completed, failed, cancelled).", []string{"state"}, nil),
		bytes:     prometheus.NewDesc("gateway_transfer_sent_bytes_total", "Bytes of instances confirmed by each peer since start.", []string{"peer"}, nil),
		retry:     prometheus.NewDesc("gateway_transfer_retries_total", "Automatic transfer retries after a temporary failure, per peer, since start.", []string{"peer"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (tc *TransferCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- tc.depthDesc
	ch <- tc.changes
	ch <- tc.bytes
	ch <- tc.retry
}

// Collect implements prometheus.Collector; the queue is asked for its depth
// with a short deadline, and a failing queue only leaves that series out.
func (tc *TransferCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if d, err := tc.t.Queue.Depth(ctx); err == nil {
		for p, n := range d {
			ch <- prometheus.MustNewConstMetric(tc.depthDesc, prometheus.GaugeValue, float64(n), string(p))
		}
	}
	stats := tc.t.Stats()
	for _, st := range gateway.TransferStates() {
		ch <- prometheus.MustNewConstMetric(tc.changes, prometheus.CounterValue, float64(stats.StateChanges[st]), string(st))
	}
	for _, p := range tc.t.Peers {
		ch <- prometheus.MustNewConstMetric(tc.bytes, prometheus.CounterValue, float64(stats.BytesSent[p.Name]), p.Name)
		ch <- prometheus.MustNewConstMetric(tc.retry, prometheus.CounterValue, float64(stats.Retries[p.Name]), p.Name)
	}
}

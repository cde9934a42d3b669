package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"
)

// Peer is another centre's DICOMweb endpoint: this gateway, Orthanc with its
// DICOMweb plugin, or any STOW-RS server. It is one entry of the peers: list
// of the --config YAML.
type Peer struct {
	Name string `yaml:"name" json:"name"`
	// URL is the peer's DICOMweb root, e.g. http://127.0.0.1:8081/dicomweb.
	URL string `yaml:"url" json:"url"`
	// Token is sent as "Authorization: Bearer"; Username and Password as
	// basic auth instead. At most one of the two.
	Token    Secret  `yaml:"token" json:"-"`
	Username string  `yaml:"username" json:"username,omitempty"`
	Password Secret  `yaml:"password" json:"-"`
	TLS      PeerTLS `yaml:"tls" json:"tls"`
	// MaxParallel bounds the concurrent requests this gateway makes to the
	// peer (default 4).
	MaxParallel int `yaml:"max_parallel" json:"max_parallel"`
	// MaxRequestBytes bounds one STOW-RS request (default 64 MiB); an
	// instance larger than it goes alone in its own request.
	MaxRequestBytes int64 `yaml:"max_request_bytes" json:"max_request_bytes"`
	// Gateway says the peer runs this gateway software, so after sending the
	// SHA-256 of every instance it stored is compared with ours through its
	// admin API (AdminURL, by default URL with /dicomweb replaced by /api/v1).
	// The peer's credential then needs the transfer role too.
	Gateway  bool   `yaml:"gateway" json:"gateway"`
	AdminURL string `yaml:"admin_url" json:"admin_url,omitempty"`
	// VerifyReread makes that comparison use digests the peer computes again
	// from its storage, a second pass over every byte sent, instead of the
	// digests it recorded while the bytes streamed into durable storage (an
	// S3 store signs a small object's PUT with that digest, which the server
	// checks). The recorded ones
	// already prove the peer stored what we sent; the re-read also proves
	// the peer's storage reads it back, at the cost of reading the study.
	VerifyReread bool `yaml:"verify_reread" json:"verify_reread,omitempty"`
	// AllowInsecure accepts a plain http URL to a host that is not
	// loopback (a private network the operator protects otherwise). Without
	// it such a peer is refused at start-up; with it, and for
	// tls.insecure_skip_verify, the gateway logs a warning (Insecure).
	AllowInsecure bool `yaml:"allow_insecure" json:"allow_insecure"`
	// DIMSE, when set, makes the peer a DICOM application entity reached by
	// C-STORE instead of a DICOMweb root (peer_dimse.go).
	DIMSE *DIMSEPeer `yaml:"dimse" json:"dimse,omitempty"`
	// Coerce rewrites patient identity on the way to this peer (coerce.go).
	Coerce *CoerceRule `yaml:"coerce" json:"coerce,omitempty"`
	// Deidentify sends instances to this peer de-identified (deidentify.go).
	Deidentify *DeidentifyRule `yaml:"deidentify" json:"deidentify,omitempty"`
}

// PeerTLS are the TLS settings for one peer: a CA bundle to trust instead of
// the system roots, a client certificate for mutual TLS.
type PeerTLS struct {
	CAFile             string `yaml:"ca_file" json:"ca_file,omitempty"`
	CertFile           string `yaml:"cert_file" json:"cert_file,omitempty"`
	KeyFile            string `yaml:"key_file" json:"-"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify" json:"insecure_skip_verify"`
}

// Validate checks the peer's settings; each message names the key to fix.
func (p Peer) Validate() error {
	if p.Name == "" {
		return errors.New("name is empty")
	}
	if strings.ContainsAny(p.Name, " /\\:") {
		return fmt.Errorf("peer %s: name may not contain spaces, slashes or colons", p.Name)
	}
	if p.DIMSE != nil {
		return p.validateDIMSE()
	}
	if err := p.checkPeerURL("url", p.URL); err != nil {
		return err
	}
	if p.Token != "" && (p.Username != "" || p.Password != "") {
		return fmt.Errorf("peer %s: set either token or username/password, not both", p.Name)
	}
	if (p.Username == "") != (p.Password == "") {
		return fmt.Errorf("peer %s: basic auth needs both username and password", p.Name)
	}
	if (p.TLS.CertFile == "") != (p.TLS.KeyFile == "") {
		return fmt.Errorf("peer %s: tls.cert_file and tls.key_file go together", p.Name)
	}
	if p.MaxParallel < 0 || p.MaxRequestBytes < 0 {
		return fmt.Errorf("peer %s: max_parallel and max_request_bytes may not be negative", p.Name)
	}
	if p.AdminURL != "" {
		if err := p.checkPeerURL("admin_url", p.AdminURL); err != nil {
			return err
		}
	}
	return nil
}

// AuthMethod names how this gateway authenticates to the peer.
func (p Peer) AuthMethod() string {
	switch {
	case p.Token != "":
		return "token"
	case p.Username != "":
		return "basic"
	}
	return "none"
}

// SendHeader is what the sender tells the receiver about the transfer a
// request belongs to, so both ends speak of the same transfer.
type SendHeader struct {
	TransferID string
	Source     string // this centre's name
	Total      int    // instances in the whole transfer
	// Rewrite, when set, transforms each instance's stored bytes on the
	// way out (identity coercion); the instances passed with it carry the
	// size and SHA-256 of the rewritten bytes. Every Sender must send what
	// it returns, never the stored bytes: those carry the identity the
	// destination must not receive.
	Rewrite func(rec *InstanceRecord, original io.ReadCloser) io.ReadCloser
	// BlobKey, when set, names the stored bytes of an instance whose
	// record carries the UIDs the destination will hold instead of ours
	// (de-identification); senders read blobs through StoredKey.
	BlobKey func(rec *InstanceRecord) string
}

// StoredKey is the blob key of rec's stored bytes.
func (h SendHeader) StoredKey(rec *InstanceRecord) string {
	if h.BlobKey != nil {
		return h.BlobKey(rec)
	}
	return rec.Key()
}

// SendResult is the destination's answer for one instance.
type SendResult struct {
	SOPInstanceUID string
	OK             bool
	Bytes          int64
	// Reason and ReasonCode explain a refusal (the STOW-RS FailureReason).
	Reason     string
	ReasonCode uint16
	// Retryable marks a refusal that may succeed later (out of resources, or
	// the instance was not mentioned in the answer).
	Retryable bool
	// Warning, on an OK result, is the warning the peer stored it with
	// (a C-STORE status Bxxx: coerced, elements discarded, data set does
	// not match its class), "" for none. C-MOVE counts it; a transfer
	// keeps it as the sent instance's reason.
	Warning string
}

// SendError is a failure of a whole request to a peer. Temporary errors
// (network, 5xx, 429, 408) are retried with backoff, at no earlier than
// RetryAfter when the peer said so; others fail the transfer.
type SendError struct {
	Peer       string
	Status     int // HTTP status, 0 for network errors
	Temporary  bool
	RetryAfter time.Duration
	Err        error
}

func (e *SendError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("%s answered HTTP %d: %v", e.Peer, e.Status, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Peer, e.Err)
}

func (e *SendError) Unwrap() error { return e.Err }

// Verification is the result of checking the destination after sending.
type Verification struct {
	OK bool
	// Missing lists instances the destination's QIDO-RS does not show;
	// Mismatched those whose SHA-256 there differs from ours.
	Missing    []string
	Mismatched []string
	// Checked says what was compared, e.g. "qido: 12/12 instances; sha256: 12/12 match".
	Checked string
}

// Sender sends instances to a peer and checks what arrived; dicomweb.Client
// is the implementation (STOW-RS and QIDO-RS). Send streams the instances'
// bytes from the BlobStore in batches, calls report with the results of each
// batch as the peer answers (from several goroutines, never concurrently),
// and returns a *SendError when a request failed as a whole. Verify lists
// the study at the peer and, for a gateway peer, compares SHA-256s; an error
// means the check could not be made.
type Sender interface {
	Send(ctx context.Context, peer Peer, h SendHeader, instances []*InstanceRecord, report func([]SendResult)) error
	Verify(ctx context.Context, peer Peer, studyUID string, instances []*InstanceRecord) (*Verification, error)
}

// CreateTransfer is a request to send a study to a peer.
type CreateTransfer struct {
	StudyUID    string   `json:"study_uid"`
	Destination string   `json:"destination"`
	Priority    Priority `json:"priority"`
	// ID, when set, makes the request idempotent: the same ID returns the
	// transfer already created.
	ID        string    `json:"id,omitempty"`
	CreatedBy string    `json:"-"`
	NotBefore time.Time `json:"-"`
}

// RetryPolicy says how a transfer that fails for a temporary reason is
// retried: exponential backoff from Base to Max with jitter, until MaxAge
// since the transfer (or an admin's retry) started, or MaxAttempts
// attempts when set, after which it fails with its last error. Time is the
// limit by default: a peer down for an afternoon must not fail every
// transfer queued for it (50 attempts, the former default, ran out after
// about 2.6 hours with a 5-minute Max).
type RetryPolicy struct {
	Base        time.Duration // default 1s
	Max         time.Duration // default 5m
	MaxAttempts int           // 0 (default): no limit by count
	MaxAge      time.Duration // default 24h
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Base <= 0 {
		p.Base = time.Second
	}
	if p.Max <= 0 {
		p.Max = 5 * time.Minute
	}
	if p.MaxAge <= 0 {
		p.MaxAge = 24 * time.Hour
	}
	return p
}

// Backoff returns the wait before attempt n+1 after n failed attempts:
// Base·2^(n-1) capped at Max, with "equal jitter" (half fixed, half random)
// so that replicas retrying one peer spread out, and at least retryAfter.
func (p RetryPolicy) Backoff(n int, retryAfter time.Duration, rnd func() float64) time.Duration {
	p = p.withDefaults()
	d := p.Base
	for i := 1; i < n && d < p.Max; i++ {
		d *= 2
	}
	d = min(d, p.Max)
	d = d/2 + time.Duration(rnd()*float64(d/2))
	return max(d, min(retryAfter, time.Hour))
}

// TransferStats are cumulative counters for metrics since start. They are
// counted as things happen, so that a scrape costs no queue listing.
type TransferStats struct {
	BytesSent map[string]int64 // by peer
	Retries   map[string]int64 // automatic retries, by peer
	// StateChanges counts the outgoing transfers this process moved into
	// each state (created, retried or deferred → queued, started → running,
	// and so on), as the queue accepted them. A worker stopping for an
	// admin's cancel counts nothing (the admin's Cancel counted it); one
	// whose attempt ended in the instant an admin cancelled counts its own
	// outcome, which the queue then overrode with cancelled.
	StateChanges map[TransferState]int64
}

// Transfers creates, runs and reports transfers of studies to peer centres.
// Fill the exported fields, then call Run to start the workers and Close to
// stop them. Workers claim transfers from Queue (urgent first), send the
// study's instances with Sender, record per-instance progress so that a
// resumed or retried transfer skips what the peer already confirmed, verify
// the result, and audit every state change. A worker stopped by Close leaves
// its transfer unacknowledged, to be reclaimed after the queue's visibility
// timeout by this or another replica.
type Transfers struct {
	Name    string // this centre's name (X-Source-Centre)
	Queue   Queue
	Index   Index
	Sender  Sender
	Peers   []Peer
	Auditor Auditor // may be nil
	Logger  *slog.Logger
	// Coercer applies the peers' identity rules; nil: none.
	Coercer *Coercer
	// Deidentifier applies the peers' de-identification rules; nil: none.
	Deidentifier *Deidentifier

	// Workers is the number of transfers run at once (default 4); Consumer
	// prefixes their consumer names, and must differ between replicas
	// sharing a queue (default Name).
	Workers  int
	Consumer string
	// Heartbeat is how often a running transfer's lease is extended; keep
	// it well below the queue's visibility timeout (default 10s).
	Heartbeat   time.Duration
	RetryPolicy RetryPolicy
	// Now and Rand are the clock and the jitter source (tests inject them).
	Now  func() time.Time
	Rand func() float64

	patientsMu sync.Mutex
	patients   map[string][]string // study UID → patient IDs, for audit events

	mu      sync.Mutex
	stats   TransferStats
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	running bool
}

var errTransferCancelled = errors.New("transfer cancelled by an admin")

func (s *Transfers) now() time.Time {
	if s.Now != nil {
		return s.Now().UTC()
	}
	return time.Now().UTC()
}

func (s *Transfers) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Peer returns the configured peer named name.
func (s *Transfers) Peer(name string) (Peer, bool) {
	i := slices.IndexFunc(s.Peers, func(p Peer) bool { return p.Name == name })
	if i < 0 {
		return Peer{}, false
	}
	return s.Peers[i], true
}

// Create queues a transfer of a study stored here to a configured peer. It
// fails with ErrInvalid for a bad UID, priority or unknown peer, and
// ErrNotFound when the study is not stored here.
func (s *Transfers) Create(ctx context.Context, req CreateTransfer) (*Transfer, error) {
	if err := ValidateUID(req.StudyUID); err != nil {
		return nil, fmt.Errorf("study_uid: %w", err)
	}
	if _, ok := s.Peer(req.Destination); !ok {
		return nil, fmt.Errorf("destination %q is not a configured peer: %w", printable(req.Destination), ErrInvalid)
	}
	switch req.Priority {
	case "":
		req.Priority = PriorityNormal
	case PriorityNormal, PriorityUrgent:
	default:
		return nil, fmt.Errorf("priority %q: want normal or urgent: %w", printable(string(req.Priority)), ErrInvalid)
	}
	if req.ID == "" {
		req.ID = NewTransferID()
	} else if err := ValidateTransferID(req.ID); err != nil {
		return nil, err
	}
	total := 0
	if req.NotBefore.IsZero() {
		recs, err := s.Index.ListInstances(ctx, req.StudyUID, "")
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				return nil, fmt.Errorf("study %s is not stored at this gateway: %w", req.StudyUID, ErrNotFound)
			}
			return nil, err
		}
		total = len(recs)
		s.rememberPatientIDs(req.StudyUID, recs) // for the audit of its creation
	}
	if req.CreatedBy == "" {
		req.CreatedBy = PrincipalFrom(ctx).Name
	}
	now := s.now()
	t := &Transfer{
		ID: req.ID, StudyUID: req.StudyUID, Destination: req.Destination, Priority: req.Priority,
		State: StateQueued, InstancesTotal: total, CreatedAt: now, UpdatedAt: now,
		Direction: DirectionOutgoing, Source: s.Name, CreatedBy: req.CreatedBy, RetryWindowStart: now,
	}
	stored, created, err := s.Queue.Enqueue(ctx, t, req.NotBefore)
	if err != nil {
		return nil, err
	}
	if created {
		s.changed(StateQueued)
		s.audit(ctx, PrincipalFrom(ctx), ActionTransferCreated, OutcomeSuccess, stored, nil)
		s.logger().InfoContext(ctx, "transfer queued", LogKeyTransferID, stored.ID, LogKeyStudyUID, stored.StudyUID, LogKeyPeer, stored.Destination)
	}
	return stored, nil
}

// Get returns a transfer with its per-instance state: an outgoing one by
// ID, else an incoming one recorded under that ID.
func (s *Transfers) Get(ctx context.Context, id string) (*Transfer, error) {
	if err := ValidateTransferID(id); err != nil {
		return nil, err
	}
	t, err := s.Queue.Get(ctx, id)
	if err == nil {
		t.Instances, err = s.Queue.Instances(ctx, id)
		return t, err
	}
	if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	in, err := s.Queue.IncomingByID(ctx, id)
	if err != nil {
		return nil, err
	}
	if len(in) == 0 {
		return nil, fmt.Errorf("transfer %s: %w", id, ErrNotFound)
	}
	t = in[0]
	t.Instances, err = s.Queue.IncomingInstances(ctx, t.Source, t.ID)
	return t, err
}

// List returns transfers matching f, newest first.
func (s *Transfers) List(ctx context.Context, f TransferFilter) ([]*Transfer, error) {
	switch f.Direction {
	case "", DirectionOutgoing, DirectionIncoming:
	default:
		return nil, fmt.Errorf("direction %q: want outgoing or incoming: %w", printable(f.Direction), ErrInvalid)
	}
	switch f.State {
	case "", StateQueued, StateRunning, StateCompleted, StateFailed, StateCancelled:
	default:
		return nil, fmt.Errorf("state %q: want queued, running, completed, failed or cancelled: %w", printable(string(f.State)), ErrInvalid)
	}
	return s.Queue.List(ctx, f)
}

// Cancel stops a queued or running transfer (ErrConflict once it ended). A
// running one stops at its worker's next heartbeat.
func (s *Transfers) Cancel(ctx context.Context, id string) (*Transfer, error) {
	if err := ValidateTransferID(id); err != nil {
		return nil, err
	}
	t, err := s.Queue.Cancel(ctx, id)
	if err != nil {
		return nil, err
	}
	s.changed(StateCancelled)
	s.audit(ctx, PrincipalFrom(ctx), ActionTransferCancel, OutcomeSuccess, t, nil)
	s.logger().InfoContext(ctx, "transfer cancelled", LogKeyTransferID, id)
	return t, nil
}

// Retry queues a failed or cancelled transfer again (ErrConflict otherwise):
// attempts and the retry window start afresh, instances the peer refused are
// sent again, confirmed ones are not.
func (s *Transfers) Retry(ctx context.Context, id string) (*Transfer, error) {
	if err := ValidateTransferID(id); err != nil {
		return nil, err
	}
	t, err := s.Queue.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if !TransferTransitionAllowed(ActorAdmin, t.State, StateQueued) {
		return nil, fmt.Errorf("transfer %s is %s; only a failed or cancelled transfer can be retried: %w", id, t.State, ErrConflict)
	}
	if err := s.Queue.ResetInstances(ctx, id, InstanceRefused); err != nil {
		return nil, err
	}
	now := s.now()
	t.State, t.Attempts, t.LastError, t.Failures, t.Verified, t.Verification = StateQueued, 0, "", nil, nil, ""
	t.InstancesFailed, t.CompletedAt, t.NextAttemptAt, t.UpdatedAt, t.RetryWindowStart = 0, nil, nil, now, now
	if err := s.Queue.Requeue(ctx, t); err != nil {
		return nil, err
	}
	s.changed(StateQueued)
	s.audit(ctx, PrincipalFrom(ctx), ActionTransferRetried, OutcomeSuccess, t, nil)
	s.logger().InfoContext(ctx, "transfer retried by admin", LogKeyTransferID, id)
	return t, nil
}

// RecordIncoming records, at the receiving gateway, the instances a peer
// sent in one STOW-RS request of its transfer transferID (the X-Transfer-ID
// header; source from X-Source-Centre, total from X-Transfer-Instances, 0 if
// absent), in one step: each entry says whether the instance was stored, or
// why not (the other fields of batch's entries are filled in here). The
// STOW-RS handler calls it once per such request, so a request of many
// instances costs one state write, not one each.
func (s *Transfers) RecordIncoming(ctx context.Context, transferID, source string, total int, batch []IncomingInstance) error {
	if err := ValidateTransferID(transferID); err != nil {
		return fmt.Errorf("X-Transfer-ID: %w", err)
	}
	if err := ValidateTransferID(source); err != nil {
		return fmt.Errorf("X-Source-Centre: %w", err)
	}
	if len(batch) == 0 {
		return nil
	}
	now := s.now()
	for i := range batch {
		in := &batch[i]
		in.TransferID, in.Source, in.Destination, in.Total, in.At = transferID, source, s.Name, total, now
	}
	_, err := s.Queue.RecordIncoming(ctx, batch)
	return err
}

// Stats returns a copy of the cumulative counters.
func (s *Transfers) Stats() TransferStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return TransferStats{
		BytesSent:    maps.Clone(s.stats.BytesSent),
		Retries:      maps.Clone(s.stats.Retries),
		StateChanges: maps.Clone(s.stats.StateChanges),
	}
}

func (s *Transfers) count(peer string, bytes int64, retries int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stats.BytesSent == nil {
		s.stats.BytesSent, s.stats.Retries = map[string]int64{}, map[string]int64{}
	}
	s.stats.BytesSent[peer] += bytes
	s.stats.Retries[peer] += retries
}

// changed counts one transfer this process moved into state st.
func (s *Transfers) changed(st TransferState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stats.StateChanges == nil {
		s.stats.StateChanges = map[TransferState]int64{}
	}
	s.stats.StateChanges[st]++
}

// workerPrincipal is the actor of the state changes workers make.
var workerPrincipal = Principal{Name: "transfer-worker", Method: "system"}

func (s *Transfers) audit(ctx context.Context, actor Principal, action, outcome string, t *Transfer, extra map[string]any) {
	if err := s.auditOrErr(ctx, actor, action, outcome, t, extra); err != nil {
		s.logger().ErrorContext(ctx, "transfer audit not written", LogKeyTransferID, t.ID, LogKeyError, err.Error())
	}
}

// auditOrErr is audit for an event that must be written before the work it
// records goes ahead (transfer.started: nothing leaves for a peer without
// its audit record, as a retrieve is refused when its read cannot be
// audited).
func (s *Transfers) auditOrErr(ctx context.Context, actor Principal, action, outcome string, t *Transfer, extra map[string]any) error {
	if s.Auditor == nil {
		return nil
	}
	detail := map[string]any{
		"transfer_id": t.ID, "destination": t.Destination, "priority": string(t.Priority),
		"state": string(t.State), "attempts": t.Attempts,
		"instances_total": t.InstancesTotal, "instances_sent": t.InstancesSent,
	}
	if t.LastError != "" {
		detail["reason"] = t.LastError
	}
	for k, v := range extra {
		detail[k] = v
	}
	ev := &AuditEvent{Time: s.now(), Gateway: s.Name, Actor: actor, Action: action, Outcome: outcome,
		StudyUIDs: []string{t.StudyUID}, PatientIDs: s.studyPatientIDs(ctx, t.StudyUID), Detail: detail}
	return auditDetached(ctx, s.Auditor, ev)
}

// studyPatientIDs returns the patient IDs of a study's instances, so that
// "who sent this patient's images" finds transfer events by patient ID. The
// answer is cached per study (a transfer writes several events); nil when
// the study is not (or no longer) stored here.
func (s *Transfers) studyPatientIDs(ctx context.Context, studyUID string) []string {
	s.patientsMu.Lock()
	ids, ok := s.patients[studyUID]
	s.patientsMu.Unlock()
	if ok || s.Index == nil {
		return ids
	}
	recs, err := s.Index.ListInstances(ctx, studyUID, "")
	if err != nil {
		return nil
	}
	ids, _ = s.rememberPatientIDs(studyUID, recs)
	return ids
}

// rememberPatientIDs caches and returns the patient IDs of recs, the
// instances of studyUID, so that the audit events of its transfer do not
// read the whole study from the index again. added says whether recs name
// a patient the cache did not hold for the study (or it held none).
func (s *Transfers) rememberPatientIDs(studyUID string, recs []*InstanceRecord) (ids []string, added bool) {
	ids = PatientIDsOf(recs)
	s.patientsMu.Lock()
	defer s.patientsMu.Unlock()
	named, known := s.patients[studyUID]
	if s.patients == nil || len(s.patients) >= 1024 {
		s.patients = map[string][]string{}
	}
	s.patients[studyUID] = ids
	return ids, !known || slices.ContainsFunc(ids, func(id string) bool { return !slices.Contains(named, id) })
}

// Run starts the workers and returns; they stop when Close is called (ctx
// bounds start-up only).
func (s *Transfers) Run(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running {
		return errors.New("transfers: already running")
	}
	if s.Queue == nil || s.Index == nil || s.Sender == nil {
		return errors.New("transfers: Queue, Index and Sender are required")
	}
	n := s.Workers
	if n <= 0 {
		n = 4
	}
	prefix := s.Consumer
	if prefix == "" {
		prefix = s.Name
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel, s.running = cancel, true
	for i := range n {
		consumer := fmt.Sprintf("%s-%d", prefix, i)
		s.wg.Go(func() { s.work(wctx, consumer) })
	}
	return nil
}

// Close stops the workers and waits for them, at most until ctx ends. A
// transfer in flight is left unacknowledged, not marked done.
func (s *Transfers) Close(ctx context.Context) error {
	s.mu.Lock()
	cancel := s.cancel
	s.running = false
	s.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("transfers: workers still running at shutdown: %w", ctx.Err())
	}
}

func (s *Transfers) work(ctx context.Context, consumer string) {
	log := s.logger()
	for ctx.Err() == nil {
		l, err := s.Queue.Claim(ctx, consumer, 2*time.Second)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.WarnContext(ctx, "transfer queue unavailable", LogKeyError, err.Error())
			sleep(ctx, 2*time.Second)
			continue
		}
		if l == nil {
			continue
		}
		s.process(ctx, l)
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// run is one attempt of one transfer under a lease.
type run struct {
	s     *Transfers
	l     *Lease
	t     *Transfer
	peer  Peer
	mu    sync.Mutex // guards t and refused while Send reports
	saved error      // first Save error (lost lease or cancel)
	// first: this is the transfer's first attempt, which writes
	// transfer.started.
	first bool
	// stop cancels the attempt (nil in tests that build a run by hand): a
	// Save that finds the lease lost stops the sending at once, as the
	// heartbeat does, rather than when Send returns.
	stop context.CancelCauseFunc
	// unrecorded is the first error writing a batch's progress: the
	// attempt then ends as a temporary failure, because what it counted
	// (a refusal above all) may be missing from the record it decides on.
	unrecorded error
}

func (s *Transfers) process(ctx context.Context, l *Lease) {
	log := s.logger().With(LogKeyTransferID, l.TransferID)
	t, err := s.Queue.Get(ctx, l.TransferID)
	if err != nil {
		log.WarnContext(ctx, "claimed transfer unreadable", LogKeyError, err.Error())
		return
	}
	now := s.now()
	first := t.Attempts == 0
	t.State, t.Attempts, t.UpdatedAt, t.NextAttemptAt = StateRunning, t.Attempts+1, now, nil
	if t.RetryWindowStart.IsZero() {
		t.RetryWindowStart = t.CreatedAt
	}
	if err := s.Queue.Save(ctx, l, t); err != nil {
		log.InfoContext(ctx, "transfer not started", LogKeyError, err.Error())
		return
	}
	s.changed(StateRunning)
	log.InfoContext(ctx, "transfer started", LogKeyPeer, t.Destination, LogKeyStudyUID, t.StudyUID, "attempt", t.Attempts)

	// The heartbeat extends the lease and stops the attempt when an admin
	// cancels or the lease is lost; shutdown cancels ctx itself.
	actx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	hb := s.Heartbeat
	if hb <= 0 {
		hb = 10 * time.Second
	}
	var hbwg sync.WaitGroup
	defer hbwg.Wait()
	defer stop(nil)
	hbwg.Go(func() {
		tick := time.NewTicker(hb)
		defer tick.Stop()
		for {
			select {
			case <-actx.Done():
				return
			case <-tick.C:
			}
			cur, err := s.Queue.Extend(actx, l)
			switch {
			case errors.Is(err, ErrConflict):
				stop(err)
				return
			case err != nil:
				log.WarnContext(actx, "transfer heartbeat failed", LogKeyError, err.Error())
			case cur.State == StateCancelled:
				stop(errTransferCancelled)
				return
			}
		}
	})

	r := &run{s: s, l: l, t: t, first: first, stop: stop}
	outcome := r.attempt(actx)
	if ctx.Err() != nil {
		log.InfoContext(ctx, "transfer left to be resumed: shutting down")
		return
	}
	if cause := context.Cause(actx); cause != nil && actx.Err() != nil {
		outcome = &attemptResult{stop: cause}
	}
	r.finish(ctx, outcome)
}

// attemptResult says how an attempt ended: done (verified), failed for
// good, temporarily failed, or stopped (cancel / lost lease).
type attemptResult struct {
	done       bool
	permanent  error
	temporary  error
	retryAfter time.Duration
	stop       error
}

func (r *run) attempt(ctx context.Context) *attemptResult {
	s, t := r.s, r.t
	peer, ok := s.Peer(t.Destination)
	if !ok {
		return &attemptResult{permanent: fmt.Errorf("destination %q is no longer a configured peer", t.Destination)}
	}
	r.peer = peer
	recs, err := s.Index.ListInstances(ctx, t.StudyUID, "")
	if errors.Is(err, ErrNotFound) {
		return &attemptResult{permanent: fmt.Errorf("study %s is no longer stored at this gateway", t.StudyUID)}
	}
	if err != nil {
		return &attemptResult{temporary: fmt.Errorf("reading the study from the local index: %w", err)}
	}
	if o := r.auditStart(ctx, recs); o != nil {
		return o
	}
	progress, err := s.Queue.Instances(ctx, t.ID)
	if err != nil {
		return &attemptResult{temporary: fmt.Errorf("reading transfer progress: %w", err)}
	}
	done := map[string]InstanceProgress{}
	for _, p := range progress {
		done[p.SOPInstanceUID] = p
	}
	var pending []*InstanceRecord
	sent, failed := 0, 0
	for _, rec := range recs {
		switch done[rec.SOPInstanceUID].State {
		case InstanceSent:
			sent++
		case InstanceRefused:
			failed++
		default:
			pending = append(pending, rec)
		}
	}
	r.mu.Lock()
	t.InstancesTotal, t.InstancesSent, t.InstancesFailed = len(recs), sent, failed
	r.mu.Unlock()

	header := SendHeader{TransferID: t.ID, Source: s.Name, Total: len(recs)}
	if o := s.coerce(ctx, t, peer, &recs, &pending, &header); o != nil {
		return o
	}
	// view translates a de-identified destination's UIDs back to ours.
	view, withheld, o := s.deidentify(ctx, t, peer, &recs, &pending, &header)
	if o != nil {
		return o
	}
	if len(withheld) > 0 {
		r.report(ctx, withheld)
	}
	var unconfirmed []string
	progressed := false // the peer took an instance in this attempt
	if len(pending) > 0 {
		confirmed := map[string]bool{}
		sendErr := s.Sender.Send(ctx, peer, header, pending, func(res []SendResult) {
			res = view.sourceResults(res)
			for _, x := range res {
				confirmed[x.SOPInstanceUID] = x.OK || !x.Retryable
				progressed = progressed || x.OK
			}
			r.report(ctx, res)
		})
		if r.saved != nil {
			return &attemptResult{stop: r.saved}
		}
		if sendErr != nil {
			if ctx.Err() != nil {
				return &attemptResult{stop: context.Cause(ctx)}
			}
			var se *SendError
			if errors.As(sendErr, &se) && !se.Temporary {
				return &attemptResult{permanent: sendErr}
			}
			ra := time.Duration(0)
			if se != nil {
				ra = se.RetryAfter
			}
			return &attemptResult{temporary: sendErr, retryAfter: ra}
		}
		for _, rec := range pending {
			if uid := view.sourceUID(rec.SOPInstanceUID); !confirmed[uid] {
				unconfirmed = append(unconfirmed, uid)
			}
		}
	}
	r.mu.Lock()
	refused, unrecorded, total := t.InstancesFailed, r.unrecorded, t.InstancesTotal
	r.mu.Unlock()
	if unrecorded != nil {
		return &attemptResult{temporary: fmt.Errorf("the progress of a batch sent to %s was not recorded (%w); the attempt is repeated", peer.Name, unrecorded)}
	}
	var refusal error
	if refused > 0 {
		failures, err := s.Queue.Instances(ctx, t.ID)
		if err != nil {
			return &attemptResult{temporary: fmt.Errorf("reading transfer progress: %w", err)}
		}
		failures = slices.DeleteFunc(failures, func(p InstanceProgress) bool { return p.State != InstanceRefused })
		r.mu.Lock()
		t.Failures = failures
		r.mu.Unlock()
		refusal = refusalError(peer.Name, failures, total)
	}
	if len(unconfirmed) > 0 {
		notConfirmed := fmt.Errorf("%s did not confirm %d of %d instances (first %s)", peer.Name, len(unconfirmed), total, unconfirmed[0])
		switch {
		case refusal == nil:
			return &attemptResult{temporary: fmt.Errorf("%w; they will be sent again", notConfirmed)}
		case progressed:
			// Refusals end the transfer once the rest of the study has
			// arrived; while the peer takes instances, the rest is sent.
			return &attemptResult{temporary: fmt.Errorf("%w; they will be sent again before the transfer fails: %v", notConfirmed, refusal)}
		default:
			// The peer took nothing more: waiting up to the retry
			// window would only hide the refusal.
			return &attemptResult{permanent: fmt.Errorf("%v; and %v", refusal, notConfirmed)}
		}
	}
	if refusal != nil {
		return &attemptResult{permanent: refusal}
	}
	v, err := s.Sender.Verify(ctx, peer, view.studyUID(t.StudyUID), recs)
	if err != nil {
		if ctx.Err() != nil {
			return &attemptResult{stop: context.Cause(ctx)}
		}
		var se *SendError
		if errors.As(err, &se) && !se.Temporary {
			return &attemptResult{permanent: fmt.Errorf("verification at %s: %w", peer.Name, err)}
		}
		return &attemptResult{temporary: fmt.Errorf("verification at %s: %w", peer.Name, err)}
	}
	v.Missing, v.Mismatched = view.sourceUIDs(v.Missing), view.sourceUIDs(v.Mismatched)
	r.mu.Lock()
	t.Verified, t.Verification = &v.OK, v.Checked
	r.mu.Unlock()
	if len(v.Mismatched) > 0 {
		return &attemptResult{permanent: fmt.Errorf("%d instances differ at %s from the bytes sent (SHA-256 mismatch, first %s): check both copies", len(v.Mismatched), peer.Name, v.Mismatched[0])}
	}
	if len(v.Missing) > 0 {
		// The peer confirmed them but does not list them: send them again.
		var reset []InstanceProgress
		for _, sop := range v.Missing {
			reset = append(reset, InstanceProgress{SOPInstanceUID: sop, State: "missing", At: s.now()})
		}
		if err := s.Queue.SetInstances(ctx, t.ID, reset); err != nil {
			return &attemptResult{temporary: err}
		}
		return &attemptResult{temporary: fmt.Errorf("%s does not list %d of %d instances it confirmed (first %s); they will be sent again", peer.Name, len(v.Missing), len(recs), v.Missing[0])}
	}
	return &attemptResult{done: true}
}

// auditStart writes transfer.started before anything is sent, naming the
// patients of recs, the instances this attempt reads from the index: on
// the first attempt, and on a later one whose study now holds a patient the
// events of this study did not name so far (an instance that arrived after
// the transfer began, of another patient). Fail closed: nothing is sent
// without its audit record. A first attempt whose record could not be
// written does not count, so the next one is "first" again; only
// RetryPolicy.MaxAge ends the wait for the audit log.
func (r *run) auditStart(ctx context.Context, recs []*InstanceRecord) *attemptResult {
	s, t := r.s, r.t
	_, added := s.rememberPatientIDs(t.StudyUID, recs) // the later events of the transfer name them too
	if !r.first && !added {
		return nil
	}
	var extra map[string]any
	if !r.first {
		extra = map[string]any{"patients_added": true}
	}
	if err := s.auditOrErr(ctx, workerPrincipal, ActionTransferStarted, OutcomeSuccess, t, extra); err != nil {
		s.logger().ErrorContext(ctx, "transfer not started: transfer.started not audited", LogKeyTransferID, t.ID, LogKeyError, err.Error())
		if r.first {
			r.mu.Lock()
			t.Attempts--
			r.mu.Unlock()
		}
		return &attemptResult{temporary: fmt.Errorf("transfer.started could not be audited, nothing sent: %w", err)}
	}
	return nil
}

func refusalError(peer string, failures []InstanceProgress, total int) error {
	var b strings.Builder
	withheld := 0
	for _, f := range failures {
		if strings.HasPrefix(f.Reason, withheldReason) {
			withheld++
		}
	}
	switch withheld {
	case 0:
		fmt.Fprintf(&b, "%s refused %d of %d instances", peer, len(failures), total)
	case len(failures):
		fmt.Fprintf(&b, "%d of %d instances withheld from %s by this gateway", withheld, total, peer)
	default:
		fmt.Fprintf(&b, "%s refused %d of %d instances and this gateway withheld %d", peer, len(failures)-withheld, total, withheld)
	}
	for i, f := range failures {
		if i == 3 {
			fmt.Fprintf(&b, "; and %d more", len(failures)-3)
			break
		}
		fmt.Fprintf(&b, "; %s: %s", f.SOPInstanceUID, f.Reason)
	}
	return errors.New(b.String())
}

// report records one batch's results: per-instance progress first, then the
// counters, so a crash in between resends at most that batch.
func (r *run) report(ctx context.Context, res []SendResult) {
	s := r.s
	now := s.now()
	var ps []InstanceProgress
	var bytes int64
	for _, x := range res {
		switch {
		case x.OK:
			// A warning the peer stored it with stays as the reason.
			ps = append(ps, InstanceProgress{SOPInstanceUID: x.SOPInstanceUID, State: InstanceSent, Bytes: x.Bytes, Reason: x.Warning, At: now})
			bytes += x.Bytes
		case !x.Retryable:
			ps = append(ps, InstanceProgress{SOPInstanceUID: x.SOPInstanceUID, State: InstanceRefused, Reason: x.Reason, ReasonCode: x.ReasonCode, At: now})
		}
	}
	if len(ps) > 0 {
		if err := s.Queue.SetInstances(ctx, r.t.ID, ps); err != nil {
			s.logger().WarnContext(ctx, "transfer progress not recorded", LogKeyTransferID, r.t.ID, LogKeyError, err.Error())
			r.mu.Lock()
			if r.unrecorded == nil {
				r.unrecorded = err
			}
			r.mu.Unlock()
			return
		}
	}
	s.count(r.t.Destination, bytes, 0)
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range ps {
		if p.State == InstanceSent {
			r.t.InstancesSent++
		} else {
			r.t.InstancesFailed++
		}
	}
	r.t.BytesSent += bytes
	r.t.UpdatedAt = now
	if err := s.Queue.Save(ctx, r.l, r.t); err != nil && r.saved == nil && errors.Is(err, ErrConflict) {
		r.saved = err
		if r.stop != nil {
			r.stop(err)
		}
	}
}

// finish records how the attempt ended: Finish for completed, failed and
// cancelled; Defer with backoff for a temporary failure within the policy.
func (r *run) finish(ctx context.Context, o *attemptResult) {
	s, t, l := r.s, r.t, r.l
	log := s.logger().With(LogKeyTransferID, t.ID, LogKeyPeer, t.Destination)
	now := s.now()
	t.UpdatedAt = now
	switch {
	case o.stop != nil:
		if errors.Is(o.stop, ErrConflict) && !errors.Is(o.stop, errTransferCancelled) {
			cur, err := s.Queue.Get(ctx, t.ID)
			if err != nil || cur.State != StateCancelled {
				log.WarnContext(ctx, "transfer lease lost; another worker owns it", LogKeyError, o.stop.Error())
				return
			}
		}
		t.State, t.LastError = StateCancelled, "cancelled by an admin"
		if err := s.Queue.Finish(ctx, l, t); err != nil {
			log.WarnContext(ctx, "cancelled transfer not released", LogKeyError, err.Error())
		}
		log.InfoContext(ctx, "transfer stopped: cancelled")
		return
	case o.done:
		t.State, t.LastError, t.CompletedAt = StateCompleted, "", &now
		if err := s.Queue.Finish(ctx, l, t); err != nil {
			log.WarnContext(ctx, "completed transfer not recorded", LogKeyError, err.Error())
			return
		}
		s.changed(StateCompleted)
		s.audit(ctx, workerPrincipal, ActionTransferVerified, OutcomeSuccess, t, map[string]any{"verification": t.Verification})
		s.audit(ctx, workerPrincipal, ActionTransferComplete, OutcomeSuccess, t, map[string]any{"bytes_sent": t.BytesSent})
		log.InfoContext(ctx, "transfer completed", "instances", t.InstancesTotal, "bytes", t.BytesSent)
		return
	case o.permanent != nil:
		r.fail(ctx, o.permanent.Error())
		return
	}
	p := s.RetryPolicy.withDefaults()
	reason := o.temporary.Error()
	if p.MaxAttempts > 0 && t.Attempts >= p.MaxAttempts {
		r.fail(ctx, fmt.Sprintf("gave up after %d attempts; last error: %s", t.Attempts, reason))
		return
	}
	if now.Sub(t.RetryWindowStart) >= p.MaxAge {
		r.fail(ctx, fmt.Sprintf("gave up after trying for %s; last error: %s", now.Sub(t.RetryWindowStart).Round(time.Second), reason))
		return
	}
	rnd := s.Rand
	if rnd == nil {
		rnd = rand.Float64
	}
	next := now.Add(p.Backoff(t.Attempts, o.retryAfter, rnd))
	t.LastError, t.NextAttemptAt = reason, &next
	if err := s.Queue.Defer(ctx, l, t, next); err != nil {
		log.WarnContext(ctx, "transfer retry not scheduled", LogKeyError, err.Error())
		return
	}
	s.changed(StateQueued)
	s.count(t.Destination, 0, 1)
	s.audit(ctx, workerPrincipal, ActionTransferRetried, OutcomeFailure, t, map[string]any{"automatic": true, "next_attempt_at": next.Format(time.RFC3339)})
	log.WarnContext(ctx, "transfer attempt failed; will retry", "attempt", t.Attempts, "next_attempt_at", next, LogKeyError, reason)
}

func (r *run) fail(ctx context.Context, reason string) {
	s, t := r.s, r.t
	t.State, t.LastError = StateFailed, reason
	if err := s.Queue.Finish(ctx, r.l, t); err != nil {
		s.logger().WarnContext(ctx, "failed transfer not recorded", LogKeyTransferID, t.ID, LogKeyError, err.Error())
		return
	}
	s.changed(StateFailed)
	s.audit(ctx, workerPrincipal, ActionTransferFailed, OutcomeFailure, t, nil)
	s.logger().WarnContext(ctx, "transfer failed", LogKeyTransferID, t.ID, LogKeyPeer, t.Destination, LogKeyError, reason)
}

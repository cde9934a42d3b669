package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

// Audit actions of retention and legal holds. Each deletion is an
// ActionDelete event of the DeleteService whose actor is RetentionActor
// and whose detail names the rule ("retention_rule").
const (
	ActionRetentionRun = "retention.run"  // one run of the policy: what it deleted and skipped
	ActionHoldSet      = "hold.set"       // a legal hold set or replaced, with its reason
	ActionHoldCleared  = "hold.cleared"   // a legal hold removed
	RetentionActor     = "retention"      // the actor of the policy's own events
	retentionLeaseName = "retention.lock" // the runners' lease, in the Index lock namespace (never a UID)
)

// Reasons a due study is kept, in plans, the run's audit event and the
// skipped-studies metric.
const (
	RetentionSkipHeld     = "held"
	RetentionSkipTransfer = "transfer_pending"
	// RetentionSkipReceived: the study received an instance after the run
	// planned it (a PACS or a peer sent more), so it may no longer be due;
	// the next run plans it again.
	RetentionSkipReceived = "received_since_planned"
	// RetentionSkipUnderCap: the study was due by max_bytes only, and
	// stored bytes were no longer over the cap when its turn came (a
	// DELETE, or another deletion, freed space during the run).
	RetentionSkipUnderCap = "under_cap"
)

// RetentionCandidate is a study a plan deletes, or would delete but keeps.
type RetentionCandidate struct {
	StudyUsage
	// Rule is what makes the study due: max_age, max_bytes or rule:<name>.
	Rule string `json:"rule"`
	// Skipped says why a due study is kept (held, transfer_pending) and
	// SkipDetail names the hold or transfer; both empty for a deletion.
	Skipped    string `json:"skipped,omitempty"`
	SkipDetail string `json:"skip_detail,omitempty"`
}

// RetentionPlan is what one run deletes: due studies, oldest received first.
type RetentionPlan struct {
	At       time.Time   `json:"at"`
	DryRun   bool        `json:"dry_run"`
	Held     UsageTotals `json:"held"` // before the run
	MaxBytes int64       `json:"max_bytes,omitempty"`
	// Delete are the studies to delete, at most BatchSize; Skipped the due
	// studies kept.
	Delete  []RetentionCandidate `json:"delete"`
	Skipped []RetentionCandidate `json:"skipped"`
	// Bytes is what deleting Delete reclaims.
	Bytes int64 `json:"bytes"`
	// Examined counts the studies looked at; Truncated says the batch or
	// scan limit stopped the plan before the policy held (the next run
	// goes on).
	Examined  int  `json:"examined"`
	Truncated bool `json:"truncated"`
	// Resumed says the walk began after the last study an earlier run
	// examined, not at the oldest: a run examines at most ScanLimit
	// studies, and the next one goes on from there, so that studies passed
	// over (held, a transfer pending, kept longer by a rule) do not stop
	// every run at the same place. The walk starts again at the oldest
	// once it reaches the end, after a run with errors (to retry them), and
	// when stored bytes go over max_bytes after a run that was under it
	// (the oldest go first).
	Resumed bool `json:"resumed"`
}

// retentionWalk is where the next run's walk starts.
type retentionWalk struct {
	after UsageCursor // the zero cursor: the oldest study
	// overCap: stored bytes were over max_bytes when the run that left
	// this walk stopped, so every study before after was deleted or kept
	// for a reason; otherwise a run over the cap starts at the oldest.
	overCap bool
}

// RetentionReport is what a run did.
type RetentionReport struct {
	Plan *RetentionPlan `json:"plan"`
	// Deleted counts the studies deleted and Reclaimed their bytes; Gone
	// counts planned studies that were already gone (another runner, a
	// DELETE); Errors the deletions that failed (retried next run).
	Deleted   int      `json:"deleted"`
	Reclaimed int64    `json:"reclaimed_bytes"`
	Gone      int      `json:"gone"`
	Errors    []string `json:"errors,omitempty"`
	// NotRun says why nothing was done (another replica holds the lease).
	NotRun string `json:"not_run,omitempty"`
}

// RetentionStats are counters since start, for metrics.
type RetentionStats struct {
	DeletedStudies int64
	ReclaimedBytes int64
	Skipped        map[string]int64 // by reason
	Runs           int64
	LastRun        time.Time // end of the last completed run
}

// Retention applies a RetentionPolicy: it plans which studies are due, keeps
// the held ones and those with a transfer not completed and verified, and
// deletes the rest through the DeleteService, so every deletion is audited
// like a DELETE, with RetentionActor as actor and the rule in the detail.
//
// One run at a time across replicas: a run holds a lease (Index.Lock on
// a name outside the UID space) and a runner that finds it taken skips its
// turn. Runs are bounded (BatchSize, ScanLimit). A hold set, or a transfer
// queued, while a run is under way is checked again immediately before each
// study is deleted. A hold is checked once more by the delete itself, under
// the study's hold lease (studyHoldLease), so none set after that check can
// be answered while the study goes; a transfer queued in the short window
// between the check and the delete is not.
type Retention struct {
	Policy    RetentionPolicy
	Usage     UsageIndex
	Holds     HoldStore
	Transfers TransferLister // nil: no transfers to wait for
	Locker    NameLocker
	Delete    *DeleteService
	// LockWait is how long a run waits for another replica's run (default
	// 1 s): a runner that waits that long skips its turn.
	LockWait time.Duration

	audit  auditRecorder
	logger *slog.Logger

	mu     sync.Mutex
	stats  RetentionStats
	next   retentionWalk // guarded by mu
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// newRetention returns the retention runner of svc, built on d: usage from
// the index when it reports usage, the index's lease, the transfers' queue
// (a study with a pending transfer is kept), svc's audit recorder and
// DeleteService.
func newRetention(svc *Services, d ServiceDeps) *Retention {
	r := &Retention{
		Policy: d.Retention, Holds: d.Holds, Delete: svc.Delete, audit: svc.audit, logger: svc.audit.logger,
		stats: RetentionStats{Skipped: map[string]int64{}},
	}
	if u, ok := d.Index.(UsageIndex); ok {
		r.Usage = u
	}
	if d.Index != nil {
		r.Locker = d.Index
	}
	if d.Transfers != nil && d.Transfers.Queue != nil {
		r.Transfers = d.Transfers.Queue
	}
	return r
}

// retentionCaller is the caller of retention's own deletions and events.
var retentionCaller = Caller{Principal: Principal{Name: RetentionActor, Method: "policy"}, Route: "retention"}

// Plan returns what a run would delete now, without deleting.
func (r *Retention) Plan(ctx context.Context) (*RetentionPlan, error) {
	plan, _, err := r.plan(ctx)
	return plan, err
}

// plan is Plan, from where the last run left the walk, and where the run
// after this one starts if this one runs.
func (r *Retention) plan(ctx context.Context) (*RetentionPlan, retentionWalk, error) {
	r.mu.Lock()
	walk := r.next
	r.mu.Unlock()
	if r.Usage == nil {
		return nil, retentionWalk{}, fmt.Errorf("retention: the index does not report usage: %w", ErrUnavailable)
	}
	p := r.Policy
	now := r.audit.now()
	totals, err := r.Usage.UsageTotals(ctx)
	if err != nil {
		return nil, retentionWalk{}, err
	}
	plan := &RetentionPlan{At: now.UTC(), DryRun: p.DryRun, Held: totals, MaxBytes: p.MaxBytes,
		Delete: []RetentionCandidate{}, Skipped: []RetentionCandidate{}}
	if !p.Enabled() {
		return plan, retentionWalk{}, nil
	}
	remaining := totals.Bytes
	minAge := p.minAge()
	overCap := p.MaxBytes > 0 && remaining > p.MaxBytes
	cursor := walk.after
	if overCap && !walk.overCap {
		cursor = UsageCursor{} // studies passed over under the cap may be due by bytes now
	}
	plan.Resumed = !cursor.ReceivedAt.IsZero() || cursor.StudyInstanceUID != ""
	// goOn is the walk of the next run when this one stops at a limit: on
	// after the last study examined. If bytes are still over the cap, every
	// study passed was due by bytes, so deleted or kept for a reason.
	goOn := func() retentionWalk {
		return retentionWalk{after: cursor, overCap: p.MaxBytes > 0 && remaining > p.MaxBytes}
	}
	const page = 100
	for plan.Examined < p.scanLimit() {
		studies, err := r.Usage.StudiesByReceived(ctx, cursor, min(page, p.scanLimit()-plan.Examined))
		if err != nil {
			return nil, retentionWalk{}, err
		}
		if len(studies) == 0 {
			return plan, retentionWalk{}, nil
		}
		for _, s := range studies {
			cursor = UsageCursor{ReceivedAt: s.ReceivedAt, StudyInstanceUID: s.StudyInstanceUID}
			plan.Examined++
			rule, maxAge := p.ruleFor(s)
			age := now.Sub(s.ReceivedAt)
			ageDue := maxAge > 0 && age > maxAge
			bytesDue := p.MaxBytes > 0 && remaining > p.MaxBytes
			if !ageDue && !bytesDue {
				if minAge > 0 && age > minAge {
					continue // another rule may still be due further on
				}
				return plan, retentionWalk{}, nil // the rest is younger than every rule, and bytes are under the cap
			}
			if !ageDue {
				rule = RetentionRuleMaxBytes
			}
			c := RetentionCandidate{StudyUsage: s, Rule: rule}
			if c.Skipped, c.SkipDetail, err = r.keep(ctx, s.StudyInstanceUID); err != nil {
				return nil, retentionWalk{}, err
			}
			if c.Skipped != "" {
				plan.Skipped = append(plan.Skipped, c)
				continue
			}
			plan.Delete = append(plan.Delete, c)
			plan.Bytes += s.Bytes
			remaining -= s.Bytes
			if len(plan.Delete) >= p.batchSize() {
				plan.Truncated = true
				return plan, goOn(), nil
			}
		}
	}
	plan.Truncated = true
	return plan, goOn(), nil
}

// underCap says whether stored bytes are no longer over max_bytes, read
// again before each deletion the cap alone makes due: the plan counted
// from totals read once, and a DELETE during the run frees space too.
func (r *Retention) underCap(ctx context.Context) (reason, detail string, err error) {
	totals, err := r.Usage.UsageTotals(ctx)
	if err != nil {
		return "", "", err
	}
	if totals.Bytes <= r.Policy.MaxBytes {
		return RetentionSkipUnderCap, fmt.Sprintf("%d bytes stored, max_bytes %d", totals.Bytes, r.Policy.MaxBytes), nil
	}
	return "", "", nil
}

// keep says why study must not be deleted now: a legal hold, or a transfer
// not completed and verified; "" when it may be deleted.
func (r *Retention) keep(ctx context.Context, study string) (reason, detail string, err error) {
	if r.Holds != nil {
		h, err := r.Holds.GetHold(ctx, study)
		switch {
		case err == nil:
			return RetentionSkipHeld, heldDetail(h), nil
		case !errors.Is(err, ErrNotFound):
			return "", "", err
		}
	} else {
		return "", "", fmt.Errorf("retention: no hold store: %w", ErrUnavailable)
	}
	if r.Transfers == nil {
		return "", "", nil
	}
	t, err := PendingTransfer(ctx, r.Transfers, study, r.audit.now())
	if err != nil || t == nil {
		return "", "", err
	}
	return RetentionSkipTransfer, fmt.Sprintf("%s transfer %s (%s) is %s", t.Direction, t.ID, transferPeer(t), transferStatus(t)), nil
}

// heldDetail is the skip detail of a study under hold h.
func heldDetail(h *Hold) string {
	return "held by " + h.SetBy + " since " + h.SetAt.UTC().Format(time.RFC3339)
}

func transferPeer(t *Transfer) string {
	if t.Direction == DirectionIncoming {
		return "from " + t.Source
	}
	return "to " + t.Destination
}

func transferStatus(t *Transfer) string {
	if t.State == StateCompleted {
		return "completed, not verified"
	}
	return string(t.State)
}

// incomingIdle is how long an incoming transfer that is not complete keeps
// its study after the last instance its peer sent: a sender that gave up
// (its transfer failed for good) never completes it, and its study must
// not be kept for ever.
const incomingIdle = 24 * time.Hour

// PendingTransfer returns a transfer of study that is not done with, or nil:
// for each destination, the newest outgoing transfer unless it is completed
// and verified or cancelled (a failed one may be retried by an admin, so its
// study must stay); an incoming transfer still running that its peer sent
// an instance of within incomingIdle before now. An older failed transfer
// to a destination that a newer one reached does not keep the study. It
// reads all of the study's transfers, however many and however old: a
// bounded read would miss the one failed transfer behind many newer ones.
func PendingTransfer(ctx context.Context, q TransferLister, study string, now time.Time) (*Transfer, error) {
	out, err := q.List(ctx, TransferFilter{StudyUID: study, Direction: DirectionOutgoing, Limit: math.MaxInt})
	if err != nil {
		return nil, err
	}
	newest := map[string]*Transfer{}
	for _, t := range out {
		if cur := newest[t.Destination]; cur == nil || t.CreatedAt.After(cur.CreatedAt) {
			newest[t.Destination] = t
		}
	}
	dests := make([]string, 0, len(newest))
	for d := range newest {
		dests = append(dests, d)
	}
	slices.Sort(dests)
	for _, d := range dests {
		t := newest[d]
		done := t.State == StateCancelled || (t.State == StateCompleted && t.Verified != nil && *t.Verified)
		if !done {
			return t, nil
		}
	}
	in, err := q.List(ctx, TransferFilter{StudyUID: study, Direction: DirectionIncoming, State: StateRunning, Limit: math.MaxInt})
	if err != nil {
		return nil, err
	}
	for _, t := range in {
		if now.Sub(t.UpdatedAt) < incomingIdle {
			return t, nil
		}
	}
	return nil, nil
}

// RunOnce runs the policy once: under the runners' lease it plans, then
// deletes each planned study that is still not held and has no pending
// transfer (or, with DryRun, deletes nothing), and audits the run.
func (r *Retention) RunOnce(ctx context.Context) (*RetentionReport, error) {
	if r.Locker == nil || r.Delete == nil {
		return nil, fmt.Errorf("retention: no index lock or delete service: %w", ErrUnavailable)
	}
	wait := r.LockWait
	if wait <= 0 {
		wait = time.Second
	}
	lctx, cancel := context.WithTimeout(ctx, wait)
	unlock, err := r.Locker.Lock(lctx, retentionLeaseName, time.Minute)
	cancel()
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return &RetentionReport{NotRun: "another runner holds the retention lease"}, nil
		}
		return nil, err
	}
	defer unlock()
	plan, next, err := r.plan(ctx)
	if err != nil {
		return nil, err
	}
	rep := &RetentionReport{Plan: plan}
	skipped := map[string]int64{}
	for _, c := range plan.Skipped {
		skipped[c.Skipped]++
	}
	if !plan.DryRun {
		for i := range plan.Delete {
			c := &plan.Delete[i]
			if c.Skipped, c.SkipDetail, err = r.keep(ctx, c.StudyInstanceUID); err != nil {
				rep.Errors = append(rep.Errors, c.StudyInstanceUID+": "+err.Error())
				continue
			}
			if c.Skipped == "" && c.Rule == RetentionRuleMaxBytes {
				if c.Skipped, c.SkipDetail, err = r.underCap(ctx); err != nil {
					rep.Errors = append(rep.Errors, c.StudyInstanceUID+": "+err.Error())
					continue
				}
			}
			if c.Skipped != "" {
				skipped[c.Skipped]++
				continue
			}
			why := map[string]any{"retention_rule": c.Rule, "received_at": c.ReceivedAt.UTC().Format(time.RFC3339Nano)}
			_, res, err := r.Delete.DeleteStudy(ctx, retentionCaller, c.StudyInstanceUID, c.ReceivedAt, why)
			var held *HeldError
			switch {
			case errors.Is(err, ErrNotFound):
				rep.Gone++
			case errors.As(err, &held): // set since keep's check, before the delete's
				c.Skipped, c.SkipDetail = RetentionSkipHeld, heldDetail(&held.Hold)
				skipped[c.Skipped]++
			case errors.Is(err, ErrConflict):
				c.Skipped, c.SkipDetail = RetentionSkipReceived, err.Error()
				skipped[c.Skipped]++
			case err != nil:
				rep.Errors = append(rep.Errors, c.StudyInstanceUID+": "+err.Error())
			default:
				rep.Deleted++
				rep.Reclaimed += res.Bytes
			}
			if ctx.Err() != nil {
				break
			}
		}
	}
	r.mu.Lock()
	if len(rep.Errors) > 0 {
		next = retentionWalk{} // the failed deletions are retried from the oldest
	}
	r.next = next
	r.stats.Runs++
	r.stats.DeletedStudies += int64(rep.Deleted)
	r.stats.ReclaimedBytes += rep.Reclaimed
	for k, v := range skipped {
		r.stats.Skipped[k] += v
	}
	r.stats.LastRun = r.audit.now()
	r.mu.Unlock()
	return rep, r.auditRun(ctx, rep, skipped)
}

// auditRun records the run's summary; the per-study deletions are the
// DeleteService's own events.
func (r *Retention) auditRun(ctx context.Context, rep *RetentionReport, skipped map[string]int64) error {
	if r.audit.auditor == nil {
		return nil
	}
	plan := rep.Plan
	outcome := OutcomeSuccess
	if len(rep.Errors) > 0 {
		outcome = OutcomeFailure
	}
	detail := map[string]any{
		"route": retentionCaller.Route, "dry_run": plan.DryRun, "planned": len(plan.Delete),
		"planned_bytes": plan.Bytes, "deleted": rep.Deleted, "reclaimed_bytes": rep.Reclaimed,
		"gone": rep.Gone, "examined": plan.Examined, "truncated": plan.Truncated,
		"held_bytes_before": plan.Held.Bytes, "skipped_held": skipped[RetentionSkipHeld],
		"skipped_transfer_pending": skipped[RetentionSkipTransfer], "skipped_received_since_planned": skipped[RetentionSkipReceived], "skipped_under_cap": skipped[RetentionSkipUnderCap],
	}
	if len(rep.Errors) > 0 {
		detail["errors"] = strings.Join(rep.Errors, "; ")
	}
	ev := r.audit.event(retentionCaller, ActionRetentionRun, outcome)
	ev.Detail = detail
	if plan.DryRun {
		for _, c := range plan.Delete {
			ev.StudyUIDs = append(ev.StudyUIDs, c.StudyInstanceUID)
		}
	}
	return r.audit.record(ctx, ev, "retention run", "")
}

// Stats returns the counters since start.
func (r *Retention) Stats() RetentionStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.stats
	s.Skipped = map[string]int64{}
	for k, v := range r.stats.Skipped {
		s.Skipped[k] = v
	}
	return s
}

// Start runs the policy every Policy.RunInterval until Close. A failed run
// is logged and tried again at the next interval.
func (r *Retention) Start(ctx context.Context) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.mu.Lock()
	r.cancel = cancel
	r.mu.Unlock()
	r.wg.Go(func() {
		t := time.NewTicker(r.Policy.RunInterval())
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			rep, err := r.RunOnce(ctx)
			switch {
			case err != nil && ctx.Err() == nil:
				r.logger.ErrorContext(ctx, "retention run failed", LogKeyError, err.Error())
			case err == nil && rep.NotRun == "":
				r.logger.InfoContext(ctx, "retention run", "deleted", rep.Deleted, "reclaimed_bytes", rep.Reclaimed,
					"skipped", len(rep.Plan.Skipped), "dry_run", rep.Plan.DryRun)
			}
		}
	})
}

// Close stops the runner and waits for a run in progress, at most until ctx
// ends; a deletion under way completes (the DeleteService outlives its
// caller).
func (r *Retention) Close(ctx context.Context) error {
	r.mu.Lock()
	cancel := r.cancel
	r.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("retention: run still in progress at shutdown: %w", ctx.Err())
	}
}

// SetHold puts a legal hold on study for caller, audited with its reason
// before it is stored (fail closed). It waits for a deletion of the study
// under way to end (studyHoldLease), so a hold answered as set protects
// whatever of the study is left.
func (r *Retention) SetHold(ctx context.Context, caller Caller, study, reason string) (*Hold, error) {
	if err := ValidateUID(study); err != nil {
		return nil, fmt.Errorf("study: %w", err)
	}
	reason = strings.TrimSpace(reason)
	if reason == "" || len(reason) > MaxHoldReason {
		return nil, fmt.Errorf("a hold needs a reason of 1 to %d bytes: %w", MaxHoldReason, ErrInvalid)
	}
	if r.Holds == nil {
		return nil, fmt.Errorf("legal holds: no state backend: %w", ErrUnavailable)
	}
	release, err := studyHoldLease(ctx, r.Locker, study)
	if err != nil {
		return nil, err
	}
	defer release()
	h := Hold{StudyInstanceUID: study, Reason: reason, SetBy: caller.Principal.Name, SetAt: r.audit.now().UTC()}
	ev := r.audit.event(caller, ActionHoldSet, OutcomeSuccess)
	ev.StudyUIDs = []string{study}
	ev.Detail = map[string]any{"route": caller.Route, "reason": reason}
	if err := r.audit.record(ctx, ev, "hold not set", ""); err != nil {
		return nil, err
	}
	if err := r.Holds.PutHold(ctx, h); err != nil {
		return nil, err
	}
	return &h, nil
}

// ClearHold removes the legal hold on study for caller (ErrNotFound when
// there is none), audited with the hold it removed.
func (r *Retention) ClearHold(ctx context.Context, caller Caller, study string) error {
	if err := ValidateUID(study); err != nil {
		return fmt.Errorf("study: %w", err)
	}
	if r.Holds == nil {
		return fmt.Errorf("legal holds: no state backend: %w", ErrUnavailable)
	}
	h, err := r.Holds.GetHold(ctx, study)
	if err != nil {
		return err
	}
	ev := r.audit.event(caller, ActionHoldCleared, OutcomeSuccess)
	ev.StudyUIDs = []string{study}
	ev.Detail = map[string]any{"route": caller.Route, "reason": h.Reason, "set_by": h.SetBy,
		"set_at": h.SetAt.UTC().Format(time.RFC3339Nano)}
	if err := r.audit.record(ctx, ev, "hold not cleared", ""); err != nil {
		return err
	}
	return r.Holds.DeleteHold(ctx, study)
}

// Hold returns the legal hold on study, ErrNotFound when there is none.
func (r *Retention) Hold(ctx context.Context, study string) (*Hold, error) {
	if err := ValidateUID(study); err != nil {
		return nil, fmt.Errorf("study: %w", err)
	}
	if r.Holds == nil {
		return nil, fmt.Errorf("legal holds: no state backend: %w", ErrUnavailable)
	}
	return r.Holds.GetHold(ctx, study)
}

// ListHolds returns every legal hold.
func (r *Retention) ListHolds(ctx context.Context) ([]Hold, error) {
	if r.Holds == nil {
		return nil, fmt.Errorf("legal holds: no state backend: %w", ErrUnavailable)
	}
	return r.Holds.ListHolds(ctx)
}

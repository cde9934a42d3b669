package gateway

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"
)

// DeleteService is the delete use case (DELETE of a study, series or
// instance). It audits the delete before removing anything (an audit
// failure is ErrUnavailable and nothing is deleted), carries it out, and
// audits a failure a second time so the log shows that the delete did not
// complete.
type DeleteService struct {
	deleter *Deleter
	// holds refuses the deletion of a held study; nil: no hold can be set,
	// so none is checked (tests of other concerns).
	holds  HoldStore
	locker NameLocker // the study's hold lease (studyHoldLease); nil: none
	audit  auditRecorder
}

// NameLocker takes a lease on a name across every replica (Index.Lock, on
// names outside the UID space): retention's run and a study's hold lease.
type NameLocker interface {
	Lock(ctx context.Context, name string, ttl time.Duration) (func(), error)
}

// holdLeaseWait bounds how long a deletion or a hold waits for the other to
// finish with the same study.
const holdLeaseWait = 30 * time.Second

// studyHoldLease takes the lease that makes a legal hold and a deletion of
// the same study exclude each other, across replicas: a deletion holds it
// from its hold check until its last removal, a hold while it is stored.
// Without it, a hold set between a deletion's check and its removals (an
// admin's DELETE, or retention's) would be answered 200 while the study it
// protects went. It waits up to holdLeaseWait, then fails with
// ErrUnavailable: a deletion of a large study can take minutes.
func studyHoldLease(ctx context.Context, l NameLocker, study string) (func(), error) {
	if l == nil {
		return func() {}, nil
	}
	lctx, cancel := context.WithTimeout(ctx, holdLeaseWait)
	defer cancel()
	unlock, err := l.Lock(lctx, "hold."+study, time.Minute) // never a UID, which starts with a digit
	switch {
	case err == nil:
		return unlock, nil
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case errors.Is(err, context.DeadlineExceeded):
		return nil, fmt.Errorf("study %s: another deletion, or a legal hold, of it is under way; try again when it ends: %w", study, ErrUnavailable)
	case errors.Is(err, ErrUnavailable):
		return nil, fmt.Errorf("study %s: lease between holds and deletions: %w", study, err)
	default:
		return nil, fmt.Errorf("study %s: lease between holds and deletions: %v: %w", study, err, ErrUnavailable)
	}
}

// HeldError refuses the deletion of all or part of a study under a legal
// hold (409): the hold must be cleared first, which is audited with its
// reason. It names who set the hold and when, not its reason.
type HeldError struct{ Hold Hold }

func (e *HeldError) Error() string {
	return fmt.Sprintf("study %s is under a legal hold set by %s at %s: nothing deleted; clear the hold first (DELETE /api/v1/studies/%s/hold)",
		e.Hold.StudyInstanceUID, e.Hold.SetBy, e.Hold.SetAt.UTC().Format(time.RFC3339), e.Hold.StudyInstanceUID)
}

func (e *HeldError) Unwrap() error { return ErrConflict }

// newDeleteService returns the delete use case on d: its blobs and index,
// its legal holds, and the index's lease between holds and deletions.
func newDeleteService(d ServiceDeps, a auditRecorder) *DeleteService {
	s := &DeleteService{deleter: &Deleter{Blobs: d.Blobs, Index: d.Index}, holds: d.Holds, audit: a}
	if d.Index != nil {
		s.locker = d.Index
	}
	return s
}

// deleteTimeout bounds a delete that outlives its caller.
const deleteTimeout = 10 * time.Minute

// Delete removes the instance sopInstanceUID, else the series seriesUID,
// else the study studyUID, for caller, and returns what it planned and what
// it removed. Nothing of a study under a legal hold is removed: a
// *HeldError (ErrConflict), audited as a refused delete. A delete outlives a caller that hangs up (a half-done delete
// is what we want to avoid), bounded by its own timeout. A failure while
// removing that names no cause (storage refused, connection lost) wraps
// ErrUnavailable: a retry of the same delete completes what is left.
func (s *DeleteService) Delete(ctx context.Context, caller Caller, studyUID, seriesUID, sopInstanceUID string) (*DeletePlan, DeleteResult, error) {
	return s.delete(ctx, caller, studyUID, seriesUID, sopInstanceUID, time.Time{}, nil)
}

// DeleteStudy is Delete of a whole study with why added to the detail of
// its audit events: a delete nobody asked for by request (retention) says
// which rule made it. A study that holds an instance stored after
// receivedBy (the newest receipt retention planned it with, to the
// millisecond; zero: no check) is not deleted: ErrConflict, before anything
// is audited or removed, because a study received into since it was planned
// may no longer be due.
func (s *DeleteService) DeleteStudy(ctx context.Context, caller Caller, studyUID string, receivedBy time.Time, why map[string]any) (*DeletePlan, DeleteResult, error) {
	return s.delete(ctx, caller, studyUID, "", "", receivedBy, why)
}

func (s *DeleteService) delete(ctx context.Context, caller Caller, studyUID, seriesUID, sopInstanceUID string, receivedBy time.Time, why map[string]any) (*DeletePlan, DeleteResult, error) {
	var p *DeletePlan
	var err error
	switch {
	case sopInstanceUID != "":
		p, err = s.deleter.PlanInstance(ctx, studyUID, seriesUID, sopInstanceUID)
	case seriesUID != "":
		p, err = s.deleter.PlanSeries(ctx, studyUID, seriesUID)
	default:
		p, err = s.deleter.PlanStudy(ctx, studyUID)
	}
	if err != nil {
		return nil, DeleteResult{}, err
	}
	release, err := studyHoldLease(ctx, s.locker, p.StudyInstanceUID)
	if err != nil {
		return nil, DeleteResult{}, err
	}
	defer release()
	if err := s.refuseHeld(ctx, caller, p, why); err != nil {
		return nil, DeleteResult{}, err
	}
	if !receivedBy.IsZero() {
		for _, r := range p.Records {
			if r.StoredAt.UnixMilli() > receivedBy.UnixMilli() {
				return nil, DeleteResult{}, fmt.Errorf("study %s received an instance at %s, after %s: %w",
					studyUID, r.StoredAt.UTC().Format(time.RFC3339Nano), receivedBy.UTC().Format(time.RFC3339Nano), ErrConflict)
			}
		}
	}
	detail := planDetail(p, why, map[string]any{"orphan_blobs": len(p.OrphanKeys), "metadata_objects": len(p.MetadataKeys)})
	if err := s.record(ctx, caller, OutcomeSuccess, p, detail); err != nil {
		return nil, DeleteResult{}, err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deleteTimeout)
	defer cancel()
	res, err := s.deleter.Execute(ctx, p)
	if err != nil {
		detail["error"] = err.Error()
		if aerr := s.record(ctx, caller, OutcomeError, p, detail); aerr != nil {
			s.audit.logger.ErrorContext(ctx, "audit of failed delete not written", LogKeyError, aerr.Error())
		}
		if !classified(err) && !errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w (%w)", err, ErrUnavailable)
		}
		return nil, DeleteResult{}, err
	}
	// A flagged study that instances were deleted from is listed again
	// under the identities its instances still hold, and an unflagged one
	// that showed a deleted instance shows its latest left
	// (identity_restate.go).
	// The delete is done either way: a failure is logged, and what was
	// rewritten before it is audited.
	r, err := s.deleter.restateStudy(ctx, p.StudyInstanceUID, p.Records)
	if err != nil {
		s.audit.logger.ErrorContext(ctx, "study's patient identities not restated after a delete", LogKeyStudyUID, p.StudyInstanceUID, LogKeyError, err.Error())
	}
	s.auditRestatement(ctx, caller, p.StudyInstanceUID, r, err)
	return p, res, nil
}

// refuseHeld returns a *HeldError, audited as a refused delete, when p's
// study is under a legal hold; the caller holds the study's hold lease, so
// no hold can be set until its removals end.
func (s *DeleteService) refuseHeld(ctx context.Context, caller Caller, p *DeletePlan, why map[string]any) error {
	if s.holds == nil {
		return nil
	}
	h, err := s.holds.GetHold(ctx, p.StudyInstanceUID)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("study %s: legal hold not checked: %w", p.StudyInstanceUID, err)
	}
	held := &HeldError{Hold: *h}
	detail := planDetail(p, why, map[string]any{"error": held.Error(), "hold_set_by": h.SetBy, "hold_set_at": h.SetAt.UTC().Format(time.RFC3339Nano)})
	if err := s.record(ctx, caller, OutcomeFailure, p, detail); err != nil {
		return err
	}
	return held
}

// planDetail is the detail of a delete's audit events: detail, then why
// (the rule of a delete nobody asked for by request) and the series of a
// series or instance delete.
func planDetail(p *DeletePlan, why, detail map[string]any) map[string]any {
	maps.Copy(detail, why)
	if p.SeriesInstanceUID != "" {
		detail["series_uid"] = p.SeriesInstanceUID
	}
	return detail
}

func (s *DeleteService) record(ctx context.Context, caller Caller, outcome string, p *DeletePlan, detail map[string]any) error {
	d := make(map[string]any, len(detail))
	maps.Copy(d, detail)
	return s.audit.subject(ctx, caller, ActionDelete, outcome, SubjectOfRecords(p.Records, p.StudyUIDs()), d)
}

// classified reports whether err says what went wrong in terms a caller can
// act on: one of the domain's sentinels, or a cancelled request.
func classified(err error) bool {
	for _, e := range []error{context.Canceled, ErrNotFound, ErrInvalid, ErrConflict, ErrTooLarge,
		ErrUnauthenticated, ErrForbidden, ErrNotAcceptable, ErrUnavailable, ErrBusy} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

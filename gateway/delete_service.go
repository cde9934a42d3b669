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
	audit   auditRecorder
}

// deleteTimeout bounds a delete that outlives its caller.
const deleteTimeout = 10 * time.Minute

// Delete removes the instance sopInstanceUID, else the series seriesUID,
// else the study studyUID, for caller, and returns what it planned and what
// it removed. A delete outlives a caller that hangs up (a half-done delete
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
	if !receivedBy.IsZero() {
		for _, r := range p.Records {
			if r.StoredAt.UnixMilli() > receivedBy.UnixMilli() {
				return nil, DeleteResult{}, fmt.Errorf("study %s received an instance at %s, after %s: %w",
					studyUID, r.StoredAt.UTC().Format(time.RFC3339Nano), receivedBy.UTC().Format(time.RFC3339Nano), ErrConflict)
			}
		}
	}
	detail := map[string]any{"orphan_blobs": len(p.OrphanKeys), "metadata_objects": len(p.MetadataKeys)}
	maps.Copy(detail, why)
	if p.SeriesInstanceUID != "" {
		detail["series_uid"] = p.SeriesInstanceUID
	}
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
	return p, res, nil
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

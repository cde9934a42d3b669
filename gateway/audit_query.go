package gateway

import (
	"context"
	"fmt"
	"time"
)

// AuditTrail is the use case of reading the audit log itself (the admin
// API's query and chain check). Every read is recorded in the log as
// ActionAuditUsed, failing closed: an answer whose use could not be
// recorded is not given.
type AuditTrail struct {
	log   AuditLog
	audit auditRecorder
}

func newAuditTrail(log AuditLog, a auditRecorder) *AuditTrail {
	if a.auditor == nil && log != nil {
		a.auditor = log
	}
	return &AuditTrail{log: log, audit: a}
}

// Now is the trail's clock, for what a front end stamps on its answer (a
// FHIR Bundle's timestamp).
func (t *AuditTrail) Now() time.Time { return t.audit.now() }

func (t *AuditTrail) configured() error {
	if t.log == nil {
		return fmt.Errorf("audit log not configured: %w", ErrUnavailable)
	}
	return nil
}

// Query returns one page of the records matching f, for caller. filter is
// the query as the caller gave it (without the patient ID, which the event
// records in its own field), kept in the event's detail with the count.
func (t *AuditTrail) Query(ctx context.Context, caller Caller, f AuditFilter, filter map[string]any) (*AuditPage, error) {
	if err := t.configured(); err != nil {
		return nil, err
	}
	page, err := t.log.Query(ctx, f)
	if err != nil {
		return nil, err
	}
	ev := t.audit.event(caller, ActionAuditUsed, OutcomeSuccess)
	ev.Detail = map[string]any{"operation": "query", "filter": filter, "count": len(page.Events)}
	if f.StudyUID != "" {
		ev.StudyUIDs = []string{f.StudyUID}
	}
	if f.PatientID != "" {
		ev.PatientIDs = []string{f.PatientID} // in the record's patient field, not its detail
	}
	if err := t.audit.auditor.Record(ctx, ev); err != nil {
		return nil, fmt.Errorf("audit of an audit log query: %w", err)
	}
	return page, nil
}

// Verify checks the log's hash chain for caller and records that it did,
// with the result.
func (t *AuditTrail) Verify(ctx context.Context, caller Caller) (VerifyResult, error) {
	if err := t.configured(); err != nil {
		return VerifyResult{}, err
	}
	res, err := t.log.Verify(ctx)
	if err != nil {
		return VerifyResult{}, err
	}
	detail := map[string]any{"operation": "verify", "ok": res.OK, "records": res.Records}
	if !res.OK {
		detail["first_broken"], detail["reason"] = res.FirstBroken, res.Reason
	}
	ev := t.audit.event(caller, ActionAuditUsed, OutcomeSuccess)
	ev.Detail = detail
	if err := t.audit.auditor.Record(ctx, ev); err != nil {
		return VerifyResult{}, fmt.Errorf("audit of an audit log verification: %w", err)
	}
	return res, nil
}

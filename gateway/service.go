package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Caller is who asks a use-case service for something and through which
// entry point. Principal becomes the audit event's actor; Route is recorded
// in the event's detail ("route"): an HTTP route pattern
// (/dicomweb/studies/:study), or what another front end calls its entry
// point (a DIMSE listener's "DIMSE C-STORE"). Services take the caller as an
// argument rather than reading it from the context, so that a front end
// without HTTP middleware passes who it serves explicitly.
type Caller struct {
	Principal Principal
	Route     string
}

// ServiceDeps are what the use-case services run on. Nil backends make the
// services that need them answer ErrUnavailable, as a gateway configured
// without them does.
type ServiceDeps struct {
	Name  string // this centre's name, in every audit event
	Blobs BlobStore
	Index Index
	// Auditor records the events of every service; nil records nothing
	// (tests of other concerns).
	Auditor Auditor
	// AuditLog is the log the audit trail service queries and verifies; it
	// also records the audit log's own use when Auditor is nil.
	AuditLog AuditLog
	// Ingester stores instances; nil means storing is unavailable.
	Ingester *Ingester
	// Transfers records incoming transfers; nil means they are not recorded.
	Transfers *Transfers
	// Router forwards newly stored instances that match a routing rule; nil
	// when no rules are configured.
	Router *Router
	// Holds keeps the legal holds; nil means holds are unavailable (and
	// retention deletes nothing).
	Holds HoldStore
	// Retention is the centre's retention policy (zero: none); its runner
	// is started by the caller (Services.Retention.Start).
	Retention RetentionPolicy
	// Now is the services' clock; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Services are the gateway's use cases, built once by NewServices and shared
// by every front end (DICOMweb, DIMSE, FHIR): each audits what it does with
// the caller's principal and the injected clock.
type Services struct {
	Name     string
	Store    *StoreService
	Query    *QueryService
	Retrieve *RetrieveService
	Delete   *DeleteService
	Audit    *AuditTrail
	Verify   *VerifyService
	// Transfers is the transfer service (nil when not configured).
	Transfers *Transfers
	// Retention applies the retention policy and keeps the legal holds.
	Retention *Retention

	audit auditRecorder
}

// NewServices builds every service on d.
func NewServices(d ServiceDeps) *Services {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	a := auditRecorder{name: d.Name, auditor: d.Auditor, now: d.Now, logger: d.Logger}
	retriever := &Retriever{Blobs: d.Blobs, Index: d.Index}
	svc := &Services{
		Name: d.Name,
		Store: &StoreService{ingester: d.Ingester, router: d.Router, transfers: d.Transfers,
			audit: a, logger: d.Logger},
		Query:     &QueryService{index: d.Index, audit: a},
		Retrieve:  newRetrieveService(retriever, d.Blobs, d.Index, a),
		Delete:    newDeleteService(d, a),
		Audit:     newAuditTrail(d.AuditLog, a),
		Verify:    newVerifyService(d.Blobs, d.Index, a),
		Transfers: d.Transfers,
		audit:     a,
	}
	svc.Retention = newRetention(svc, d)
	return svc
}

// RecordRefusal audits a request a front end refused before it reached a
// use case: no or bad credentials (ActionAuthFailure), a role the principal
// lacks (ActionAccessDenied). The event's outcome is OutcomeFailure; p's
// empty name is recorded as "anonymous". A failure to write the event is
// logged, never returned: the request is refused either way.
func (s *Services) RecordRefusal(ctx context.Context, p Principal, action string, detail map[string]any) {
	if s.audit.auditor == nil {
		return
	}
	if p.Name == "" {
		p.Name = "anonymous"
	}
	ev := s.audit.event(Caller{Principal: p}, action, OutcomeFailure)
	ev.Detail = detail
	if err := s.audit.auditor.Record(ctx, ev); err != nil {
		s.audit.logger.ErrorContext(ctx, "audit of auth failure not written", LogKeyError, err.Error())
	}
}

// auditRecorder is what every service records its events with: this
// centre's name, the one Auditor and the injected clock.
type auditRecorder struct {
	name    string
	auditor Auditor
	now     func() time.Time
	logger  *slog.Logger
}

// event is an audit event of caller, timed now.
func (a auditRecorder) event(caller Caller, action, outcome string) *AuditEvent {
	return &AuditEvent{
		Time:    a.now().UTC(),
		Gateway: a.name,
		Actor:   caller.Principal,
		Action:  action,
		Outcome: outcome,
	}
}

// record writes ev, failing closed: an error (ErrUnavailable) means the
// event was not durably written and the request must not be served.
// refused says what was not done: in the log line, and in the error with
// consequence appended.
func (a auditRecorder) record(ctx context.Context, ev *AuditEvent, refused, consequence string) error {
	if a.auditor == nil {
		return nil
	}
	if err := a.auditor.Record(ctx, ev); err != nil {
		a.logger.ErrorContext(ctx, "audit event not written: "+refused, "action", ev.Action, LogKeyError, err.Error())
		return fmt.Errorf("audit log unavailable, %s%s: %w", refused, consequence, ErrUnavailable)
	}
	return nil
}

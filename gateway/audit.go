package gateway

import (
	"context"
	"time"
)

// Audit actions. Every access to patient data and every transfer state change
// is recorded under one of these.
const (
	ActionStore            = "store"              // STOW-RS request with its instances
	ActionQuery            = "query"              // QIDO-RS search
	ActionRetrieve         = "retrieve"           // WADO-RS / WADO-URI read
	ActionDelete           = "delete"             // DELETE of study, series or instance
	ActionTransferCreated  = "transfer.created"   //
	ActionTransferStarted  = "transfer.started"   //
	ActionTransferComplete = "transfer.completed" //
	ActionTransferFailed   = "transfer.failed"    //
	ActionTransferCancel   = "transfer.cancelled" //
	ActionTransferRetried  = "transfer.retried"   //
	ActionTransferVerified = "transfer.verified"  //
	ActionAuthFailure      = "auth.failure"       // no or bad credentials
	ActionAccessDenied     = "auth.denied"        // wrong role
	ActionAdmin            = "admin"              // other admin actions
)

// Audit outcomes (the FHIR AuditEvent.outcome codes map from these).
const (
	OutcomeSuccess = "success"
	OutcomeFailure = "failure" // minor failure: the request was refused or partly failed
	OutcomeError   = "error"   // serious failure
)

// AuditEvent is one record of the audit log. ID, Seq, PrevHash and Hash are
// set by the AuditLog when the event is appended.
type AuditEvent struct {
	ID         string         `json:"id"`
	Seq        int64          `json:"seq"`
	Time       time.Time      `json:"time"`
	Gateway    string         `json:"gateway"`
	Actor      Principal      `json:"actor"`
	Action     string         `json:"action"`
	Outcome    string         `json:"outcome"`
	StudyUIDs  []string       `json:"study_uids,omitempty"`
	PatientIDs []string       `json:"patient_ids,omitempty"`
	Detail     map[string]any `json:"detail,omitempty"`
	PrevHash   string         `json:"prev_hash,omitempty"`
	Hash       string         `json:"hash,omitempty"`
}

// Auditor records audit events. Record fails (ErrUnavailable) when the event
// could not be durably written; callers that serve patient data must then
// refuse the request rather than serve it unaudited. (The audit work owns the
// full AuditLog interface and its backends.)
type Auditor interface {
	Record(ctx context.Context, ev *AuditEvent) error
}

// AuditLog is the append-only, hash-chained audit store. (Owned by the audit
// work: extend with Query and Verify.)
type AuditLog interface {
	Auditor
}

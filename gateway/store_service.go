package gateway

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"
)

// StoreService is the store use case: every instance a front end receives
// (a STOW-RS request's parts, a DIMSE association's C-STOREs) is stored by
// the Ingester, handed to the routing rules, noted in the sender's incoming
// transfer, and the whole request is audited once.
//
// A request is a StoreBatch: Begin it, Add each instance as it arrives
// (reading it to its end; its sync and index write run in the background,
// up to storeFinishesInFlight at once, while the next instance is read),
// Wait for all of them, then Close it with the answer given, which audits.
type StoreService struct {
	ingester  *Ingester
	router    *Router
	transfers *Transfers
	audit     auditRecorder
	logger    *slog.Logger
}

// StoreRequest describes one request that stores instances.
type StoreRequest struct {
	Caller Caller
	// StudyInstanceUID, when set (STOW-RS to /studies/{study}), refuses an
	// instance of any other study.
	StudyInstanceUID string
	// SourceCentre is the centre the instances come from when the caller
	// may speak for one (a peer gateway's credential), "" otherwise:
	// routing rules then see the caller's principal name as the source.
	SourceCentre string
	// TransferID and TransferInstances, sent by a peer gateway
	// (SourceCentre set), record the request's instances as part of that
	// centre's incoming transfer TransferID of TransferInstances instances
	// (0 when unknown).
	TransferID        string
	TransferInstances int
}

// StoreFailure is one instance that was not stored.
type StoreFailure struct {
	SOPClassUID, SOPInstanceUID string
	Reason                      uint16 // STOW-RS FailureReason
	Unavailable                 bool   // storage, index or routing unavailable: worth resending
	Comment                     string // Error Comment (0000,0902), rarely set
}

// StoreResult is what became of a request's instances, in the order they
// arrived.
type StoreResult struct {
	Stored []*InstanceRecord
	Failed []StoreFailure
	// Err is the first error that ended the request while an instance was
	// being finished (the client went away); nil otherwise.
	Err error
}

// Warned counts the stored instances that were stored with a warning (their
// UIDs deviate from the standard's form).
func (r *StoreResult) Warned() int {
	n := 0
	for _, rec := range r.Stored {
		if len(rec.UIDDeviations()) > 0 {
			n++
		}
	}
	return n
}

// storeFinishesInFlight bounds the stored instances of one request whose
// sync and index write run while later instances are read: enough to keep a
// disk's queue and the index's group commit busy, each holding only an open
// temporary file and a parsed header.
const storeFinishesInFlight = 16

// StoreBatch is one request's instances on their way to storage. Add,
// Refuse and Wait are called from one goroutine, in that order.
type StoreBatch struct {
	svc    *StoreService
	ctx    context.Context // the request's, for its lifetime only
	req    StoreRequest
	source string // what routing rules see as the source

	refused  refusalLog
	outcomes []*storeOutcome // one per instance, in order
	finishes sync.WaitGroup
	inFlight chan struct{}
}

// storeOutcome is what became of one instance: stored (rec), refused
// (failure), or err, an error that ends the request.
type storeOutcome struct {
	rec      *InstanceRecord
	failure  *StoreFailure
	err      error
	incoming *IncomingInstance // what an incoming transfer records of it
}

// Begin starts a request. It fails with ErrUnavailable when no storage is
// configured.
func (s *StoreService) Begin(ctx context.Context, req StoreRequest) (*StoreBatch, error) {
	if s.ingester == nil {
		return nil, fmt.Errorf("no storage configured: %w", ErrUnavailable)
	}
	// The Ingester audits a replacement with the context's principal.
	ctx = WithPrincipal(ctx, req.Caller.Principal)
	b := &StoreBatch{svc: s, ctx: ctx, req: req, inFlight: make(chan struct{}, storeFinishesInFlight)}
	if s.router != nil {
		b.source = cmp.Or(req.SourceCentre, req.Caller.Principal.Name)
	}
	return b, nil
}

// Add reads one instance, the request's part-th (from 1), from r to its end
// and stores it; its sync, index write and routing finish in the background
// while the caller reads the next one. A refused instance is recorded in the
// batch and Add returns nil. An error means the request must end: r's own
// read error as it is (the client went away, a size limit), or an instance
// over MaxInstanceBytes that goes on for more than oversizeDrain bytes past
// it (ErrTooLarge). What was stored before stays stored.
func (b *StoreBatch) Add(part int, r io.Reader) error {
	return b.AddWithSHA256(part, r, "")
}

// AddWithSHA256 is Add for a part whose sender declared the SHA-256 of its
// bytes (lower-case hex; "" for none): an instance whose bytes differ is
// refused (ReasonProcessingFailure) and nothing of it is stored.
func (b *StoreBatch) AddWithSHA256(part int, r io.Reader, sha256 string) error {
	s := b.svc
	pending, err := s.ingester.Begin(b.ctx, r, StoreOptions{StudyInstanceUID: b.req.StudyInstanceUID, SHA256: sha256})
	if err != nil {
		ie, ok := errors.AsType[*InstanceError](err)
		if !ok {
			return err
		}
		if errors.Is(err, ErrTooLarge) && !drain(r) {
			// The part goes on far past the limit (maybe for ever):
			// refuse the rest of the request rather than read it all.
			return fmt.Errorf("part %d is larger than --max-instance-bytes %d: %w", part, s.ingester.MaxInstanceBytes, ErrTooLarge)
		}
		b.outcomes = append(b.outcomes, b.refuse(part, ie))
		return nil
	}
	o := &storeOutcome{}
	b.outcomes = append(b.outcomes, o)
	b.inFlight <- struct{}{}
	b.finishes.Go(func() {
		defer func() { <-b.inFlight }()
		b.finish(part, pending, o)
	})
	return nil
}

// Refuse records a part the front end refused before it reached storage (not
// DICOM, empty) with reason and detail, for the request's log line.
func (b *StoreBatch) Refuse(part int, reason uint16, detail string) {
	b.refused.add(part, "", reason, detail)
	b.outcomes = append(b.outcomes, &storeOutcome{failure: &StoreFailure{Reason: reason}})
}

// finish makes one read instance durable, indexes and routes it, and
// records the outcome in o. It runs concurrently with the reading of later
// instances.
func (b *StoreBatch) finish(part int, pending *PendingInstance, o *storeOutcome) {
	rec, err := pending.Finish(b.ctx)
	if err != nil {
		ie, ok := errors.AsType[*InstanceError](err)
		if !ok {
			o.err = fmt.Errorf("store part %d: %w", part, err)
			return
		}
		*o = *b.refuse(part, ie)
		return
	}
	if err := b.route(rec); err != nil {
		// Stored, but its routing rule could not queue the transfer:
		// report it failed so that the sender resends it. The resend is
		// idempotent (identical bytes) and routes it again, so nothing
		// stored here is silently left unforwarded.
		o.failure = &StoreFailure{SOPClassUID: rec.SOPClassUID, SOPInstanceUID: rec.SOPInstanceUID,
			Reason: ReasonOutOfResources, Unavailable: true}
		return
	}
	in := incomingOf(rec.StudyInstanceUID, rec.SOPInstanceUID, rec.Size, nil)
	o.rec, o.incoming = rec, &in
}

// refuse records one refused instance, in the request's log line too.
func (b *StoreBatch) refuse(part int, ie *InstanceError) *storeOutcome {
	b.refused.add(part, ie.SOPInstanceUID, ie.Reason, ie.Err.Error())
	in := incomingOf(b.req.StudyInstanceUID, ie.SOPInstanceUID, 0, ie)
	return &storeOutcome{incoming: &in, failure: &StoreFailure{
		SOPClassUID: ie.SOPClassUID, SOPInstanceUID: ie.SOPInstanceUID, Reason: ie.Reason,
		Unavailable: errors.Is(ie, ErrUnavailable), Comment: ie.Comment,
	}}
}

// route hands a newly stored instance to the routing rules.
func (b *StoreBatch) route(rec *InstanceRecord) error {
	if b.svc.router == nil {
		return nil
	}
	if err := b.svc.router.Ingested(b.ctx, rec, b.source); err != nil {
		b.svc.logger.WarnContext(b.ctx, "routing rule not applied; instance reported failed so the sender resends it",
			LogKeyStudyUID, rec.StudyInstanceUID, LogKeySOPUID, rec.SOPInstanceUID, LogKeyError, err.Error())
		return err
	}
	return nil
}

// Wait waits until every added instance is finished, logs the refused ones
// in one line, records the request's instances in the sender's incoming
// transfer, and returns what became of them.
func (b *StoreBatch) Wait() *StoreResult {
	b.finishes.Wait()
	b.refused.log(b.ctx, b.svc.logger)
	res := &StoreResult{}
	var incoming []IncomingInstance
	for _, o := range b.outcomes {
		switch {
		case o.err != nil && res.Err == nil:
			res.Err = o.err
		case o.failure != nil:
			res.Failed = append(res.Failed, *o.failure)
		case o.rec != nil:
			res.Stored = append(res.Stored, o.rec)
		}
		if o.incoming != nil {
			incoming = append(incoming, *o.incoming)
		}
	}
	if err := b.recordIncoming(incoming); err != nil && res.Err == nil {
		res.Err = err
	}
	return res
}

// recordIncoming notes, for a request that carries a peer's transfer ID
// (StoreRequest.TransferID, SourceCentre), the outcome of its instances as
// an incoming transfer, in one state write. A record that cannot be
// written fails the request as unavailable (ErrUnavailable: STOW-RS
// answers 503): the instances stay stored, and the sender's retry, which
// the stored copies answer without a second write, records them. Answering
// success instead would leave the receiver's view of the transfer behind
// for good.
func (b *StoreBatch) recordIncoming(batch []IncomingInstance) error {
	id, source := b.req.TransferID, b.req.SourceCentre
	batch = slices.DeleteFunc(batch, func(in IncomingInstance) bool { return in.SOPInstanceUID == "" })
	if id == "" || source == "" || len(batch) == 0 || b.svc.transfers == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(b.ctx), 10*time.Second)
	defer cancel()
	err := b.svc.transfers.RecordIncoming(ctx, id, source, b.req.TransferInstances, batch)
	if err == nil {
		return nil
	}
	b.svc.logger.WarnContext(ctx, "incoming transfer not recorded", LogKeyTransferID, printableOr(id), LogKeyError, err.Error())
	if errors.Is(err, ErrInvalid) {
		// A transfer ID or centre this gateway cannot record: the
		// instances are stored, and a retry would fail the same way.
		return nil
	}
	if !errors.Is(err, ErrUnavailable) {
		err = fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return fmt.Errorf("incoming transfer %s not recorded: %w", printableOr(id), err)
}

// Close audits the request: one event with what was stored and refused,
// its answer status (an HTTP status code; a front end of another protocol
// passes the nearest one) and reqErr, the error that ended it if any. An
// error means the event was not durably written: the request must then
// fail (closed).
func (b *StoreBatch) Close(res *StoreResult, status int, reqErr error) error {
	a := b.svc.audit
	if a.auditor == nil {
		return nil
	}
	study := b.req.StudyInstanceUID
	var studies, patients []string
	var bytes int64
	for _, r := range res.Stored {
		if !slices.Contains(studies, r.StudyInstanceUID) {
			studies = append(studies, r.StudyInstanceUID)
		}
		patients = AppendPatientIdentities(patients, r.Metadata)
		bytes += r.Size
	}
	if study != "" && !slices.Contains(studies, study) {
		studies = append(studies, study)
	}
	reasons := map[string]int{}
	for _, f := range res.Failed {
		reasons[fmt.Sprintf("0x%04X", f.Reason)]++
	}
	outcome := OutcomeSuccess
	switch {
	case status >= 500:
		outcome = OutcomeError
	case status != http.StatusOK && (status != http.StatusAccepted || len(res.Failed) > 0):
		outcome = OutcomeFailure // a 202 without failures is a success with warnings
	}
	detail := map[string]any{
		"route": b.req.Caller.Route, "status": status,
		"stored": len(res.Stored), "failed": len(res.Failed), "bytes": bytes,
	}
	if len(reasons) > 0 {
		detail["failure_reasons"] = reasons
	}
	if n := res.Warned(); n > 0 {
		detail["warned"] = n
	}
	if reqErr != nil {
		detail["error"] = reqErr.Error()
	}
	ev := a.event(b.req.Caller, ActionStore, outcome)
	ev.StudyUIDs, ev.PatientIDs, ev.Detail = studies, patients, detail
	if in := b.svc.ingester; in != nil {
		defer in.observe(StageAudit, time.Now())
	}
	return a.auditor.Record(b.ctx, ev)
}

// incomingOf is what RecordIncoming keeps of one instance of a request:
// stored (err nil) or refused, with the reason in words.
func incomingOf(studyUID, sopUID string, size int64, err error) IncomingInstance {
	in := IncomingInstance{StudyUID: studyUID, SOPInstanceUID: sopUID, OK: err == nil, Bytes: size}
	if err != nil {
		in.Reason = err.Error()
		if ie, ok := errors.AsType[*InstanceError](err); ok && ie.Reason != 0 {
			in.Reason = ReasonText(ie.Reason) + ": " + ie.Err.Error()
		}
	}
	return in
}

// oversizeDrain is how much more of an instance over the instance limit is
// read and discarded so that the request's next instances can still be
// stored.
const oversizeDrain = 64 << 20

// drain discards the rest of a refused instance, and reports whether it
// ended within oversizeDrain bytes.
func drain(r io.Reader) bool {
	n, err := io.CopyN(io.Discard, r, oversizeDrain+1)
	return n <= oversizeDrain && (err == nil || errors.Is(err, io.EOF))
}

// printableOr returns s when it is a short printable token (a transfer ID
// as sent), else "(invalid)": what a client sent is logged only when it
// cannot forge log lines.
func printableOr(s string) string {
	if s == "" || len(s) > 64 {
		return "(invalid)"
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return "(invalid)"
		}
	}
	return s
}

// maxRefusalExamples is how many refused instances the request's log line
// describes one by one.
const maxRefusalExamples = 5

// refusalLog gathers the instances a request refused into one log line at
// its end, so that a request of many bad parts is one line, not one per
// part.
type refusalLog struct {
	mu       sync.Mutex // instances are finished concurrently
	count    int
	byReason map[string]int
	examples []any
}

func (r *refusalLog) add(part int, sopInstanceUID string, reason uint16, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	code := fmt.Sprintf("0x%04X", reason)
	if r.byReason == nil {
		r.byReason = map[string]int{}
	}
	r.count++
	r.byReason[code]++
	if len(r.examples) < maxRefusalExamples {
		if len(detail) > 300 {
			detail = detail[:300] + "…"
		}
		r.examples = append(r.examples, slog.Group(strconv.Itoa(part),
			LogKeySOPUID, sopInstanceUID, "failure_reason", code, LogKeyError, detail))
	}
}

func (r *refusalLog) log(ctx context.Context, logger *slog.Logger) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.count == 0 {
		return
	}
	logger.InfoContext(ctx, "stow parts refused", "refused", r.count, "failure_reasons", r.byReason,
		slog.Group("first_parts", r.examples...))
}

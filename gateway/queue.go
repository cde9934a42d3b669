package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"
)

// TransferState is where a transfer stands. A transfer moves queued →
// running → completed | failed | cancelled; a failed or cancelled one goes
// back to queued when an admin retries it, and a running one goes back to
// queued while it waits to retry after a network error. The exact rules are
// TransferTransitionAllowed.
type TransferState string

const (
	StateQueued    TransferState = "queued"
	StateRunning   TransferState = "running"
	StateCompleted TransferState = "completed"
	StateFailed    TransferState = "failed"
	StateCancelled TransferState = "cancelled"
)

// TransferStates lists every state, in the order of a transfer's life.
func TransferStates() []TransferState {
	return []TransferState{StateQueued, StateRunning, StateCompleted, StateFailed, StateCancelled}
}

// TransitionActor is who changes a transfer's state: a worker holding its
// lease (Save, Defer, Finish) or an admin (Cancel, Requeue).
type TransitionActor string

const (
	ActorWorker TransitionActor = "worker"
	ActorAdmin  TransitionActor = "admin"
)

// TransferTransitionAllowed is the one statement of which state changes of
// an outgoing transfer the queue allows, and by whom:
//
//   - a worker holding the lease of a queued or running transfer moves it
//     to running (Save), back to queued (Defer), or to completed, failed or
//     cancelled (Finish); a lease does not survive into any other state, and
//     a transfer an admin cancelled stays cancelled whatever its worker does;
//   - an admin cancels a queued or running transfer, and queues a failed or
//     cancelled one again (Requeue);
//   - nothing leaves completed.
//
// from == to is no change and is not a transition. The bolt queue enforces
// these rules by calling this function; the Redis queue's Lua scripts carry
// their own copy, and storagetest.TestQueue drives every (actor, from, to)
// through each backend and compares the outcome with this function.
// Incoming transfers (records of what a peer sent) follow ApplyIncoming.
func TransferTransitionAllowed(by TransitionActor, from, to TransferState) bool {
	if from == to {
		return false
	}
	switch by {
	case ActorWorker:
		return (from == StateQueued || from == StateRunning) &&
			(to == StateQueued || to == StateRunning || to.Terminal())
	case ActorAdmin:
		switch to {
		case StateCancelled:
			return from == StateQueued || from == StateRunning
		case StateQueued:
			return from == StateFailed || from == StateCancelled
		}
	}
	return false
}

// Terminal reports whether no worker will touch a transfer in state s again
// unless an admin retries it.
func (s TransferState) Terminal() bool {
	return s == StateCompleted || s == StateFailed || s == StateCancelled
}

// Priority orders the work queue: every urgent transfer is handed out before
// any normal one.
type Priority string

const (
	PriorityNormal Priority = "normal"
	PriorityUrgent Priority = "urgent"
)

// Transfer directions: an outgoing transfer is sent by this gateway; an
// incoming one is the record a receiving gateway keeps of what a peer sent it
// (from the X-Transfer-ID and X-Source-Centre headers), under the sender's ID.
const (
	DirectionOutgoing = "outgoing"
	DirectionIncoming = "incoming"
)

// Transfer is one study sent to one peer, in the admin API's JSON shape
// (DESIGN.md). Counters are cumulative over attempts; InstancesSent counts
// instances the destination confirmed.
type Transfer struct {
	ID             string        `json:"id"`
	StudyUID       string        `json:"study_uid"`
	Destination    string        `json:"destination"`
	Priority       Priority      `json:"priority"`
	State          TransferState `json:"state"`
	InstancesTotal int           `json:"instances_total"`
	InstancesSent  int           `json:"instances_sent"`
	BytesSent      int64         `json:"bytes_sent"`
	Attempts       int           `json:"attempts"`
	LastError      string        `json:"last_error"`
	CreatedAt      time.Time     `json:"created_at"`
	UpdatedAt      time.Time     `json:"updated_at"`
	CompletedAt    *time.Time    `json:"completed_at"`

	// Direction is DirectionOutgoing or DirectionIncoming.
	Direction string `json:"direction"`
	// Source is the centre that sent the study (this gateway's name for an
	// outgoing transfer, the sender's for an incoming one).
	Source string `json:"source"`
	// CreatedBy names who asked for it: a principal or "route:<rule>".
	CreatedBy string `json:"created_by,omitempty"`
	// InstancesFailed counts instances the destination refused.
	InstancesFailed int `json:"instances_failed"`
	// Verified is set once the destination has been checked after sending:
	// true when QIDO-RS lists every instance (and, for a gateway peer, every
	// stored SHA-256 matches); Verification says what was checked.
	Verified     *bool  `json:"verified"`
	Verification string `json:"verification,omitempty"`
	// NextAttemptAt is when a transfer waiting to retry is tried again.
	NextAttemptAt *time.Time `json:"next_attempt_at,omitempty"`
	// RetryWindowStart is when the current series of attempts began (at
	// creation, or at an admin's retry); RetryPolicy.MaxAge counts from it.
	RetryWindowStart time.Time `json:"retry_window_start,omitzero"`
	// Failures lists instances the destination refused, with its reasons.
	Failures []InstanceProgress `json:"failures,omitempty"`
	// Instances is the per-instance state; filled only by Transfers.Get.
	Instances []InstanceProgress `json:"instances,omitempty"`
}

// Instance states in a transfer's per-instance progress.
const (
	InstanceSent     = "sent"     // the destination confirmed it (outgoing) / stored it (incoming)
	InstanceRefused  = "refused"  // the destination refused it for good (outgoing)
	InstanceReceived = "received" // stored here (incoming)
	InstanceFailed   = "failed"   // refused here (incoming)
)

// InstanceProgress is the state of one instance within a transfer. A worker
// that resumes or retries a transfer skips instances already InstanceSent.
type InstanceProgress struct {
	SOPInstanceUID string    `json:"sop_instance_uid"`
	State          string    `json:"state"`
	Bytes          int64     `json:"bytes,omitempty"`
	Reason         string    `json:"reason,omitempty"`
	ReasonCode     uint16    `json:"reason_code,omitempty"`
	At             time.Time `json:"at"`
}

// IncomingInstance is one instance a peer sent as part of its transfer
// TransferID, as the receiving gateway's STOW-RS handler saw it.
type IncomingInstance struct {
	TransferID     string
	Source         string // the sending centre (X-Source-Centre)
	Destination    string // this gateway's name
	StudyUID       string
	SOPInstanceUID string
	OK             bool
	Bytes          int64
	Reason         string
	// Total, when the sender announces it (X-Transfer-Instances), lets the
	// receiver mark the incoming transfer completed once all have arrived.
	Total int
	At    time.Time
}

// TransferFilter selects transfers for listing; empty fields match all.
// Direction "" means outgoing. Limit 0 means 100.
type TransferFilter struct {
	State       TransferState
	StudyUID    string
	Destination string
	Direction   string
	Limit       int
}

// Match reports whether t passes the filter (Limit aside).
func (f TransferFilter) Match(t *Transfer) bool {
	dir := f.Direction
	if dir == "" {
		dir = DirectionOutgoing
	}
	return t.Direction == dir &&
		(f.State == "" || t.State == f.State) &&
		(f.StudyUID == "" || t.StudyUID == f.StudyUID) &&
		(f.Destination == "" || t.Destination == f.Destination)
}

// Lease is one delivery of a queued transfer to one consumer. It is valid
// until the consumer finishes it, or until it has not been extended for the
// queue's visibility timeout, after which another consumer may claim the
// transfer and the old lease's Save, Extend, Finish and Defer fail with
// ErrConflict.
type Lease struct {
	TransferID string
	Consumer   string
	// Token identifies this delivery to the backend (a stream entry ID, a
	// random token).
	Token string
}

// QueueOptions configure a Queue backend.
type QueueOptions struct {
	// VisibilityTimeout is how long a claimed transfer stays invisible to
	// other consumers without Extend; after it another consumer reclaims it.
	// Default 1 minute.
	VisibilityTimeout time.Duration
	// Now is the clock for records and not-before times (default time.Now).
	Now func() time.Time
	// ListScan bounds how many of the newest transfers a List that names
	// no study examines (default DefaultListScan): a gateway keeps every
	// transfer it ever made, and the admin page lists them many times a
	// minute. A List by study examines all of that study's transfers,
	// however old: retention asks for them (PendingTransfer) so as to keep
	// a study whose transfer failed.
	ListScan int
}

// DefaultListScan is QueueOptions.ListScan's default.
const DefaultListScan = 10000

// WithDefaults fills unset options.
func (o QueueOptions) WithDefaults() QueueOptions {
	if o.VisibilityTimeout <= 0 {
		o.VisibilityTimeout = time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.ListScan <= 0 {
		o.ListScan = DefaultListScan
	}
	return o
}

// The transfer queue's contract is split by caller: each small interface
// below is what one kind of caller needs, and Queue, which the backends
// implement, embeds them all. Every method is safe for concurrent use, also
// by several processes sharing one backend where the backend allows it;
// methods taking an ID return ErrNotFound for an unknown ID, and
// unreachable backends return ErrUnavailable. Which state changes each
// method may make is TransferTransitions.

// TransferEnqueuer stores new transfers. Enqueue stores t and queues it, to
// be handed out no earlier than notBefore (zero: now). It is idempotent on
// t.ID: if a transfer with that ID exists it changes nothing and returns the
// stored one and false, so a retried request never queues a study twice.
type TransferEnqueuer interface {
	Enqueue(ctx context.Context, t *Transfer, notBefore time.Time) (stored *Transfer, created bool, err error)
}

// TransferLister reads transfer records and their per-instance progress.
// Instances returns an outgoing transfer's progress ordered by SOP Instance
// UID; IncomingInstances an incoming transfer's (Source, ID).
// IncomingByID returns the incoming transfers recorded under id, from any
// source (two peers may pick the same ID), newest first, however old: an
// admin looks one up by the ID its sender shows.
type TransferLister interface {
	Get(ctx context.Context, id string) (*Transfer, error)
	List(ctx context.Context, f TransferFilter) ([]*Transfer, error)
	IncomingByID(ctx context.Context, id string) ([]*Transfer, error)
	Instances(ctx context.Context, id string) ([]InstanceProgress, error)
	IncomingInstances(ctx context.Context, source, id string) ([]InstanceProgress, error)
}

// TransferClaimer is the transfer workers' side of the queue.
//
// Claim hands out the next transfer due: every urgent one before any normal
// one, oldest first, and transfers whose lease expired (their consumer died)
// again. It waits up to wait (bounded by ctx) and returns nil, nil when
// nothing is due. A transfer is held by at most one lease at a time;
// transfers cancelled or finished while queued are never handed out.
//
// Extend renews a lease (a heartbeat) and returns the stored transfer, so a
// worker notices a cancel. Save stores a held transfer's record (progress,
// state running). Finish stores a terminal record and removes the transfer
// from the queue in one step. Defer stores the record with state queued and
// hands it out again no earlier than until. Each of these fails with
// ErrConflict when the lease is no longer held; Save and Defer also when the
// transfer was cancelled meanwhile (Finish then keeps state cancelled and
// still releases the lease). Shutting down without Finish leaves the lease to
// expire: nothing is acknowledged that was not done. SetInstances records
// per-instance progress (last write per SOP Instance UID wins).
type TransferClaimer interface {
	Claim(ctx context.Context, consumer string, wait time.Duration) (*Lease, error)
	Extend(ctx context.Context, l *Lease) (*Transfer, error)
	Save(ctx context.Context, l *Lease, t *Transfer) error
	Finish(ctx context.Context, l *Lease, t *Transfer) error
	Defer(ctx context.Context, l *Lease, t *Transfer, until time.Time) error
	SetInstances(ctx context.Context, id string, p []InstanceProgress) error
}

// TransferController is the admin's and the router's side. Cancel moves a
// queued or running transfer to cancelled (ErrConflict in a terminal state).
// Requeue stores t (an admin retry: state queued, counters the caller reset)
// if the stored transfer is failed or cancelled and no longer held, else
// ErrConflict. Postpone moves the not-before time of a transfer that is
// queued and not yet handed out (ErrConflict otherwise). ResetInstances
// deletes the per-instance entries in the given state.
type TransferController interface {
	Cancel(ctx context.Context, id string) (*Transfer, error)
	Requeue(ctx context.Context, t *Transfer) error
	Postpone(ctx context.Context, id string, until time.Time) error
	ResetInstances(ctx context.Context, id string, state string) error
}

// IncomingRecorder keeps, at a receiving gateway, what peers sent.
// RecordIncoming creates or updates the incoming transfer (Source,
// TransferID) with a batch of its instances (all of that one transfer,
// applied in order and atomically: one request's instances cost one write),
// returning the transfer after the batch; a repeated instance is counted
// once; an empty batch is ErrInvalid.
type IncomingRecorder interface {
	RecordIncoming(ctx context.Context, batch []IncomingInstance) (*Transfer, error)
}

// QueueDepther counts transfers waiting to be handed out, by priority (for
// metrics).
type QueueDepther interface {
	Depth(ctx context.Context) (map[Priority]int, error)
}

// Queue is the durable transfer store and work queue: the transfer records,
// their per-instance progress, and a priority queue with at-least-once
// delivery that the transfer workers consume. Implementations: storage/bolt
// (embedded) and storage/redis (Redis Streams with consumer groups, shared by
// every replica); storage/storagetest.TestQueue is its conformance suite.
type Queue interface {
	TransferEnqueuer
	TransferLister
	TransferClaimer
	TransferController
	IncomingRecorder
	QueueDepther
}

// NewTransferID returns a new random transfer ID ("tr-" and 20 hex digits).
func NewTransferID() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return "tr-" + hex.EncodeToString(b[:])
}

// ValidateTransferID checks an ID that came from outside (an API path, an
// X-Transfer-ID header): 1–64 characters of letters, digits, '-', '_', '.'.
func ValidateTransferID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("transfer id must be 1 to 64 characters: %w", ErrInvalid)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("transfer id %q: only letters, digits, '-', '_' and '.' are allowed: %w", printable(id), ErrInvalid)
		}
	}
	return nil
}

// CheckIncomingBatch checks what every Queue's RecordIncoming requires of a
// batch: at least one instance, all of one transfer from one source.
func CheckIncomingBatch(batch []IncomingInstance) error {
	if len(batch) == 0 {
		return fmt.Errorf("empty batch of incoming instances: %w", ErrInvalid)
	}
	for _, in := range batch[1:] {
		if in.TransferID != batch[0].TransferID || in.Source != batch[0].Source {
			return fmt.Errorf("a batch of incoming instances mixes transfers: %w", ErrInvalid)
		}
	}
	return nil
}

// ApplyIncoming folds one received instance into the incoming transfer t
// (nil: a new one) given the instance's previous state prev ("" if new), and
// returns the updated record and the instance's new progress entry. Both
// queue backends use it so that incoming records read the same everywhere.
func ApplyIncoming(t *Transfer, prev string, in IncomingInstance) (*Transfer, InstanceProgress) {
	if t == nil {
		t = &Transfer{
			ID: in.TransferID, StudyUID: in.StudyUID, Destination: in.Destination,
			Priority: PriorityNormal, State: StateRunning, Direction: DirectionIncoming,
			Source: in.Source, CreatedAt: in.At,
		}
	}
	p := InstanceProgress{SOPInstanceUID: in.SOPInstanceUID, State: InstanceReceived, Bytes: in.Bytes, At: in.At}
	if !in.OK {
		p.State, p.Reason = InstanceFailed, in.Reason
	}
	if prev == InstanceReceived && !in.OK {
		// A resend of an instance already stored that failed (refused
		// for lack of resources, say) leaves it stored: the transfer
		// neither loses it nor counts its bytes twice when it comes again.
		p.State, p.Reason, p.Bytes = InstanceReceived, "", in.Bytes
		t.UpdatedAt = in.At
		return t, p
	}
	switch prev {
	case InstanceReceived:
		t.InstancesSent--
	case InstanceFailed:
		t.InstancesFailed--
	}
	if p.State == InstanceReceived {
		t.InstancesSent++
		if prev != InstanceReceived {
			t.BytesSent += in.Bytes
		}
	} else {
		t.InstancesFailed++
		t.LastError = in.Reason
	}
	if in.Total > t.InstancesTotal {
		t.InstancesTotal = in.Total
	}
	if t.InstancesTotal < t.InstancesSent+t.InstancesFailed {
		t.InstancesTotal = t.InstancesSent + t.InstancesFailed
	}
	t.UpdatedAt = in.At
	if in.Total > 0 && t.InstancesSent >= in.Total {
		t.State = StateCompleted
		at := in.At
		t.CompletedAt = &at
	} else {
		t.State = StateRunning
		t.CompletedAt = nil
	}
	return t, p
}

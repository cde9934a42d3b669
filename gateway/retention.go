package gateway

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// StudyUsage is what retention needs to know about one stored study: how
// much it holds, when it arrived and which modalities it has.
//
// ReceivedAt is the newest StoredAt of any instance the study has had, at
// millisecond precision: the time this gateway last received part of it.
// Retention counts age from it rather than from StudyDate because StudyDate
// is set by the modality, may be absent, wrong (a clock never set) or far in
// the past for a prior study imported today, and a gateway must not delete
// what it received yesterday. Adding an instance moves a study later;
// deleting one leaves ReceivedAt where it is, so a study never looks older
// than the newest instance it had (the safe direction for deletion).
type StudyUsage struct {
	StudyInstanceUID string    `json:"study_uid"`
	Bytes            int64     `json:"bytes"`
	Instances        int       `json:"instances"`
	ReceivedAt       time.Time `json:"received_at"`
	Modalities       []string  `json:"modalities,omitempty"`
}

// UsageCursor is a position in the ReceivedAt order: the last study a page
// returned. The zero value is the start (the oldest study).
type UsageCursor struct {
	ReceivedAt       time.Time
	StudyInstanceUID string
}

// UsageTotals is what the whole index holds.
type UsageTotals struct {
	Bytes   int64 `json:"bytes"`
	Studies int   `json:"studies"`
}

// UsageIndex is the part of an index that retention reads; both index
// backends implement it next to Index and keep it in the same transaction
// (bolt) or script (Redis) as the instance records, so it never disagrees
// with them. storagetest.TestUsageIndex is its suite.
//
// StudiesByReceived returns up to limit studies ordered by ReceivedAt, then
// Study Instance UID, strictly after the position after: the oldest first,
// without reading any other study. Bytes and Instances count the instances
// present (their recorded sizes). UsageTotals sums every study's Bytes and
// counts the studies, without walking them. Unreachable backends return
// ErrUnavailable; both are safe for concurrent use.
type UsageIndex interface {
	StudiesByReceived(ctx context.Context, after UsageCursor, limit int) ([]StudyUsage, error)
	UsageTotals(ctx context.Context) (UsageTotals, error)
}

// Hold is a legal hold on a study: while it exists retention never deletes
// the study. Who set it and why are kept with it and audited.
type Hold struct {
	StudyInstanceUID string    `json:"study_uid"`
	Reason           string    `json:"reason"`
	SetBy            string    `json:"set_by"`
	SetAt            time.Time `json:"set_at"`
}

// MaxHoldReason bounds a hold's reason, which is stored and audited.
const MaxHoldReason = 1024

// HoldStore keeps the legal holds, shared by every replica. PutHold stores
// h, replacing a hold on the same study; GetHold and DeleteHold return
// ErrNotFound when the study has no hold; ListHolds returns every hold
// ordered by Study Instance UID. Unreachable backends return ErrUnavailable;
// all methods are safe for concurrent use. Implementations: storage/bolt
// and storage/redis; storagetest.TestHoldStore is the suite.
type HoldStore interface {
	PutHold(ctx context.Context, h Hold) error
	GetHold(ctx context.Context, studyUID string) (*Hold, error)
	DeleteHold(ctx context.Context, studyUID string) error
	ListHolds(ctx context.Context) ([]Hold, error)
}

// RetentionPolicy is one centre's retention: what may be deleted and how
// fast. A zero MaxAge or MaxBytes is no limit of that kind; a policy with
// neither and no rule deletes nothing.
type RetentionPolicy struct {
	// MaxAge deletes studies received longer ago than this, unless a rule
	// matching the study says otherwise.
	MaxAge time.Duration
	// MaxBytes deletes the oldest studies, whatever their rule, while the
	// gateway holds more than this many bytes.
	MaxBytes int64
	// Rules override MaxAge for the studies they match; the first matching
	// rule wins (as routing rules do).
	Rules []RetentionRule
	// Interval is how often the runner runs (default 1 hour).
	Interval time.Duration
	// BatchSize bounds the studies deleted by one run (default 100), so one
	// run never holds the lease or the storage for long; the next run goes
	// on where it stopped.
	BatchSize int
	// ScanLimit bounds the studies one run examines (default 10 ×
	// BatchSize): held studies and studies a rule keeps longer are passed
	// over, and this stops a run from walking all of them.
	ScanLimit int
	// DryRun plans and audits what would be deleted and deletes nothing.
	DryRun bool
}

// RetentionRule is a maximum age for the studies that contain a modality.
type RetentionRule struct {
	// Name names the rule in plans, audit events and metrics.
	Name string
	// Modality matches a study containing an instance of this modality
	// (CT, MR, …).
	Modality string
	// MaxAge is the rule's maximum age; 0 keeps matching studies for ever
	// (MaxBytes still applies).
	MaxAge time.Duration
}

// Enabled reports whether the policy can delete anything.
func (p RetentionPolicy) Enabled() bool {
	if p.MaxAge > 0 || p.MaxBytes > 0 {
		return true
	}
	for _, r := range p.Rules {
		if r.MaxAge > 0 {
			return true
		}
	}
	return false
}

// Validate checks a policy read from configuration.
func (p RetentionPolicy) Validate() error {
	if p.MaxAge < 0 || p.MaxBytes < 0 || p.Interval < 0 || p.BatchSize < 0 || p.ScanLimit < 0 {
		return fmt.Errorf("retention: negative max_age, max_bytes, interval, batch_size or scan_limit: %w", ErrInvalid)
	}
	seen := map[string]bool{}
	for i, r := range p.Rules {
		if r.Name == "" || r.Modality == "" {
			return fmt.Errorf("retention.rules[%d]: name and modality are required: %w", i, ErrInvalid)
		}
		if seen[r.Name] {
			return fmt.Errorf("retention.rules[%d]: name %q used twice: %w", i, r.Name, ErrInvalid)
		}
		seen[r.Name] = true
		if r.MaxAge < 0 {
			return fmt.Errorf("retention.rules[%d]: negative max_age: %w", i, ErrInvalid)
		}
	}
	return nil
}

// Retention rule names for the centre-wide limits, as they appear in plans,
// audit events and metrics; a configured rule appears as "rule:<name>".
const (
	RetentionRuleMaxAge   = "max_age"
	RetentionRuleMaxBytes = "max_bytes"
)

// ruleFor returns the rule that governs s's age: the first rule matching
// one of its modalities, else the centre's MaxAge.
func (p RetentionPolicy) ruleFor(s StudyUsage) (name string, maxAge time.Duration) {
	for _, r := range p.Rules {
		for _, m := range s.Modalities {
			if strings.EqualFold(m, r.Modality) {
				return "rule:" + r.Name, r.MaxAge
			}
		}
	}
	return RetentionRuleMaxAge, p.MaxAge
}

// minAge is the shortest positive maximum age of the policy: no study
// received more recently than that is due by age, whatever its rule.
func (p RetentionPolicy) minAge() time.Duration {
	var m time.Duration
	for _, a := range append([]time.Duration{p.MaxAge}, ruleAges(p.Rules)...) {
		if a > 0 && (m == 0 || a < m) {
			m = a
		}
	}
	return m
}

func ruleAges(rules []RetentionRule) []time.Duration {
	out := make([]time.Duration, 0, len(rules))
	for _, r := range rules {
		out = append(out, r.MaxAge)
	}
	return out
}

func (p RetentionPolicy) batchSize() int {
	if p.BatchSize <= 0 {
		return 100
	}
	return p.BatchSize
}

func (p RetentionPolicy) scanLimit() int {
	if p.ScanLimit <= 0 {
		return 10 * p.batchSize()
	}
	return p.ScanLimit
}

// RunInterval returns how often the runner runs.
func (p RetentionPolicy) RunInterval() time.Duration {
	if p.Interval <= 0 {
		return time.Hour
	}
	return p.Interval
}

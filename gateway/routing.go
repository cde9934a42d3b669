package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// RouteRule forwards instances to peers automatically as they are stored:
// an instance matches when every condition that is set holds. It is one
// entry of the routes: list of the --config YAML, for example
//
//	routes:
//	  - name: ct-to-surrey
//	    modality: [CT, MR]
//	    source: [pacs-1]            # who stored it (credential name or sending centre)
//	    match: {InstitutionName: "Hampshire*"}
//	    destinations: [surrey]
//	    priority: normal
//	    settle_time: 60s
type RouteRule struct {
	Name string `yaml:"name" json:"name"`
	// Modality matches the instance's Modality (0008,0060), any of these.
	Modality []string `yaml:"modality" json:"modality,omitempty"`
	// Source matches who stored the instance: the credential's name, or the
	// sending centre of an incoming transfer; any of these.
	Source []string `yaml:"source" json:"source,omitempty"`
	// Match maps an attribute (keyword or 8-hex-digit tag) to a value that
	// its first value must equal, with * and ? wildcards; all must match.
	Match        map[string]string `yaml:"match" json:"match,omitempty"`
	Destinations []string          `yaml:"destinations" json:"destinations"`
	Priority     Priority          `yaml:"priority" json:"priority,omitempty"`
	// SettleTime is how long after a study's last matching instance its
	// transfer starts, so that a study arriving over several STOW-RS
	// requests becomes one transfer (default 30s).
	SettleTime time.Duration `yaml:"settle_time" json:"settle_time,omitempty"`
	// Coerce, when set, is the identity rule of the transfers this rule
	// creates, instead of their destination peer's (coerce.go).
	Coerce *CoerceRule `yaml:"coerce" json:"coerce,omitempty"`
}

// DefaultSettleTime is the settle time of a rule that sets none.
const DefaultSettleTime = 30 * time.Second

// Validate checks the rule against the configured peers; each message
// names the key to fix.
func (r RouteRule) Validate(peers []Peer) error {
	if r.Name == "" {
		return errors.New("name is empty")
	}
	if len(r.Destinations) == 0 {
		return fmt.Errorf("route %s: destinations is empty", r.Name)
	}
	for _, d := range r.Destinations {
		i := slices.IndexFunc(peers, func(p Peer) bool { return p.Name == d })
		if i < 0 {
			return fmt.Errorf("route %s: destination %q is not in peers", r.Name, d)
		}
		if r.Coerce != nil && peers[i].Deidentify != nil {
			// De-identification removes the identity coercion would choose
			// (as for a peer with both), and would be planned on bytes the
			// coercion has already changed.
			return fmt.Errorf("route %s: coerce and destination %s's deidentify exclude each other: de-identification removes the patient identity", r.Name, d)
		}
	}
	switch r.Priority {
	case "", PriorityNormal, PriorityUrgent:
	default:
		return fmt.Errorf("route %s: priority %q: want normal or urgent", r.Name, r.Priority)
	}
	if r.SettleTime < 0 {
		return fmt.Errorf("route %s: settle_time may not be negative", r.Name)
	}
	for k := range r.Match {
		if _, ok := dicomcodec.LookupAttribute(k); !ok {
			return fmt.Errorf("route %s: match: unknown attribute %q (use a keyword such as Modality or a tag such as 00080060)", r.Name, k)
		}
	}
	return nil
}

// Matches reports whether the instance rec, stored by source, matches r.
func (r RouteRule) Matches(rec *InstanceRecord, source string) bool {
	if len(r.Modality) > 0 && !slices.Contains(r.Modality, rec.Metadata.String(dicomcodec.TagModality)) {
		return false
	}
	if len(r.Source) > 0 && !slices.Contains(r.Source, source) {
		return false
	}
	for k, want := range r.Match {
		e, ok := dicomcodec.LookupAttribute(k)
		if !ok || !Wildcard(want, rec.Metadata.String(e.Tag), false) {
			return false
		}
	}
	return true
}

// Router applies the routing rules to every stored instance. The first
// matching instance of a study creates, per destination, a transfer that
// waits in the durable queue for the rule's settle time; each further
// instance postpones it, so a study arriving over several requests is sent
// once, and nothing is lost if the gateway stops during the settle time.
// An instance arriving after its study's transfer started creates a new
// transfer (instances the peer already has are stored there idempotently).
// Router starts no goroutines. Safe for concurrent use.
type Router struct {
	Rules     []RouteRule
	Transfers *Transfers
	Logger    *slog.Logger
	Now       func() time.Time

	mu   sync.Mutex
	open map[routeKey]*openRoute
}

type routeKey struct{ study, destination string }

type openRoute struct {
	id       string
	deadline time.Time
}

func (r *Router) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// Ingested routes one newly stored instance; source is who stored it (the
// principal's name, or the X-Source-Centre of an incoming transfer). The
// ingest path calls it after the index entry is written; an error means a
// transfer could not be queued or postponed, and is worth logging, not
// failing the store for.
func (r *Router) Ingested(ctx context.Context, rec *InstanceRecord, source string) error {
	type dest struct {
		priority Priority
		settle   time.Duration
		rule     string
	}
	want := map[string]dest{}
	for _, rule := range r.Rules {
		if !rule.Matches(rec, source) {
			continue
		}
		settle := rule.SettleTime
		if settle == 0 {
			settle = DefaultSettleTime
		}
		for _, d := range rule.Destinations {
			cur, seen := want[d]
			if !seen {
				cur = dest{priority: PriorityNormal, rule: rule.Name}
			}
			if rule.Priority == PriorityUrgent {
				cur.priority = PriorityUrgent
			}
			cur.settle = max(cur.settle, settle)
			want[d] = cur
		}
	}
	var errs []error
	for d, w := range want {
		if err := r.route(ctx, rec.StudyInstanceUID, d, w.priority, w.settle, w.rule); err != nil {
			errs = append(errs, fmt.Errorf("route %s to %s: %w", rec.StudyInstanceUID, d, err))
		}
	}
	return errors.Join(errs...)
}

func (r *Router) route(ctx context.Context, study, destination string, p Priority, settle time.Duration, rule string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if r.open == nil {
		r.open = map[routeKey]*openRoute{}
	}
	for k, o := range r.open { // forget transfers long started
		if now.Sub(o.deadline) > time.Hour {
			delete(r.open, k)
		}
	}
	key := routeKey{study, destination}
	deadline := now.Add(settle)
	if o, ok := r.open[key]; ok {
		err := r.Transfers.Queue.Postpone(ctx, o.id, deadline)
		if err == nil {
			o.deadline = deadline
			return nil
		}
		if !errors.Is(err, ErrConflict) && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	t, err := r.Transfers.Create(ctx, CreateTransfer{
		StudyUID: study, Destination: destination, Priority: p,
		CreatedBy: "route:" + rule, NotBefore: deadline,
	})
	if err != nil {
		return err
	}
	r.open[key] = &openRoute{id: t.ID, deadline: deadline}
	if r.Logger != nil {
		r.Logger.InfoContext(ctx, "study routed", LogKeyTransferID, t.ID, LogKeyStudyUID, study, LogKeyPeer, destination, "rule", rule)
	}
	return nil
}

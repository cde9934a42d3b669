package gateway

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// maxConcurrentRecompute bounds the SHA-256 recomputes run at once: each
// reads whole studies back from storage, so without a bound a few requests
// in a loop keep the disks and the storage network busy.
const maxConcurrentRecompute = 4

// RecomputeRetryAfter is how long a caller refused a recompute (ErrBusy)
// should wait before asking again.
const RecomputeRetryAfter = 2 * time.Second

// VerifyService answers what a sending gateway reads to verify what arrived
// here: the SHA-256 of stored instances, from the index or, recomputed,
// from the bytes in blob storage (which proves what is stored, not what was
// recorded at ingest). Each answer is audited like a retrieve (it confirms
// which instances, and so which patient's, are stored here); recomputes are
// bounded by a gate.
type VerifyService struct {
	blobs BlobStore
	index Index
	audit auditRecorder
	gate  *recomputeGate
}

func newVerifyService(blobs BlobStore, index Index, a auditRecorder) *VerifyService {
	return &VerifyService{blobs: blobs, index: index, audit: a, gate: newRecomputeGate(maxConcurrentRecompute)}
}

// InstanceDigest is the SHA-256 of one stored instance.
type InstanceDigest struct {
	SOPInstanceUID string
	StudyUID       string
	Size           int64
	SHA256         string
}

// InstanceSHA256 returns the digest of instance sopInstanceUID for caller;
// with recompute, from the stored bytes.
func (v *VerifyService) InstanceSHA256(ctx context.Context, caller Caller, sopInstanceUID string, recompute bool) (*InstanceDigest, error) {
	if err := ValidateUID(sopInstanceUID); err != nil {
		return nil, err
	}
	if v.index == nil {
		return nil, fmt.Errorf("no index configured: %w", ErrUnavailable)
	}
	rec, err := v.index.GetInstance(ctx, sopInstanceUID)
	if err != nil {
		return nil, err
	}
	release, err := v.begin(ctx, caller, rec.StudyInstanceUID, []*InstanceRecord{rec}, recompute)
	if err != nil {
		return nil, err
	}
	defer release()
	sum, err := v.sum(ctx, rec, recompute)
	if err != nil {
		return nil, err
	}
	return &InstanceDigest{SOPInstanceUID: sopInstanceUID, StudyUID: rec.StudyInstanceUID, Size: rec.Size, SHA256: sum}, nil
}

// StudySHA256 returns the digest of every instance of studyUID by SOP
// Instance UID, for caller; with recompute, from the stored bytes.
func (v *VerifyService) StudySHA256(ctx context.Context, caller Caller, studyUID string, recompute bool) (map[string]string, error) {
	if err := ValidateUID(studyUID); err != nil {
		return nil, err
	}
	if v.index == nil {
		return nil, fmt.Errorf("no index configured: %w", ErrUnavailable)
	}
	recs, err := v.index.ListInstances(ctx, studyUID, "")
	if err != nil {
		return nil, err
	}
	release, err := v.begin(ctx, caller, studyUID, recs, recompute)
	if err != nil {
		return nil, err
	}
	defer release()
	sums := make(map[string]string, len(recs))
	for _, rec := range recs {
		sum, err := v.sum(ctx, rec, recompute)
		if err != nil {
			return nil, fmt.Errorf("instance %s: %w", rec.SOPInstanceUID, err)
		}
		sums[rec.SOPInstanceUID] = sum
	}
	return sums, nil
}

// begin admits a digest request for recs of study: a recompute only
// through the gate (ErrBusy beyond it), and only once the read is audited.
func (v *VerifyService) begin(ctx context.Context, caller Caller, study string, recs []*InstanceRecord, recompute bool) (release func(), err error) {
	release = func() {}
	source := "index"
	if recompute {
		if release, err = v.gate.enter(study); err != nil {
			return nil, err
		}
		source = "storage"
	}
	if err := v.audit.subject(ctx, caller, ActionRetrieve, OutcomeSuccess, SubjectOfRecords(recs, []string{study}),
		map[string]any{"what": "sha256", "sha256_source": source, "bytes": 0}); err != nil {
		release()
		return nil, err
	}
	return release, nil
}

// sum is rec's SHA-256: recorded at ingest, or recomputed from storage.
func (v *VerifyService) sum(ctx context.Context, rec *InstanceRecord, recompute bool) (string, error) {
	if !recompute {
		return rec.SHA256, nil
	}
	if v.blobs == nil {
		return "", fmt.Errorf("no blob storage configured: %w", ErrUnavailable)
	}
	sum, _, err := BlobSHA256(ctx, v.blobs, rec.Key())
	return sum, err
}

// recomputeGate admits one recompute per study at a time and at most max
// of them over all studies; beyond, the request is refused at once
// (ErrBusy), never queued.
type recomputeGate struct {
	max     int
	mu      sync.Mutex
	studies map[string]struct{}
}

func newRecomputeGate(limit int) *recomputeGate {
	return &recomputeGate{max: max(1, limit), studies: map[string]struct{}{}}
}

// enter admits a recompute of study and returns its release, or an error
// wrapping ErrBusy when that study is already being recomputed or the
// global bound is reached.
func (g *recomputeGate) enter(study string) (release func(), err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	secs := int(RecomputeRetryAfter / time.Second)
	if _, busy := g.studies[study]; busy {
		return nil, fmt.Errorf("a SHA-256 recompute of study %s is already running, retry in %ds: %w", study, secs, ErrBusy)
	}
	if len(g.studies) >= g.max {
		return nil, fmt.Errorf("%d SHA-256 recomputes are already running, retry in %ds: %w", g.max, secs, ErrBusy)
	}
	g.studies[study] = struct{}{}
	return func() {
		g.mu.Lock()
		delete(g.studies, study)
		g.mu.Unlock()
	}, nil
}

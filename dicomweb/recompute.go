package dicomweb

import (
	"fmt"
	"sync"
)

// maxConcurrentRecompute bounds the ?recompute=true SHA-256 requests served
// at once: each reads whole studies back from storage, so without a bound a
// few requests in a loop keep the disks and the storage network busy.
const maxConcurrentRecompute = 4

// recomputeRetryAfter is the Retry-After, in seconds, of a refused recompute.
const recomputeRetryAfter = 2

// recomputeGate admits one recompute per study at a time and at most max
// of them over all studies; beyond, the request is refused at once (429),
// never queued. The zero value is not usable: use newRecomputeGate.
type recomputeGate struct {
	max     int
	mu      sync.Mutex
	studies map[string]struct{}
}

func newRecomputeGate(limit int) *recomputeGate {
	return &recomputeGate{max: max(1, limit), studies: map[string]struct{}{}}
}

// enter admits a recompute of study and returns its release, or an error
// wrapping errRateLimited when that study is already being recomputed or
// the global bound is reached.
func (g *recomputeGate) enter(study string) (release func(), err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, busy := g.studies[study]; busy {
		return nil, fmt.Errorf("a SHA-256 recompute of study %s is already running, retry in %ds: %w", study, recomputeRetryAfter, errRateLimited)
	}
	if len(g.studies) >= g.max {
		return nil, fmt.Errorf("%d SHA-256 recomputes are already running, retry in %ds: %w", g.max, recomputeRetryAfter, errRateLimited)
	}
	g.studies[study] = struct{}{}
	return func() {
		g.mu.Lock()
		delete(g.studies, study)
		g.mu.Unlock()
	}, nil
}

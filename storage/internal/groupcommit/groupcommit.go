// Package groupcommit batches concurrent callers' writes into shared
// commits, for the backends that sync once per commit (bbolt transactions,
// directory fsyncs, the Redis audit chain). Only storage backends import it.
package groupcommit

import (
	"context"
	"sync"
	"time"
)

// Committer batches concurrent callers' items into shared commits:
// callers queue up, and one caller at a time (the oldest waiting) hands
// everything queued, up to MaxBatch items in order, to Commit. A lone
// caller commits at once (nobody waits for company, unlike bbolt's
// DB.Batch); under load each commit carries many items, so a backend syncs
// once per batch rather than once per item. The committing caller commits
// batches until its own item is done, then hands the job to the oldest
// caller still waiting, so nobody commits for others for ever. No
// goroutine is started and nothing needs closing.
type Committer[T any] struct {
	// Commit stores batch and returns one error per item (nil, or a short
	// slice: the rest succeeded). It runs in one caller at a time.
	Commit func(ctx context.Context, batch []T) []error
	// MaxBatch bounds a batch (0: 256).
	MaxBatch int
	// Timeout bounds one Commit (0: 10 s). Commit runs with the committing
	// caller's context values but this deadline instead of its
	// cancellation, so that one caller giving up does not fail the others'
	// items.
	Timeout time.Duration

	mu       sync.Mutex
	pending  []*groupCall[T]
	flushing bool
}

type groupCall[T any] struct {
	item     T
	res      chan groupResult // one message: the outcome, or lead
	finished bool             // outcome sent; used by the committing caller only
}

// groupResult answers a waiting caller: err is its outcome, unless lead is
// set, which makes it the caller that commits next.
type groupResult struct {
	err  error
	lead bool
}

// Record queues item and returns once the batch carrying it was committed,
// with the item's own outcome.
func (c *Committer[T]) Record(ctx context.Context, item T) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	req := &groupCall[T]{item: item, res: make(chan groupResult, 1)}
	c.mu.Lock()
	c.pending = append(c.pending, req)
	if c.flushing {
		c.mu.Unlock()
		r := <-req.res
		if !r.lead {
			return r.err
		}
		c.mu.Lock()
	}
	c.flushing = true
	timeout, maxBatch := c.Timeout, c.MaxBatch
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	if maxBatch <= 0 {
		maxBatch = 256
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	for !req.finished {
		n := min(len(c.pending), maxBatch)
		batch := c.pending[:n:n]
		c.pending = c.pending[n:]
		c.mu.Unlock()
		items := make([]T, n)
		for i, r := range batch {
			items[i] = r.item
		}
		errs := c.Commit(cctx, items)
		for i, r := range batch {
			var err error
			if i < len(errs) {
				err = errs[i]
			}
			r.finished = true
			r.res <- groupResult{err: err}
		}
		c.mu.Lock()
	}
	if len(c.pending) > 0 {
		c.pending[0].res <- groupResult{lead: true}
	} else {
		c.pending = nil
		c.flushing = false
	}
	c.mu.Unlock()
	return (<-req.res).err
}

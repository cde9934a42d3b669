package bolt

import (
	"sync"

	bbolt "go.etcd.io/bbolt"
)

// groupCommitter runs concurrent writers' functions in shared transactions,
// so that under concurrent STOW-RS each commit (and its fsyncs) carries many
// index writes instead of one. A lone caller commits at once: unlike bbolt's
// DB.Batch, nobody waits for company. One caller at a time commits what is
// queued, oldest first, until its own function is done, then hands the job to
// the oldest caller still waiting, so no caller commits for others for ever.
//
// A function that fails makes its batch roll back; every function of that
// batch then runs again in a transaction of its own, so it fails alone.
// Functions must therefore give the same result when run twice from the same
// state (they read what they change inside the transaction).
type groupCommitter struct {
	db       *bbolt.DB
	maxBatch int

	mu      sync.Mutex
	pending []*groupCall
	busy    bool
	commits int // transactions committed, for tests
}

type groupCall struct {
	fn       func(*bbolt.Tx) error
	res      chan groupResult // one message: the outcome, or lead
	err      error            // the outcome, when the caller committed it itself
	finished bool             // used by the committing caller only
}

type groupResult struct {
	err  error
	lead bool
}

func newGroupCommitter(db *bbolt.DB) *groupCommitter {
	return &groupCommitter{db: db, maxBatch: 256}
}

// Update runs fn in a read-write transaction, possibly shared with other
// callers' functions, and returns once that transaction committed (nil) or
// fn's own error.
func (g *groupCommitter) Update(fn func(*bbolt.Tx) error) error {
	c := &groupCall{fn: fn, res: make(chan groupResult, 1)}
	g.mu.Lock()
	g.pending = append(g.pending, c)
	if g.busy {
		g.mu.Unlock()
		r := <-c.res
		if !r.lead {
			return r.err
		}
		g.mu.Lock()
	}
	g.busy = true
	for !c.finished {
		n := min(len(g.pending), g.maxBatch)
		batch := append([]*groupCall(nil), g.pending[:n]...)
		g.pending = append(g.pending[:0], g.pending[n:]...)
		g.mu.Unlock()
		g.commit(batch, c)
		g.mu.Lock()
	}
	if len(g.pending) > 0 {
		g.pending[0].res <- groupResult{lead: true}
	} else {
		g.busy = false
	}
	g.mu.Unlock()
	return c.err
}

// commit runs batch in one transaction, or each call alone if that fails,
// and delivers every outcome (own's by its fields, the others' by channel).
func (g *groupCommitter) commit(batch []*groupCall, own *groupCall) {
	deliver := func(c *groupCall, err error) {
		if c == own {
			c.err, c.finished = err, true
			return
		}
		c.res <- groupResult{err: err}
	}
	err := g.db.Update(func(tx *bbolt.Tx) error {
		for _, c := range batch {
			if err := c.fn(tx); err != nil {
				return err
			}
		}
		return nil
	})
	g.count()
	if err == nil || len(batch) == 1 {
		for _, c := range batch {
			deliver(c, err)
		}
		return
	}
	for _, c := range batch {
		err := g.db.Update(c.fn)
		g.count()
		deliver(c, err)
	}
}

func (g *groupCommitter) count() {
	g.mu.Lock()
	g.commits++
	g.mu.Unlock()
}

package dicomcodec

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"
)

// What a parsed header costs in memory is estimated as it is built, so that
// a small instance cannot make the parser hold many times its size: a
// 4.5 MB header of 500,000 tiny elements took 527 MB (issue 16). The
// figures are upper estimates of the Go values the parser makes, measured
// on amd64 (a map slot with its key and Attribute; a Dataset map; a value
// boxed in an interface).
const (
	elementCost   = 160 // map slot, 8-byte tag key, Attribute, spare map capacity
	itemCost      = 96  // an empty Dataset and its place in the sequence's Value
	boxedCost     = 24  // an interface holding an int64, float64 or string header
	textValueCost = 64  // a string or PersonName value boxed, with its headers
)

// valueCost estimates the memory of the Attribute decodeValue makes of raw,
// before it is made.
func valueCost(vr string, raw []byte) int64 {
	n := int64(len(raw))
	switch vr {
	case "US", "SS":
		return n / 2 * boxedCost
	case "UL", "SL", "FL":
		return n / 4 * boxedCost
	case "AT":
		return n / 4 * (boxedCost + 16) // a tag key string each
	case "FD", "SV", "UV":
		return n / 8 * boxedCost
	case "OB", "OD", "OF", "OL", "OV", "OW", "UN":
		return n*4/3 + 16 // InlineBinary, base64
	}
	// Text: UTF-8 may take up to three bytes for one byte of a legacy
	// character set; every backslash starts another value.
	return int64(bytes.Count(raw, []byte{'\\'})+1)*textValueCost + 3*n
}

// account adds n estimated bytes to the Dataset being built: past
// MaxDatasetMemory the instance is refused; the shared HeaderMemory, if
// any, must grant it.
func (p *parser) account(n int64) error {
	if p.cost += n; p.cost > p.lim.MaxDatasetMemory {
		return tooLarge("header needs more than %d bytes of memory once parsed (%d elements)", p.lim.MaxDatasetMemory, p.elements)
	}
	return p.acct.charge(n)
}

// HeaderMemory is the memory that the headers being ingested at once may
// hold together: the raw header bytes kept until the storage key is known,
// and the parsed Dataset until the index entry is written. Each upload is
// bounded by HeaderLimits; this bounds their sum, so that N concurrent
// uploads cannot multiply it. An upload that needs more than is free waits
// up to Wait for others to give some back (the parts of one STOW-RS request
// being finished, say), then is refused as unavailable (503 with
// Retry-After). Safe for concurrent use.
type HeaderMemory struct {
	// Wait bounds how long an upload waits for memory; set before use.
	// Two large uploads each waiting for what the other holds give up
	// after it, so a full budget never deadlocks.
	Wait time.Duration

	mu    sync.Mutex
	free  int64
	size  int64
	freed chan struct{} // closed, and replaced, whenever memory is given back
}

// NewHeaderMemory returns a budget of size bytes whose uploads wait up to
// 10 seconds for memory.
func NewHeaderMemory(size int64) *HeaderMemory {
	return &HeaderMemory{Wait: 10 * time.Second, free: size, size: size, freed: make(chan struct{})}
}

// DefaultHeaderMemory is the budget serve gives its Ingester
// (--max-header-memory): four headers of 250,000 elements (61 MiB parsed
// each, plus their raw bytes), hundreds of ordinary ones (each takes at
// least headerChunk). The process's peak is about twice the budget: the
// index record and prepared metadata are encoded from the Dataset while it
// is held (measured: eight concurrent 240,000-element headers, 456 MiB
// charged, peaked at 997 MB RSS).
const DefaultHeaderMemory = 256 << 20

// take takes n bytes, waiting up to Wait (and while ctx lasts) for them.
func (m *HeaderMemory) take(ctx context.Context, n int64) bool {
	var deadline <-chan time.Time
	for {
		m.mu.Lock()
		if n <= m.free {
			m.free -= n
			m.mu.Unlock()
			return true
		}
		freed := m.freed
		m.mu.Unlock()
		if m.Wait <= 0 || n > m.size {
			return false
		}
		if deadline == nil {
			t := time.NewTimer(m.Wait)
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-freed:
		case <-deadline:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

func (m *HeaderMemory) give(n int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.free = min(m.free+n, m.size)
	close(m.freed)
	m.freed = make(chan struct{})
}

// Free returns the bytes not held by any upload (for tests and metrics).
func (m *HeaderMemory) Free() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.free
}

// headerChunk is the step in which an upload takes from the shared budget,
// so that the lock is taken a few times per header, not per element.
const headerChunk = 1 << 20

// HeaderAccount is what one header parse holds of a HeaderMemory (nil:
// none, nothing is shared). The holder calls Release when it lets go of the
// Header.
type HeaderAccount struct {
	shared *HeaderMemory
	ctx    context.Context // bounds a wait for shared memory; nil: no wait
	used   int64
	held   int64
}

// charge records n more bytes in use, taking from the shared budget in
// headerChunk steps; it fails with ErrMemoryBudget when the budget is spent.
func (a *HeaderAccount) charge(n int64) error {
	a.used += n
	if a.shared == nil || a.used <= a.held {
		return nil
	}
	step := max(a.used-a.held, headerChunk)
	ctx := a.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	if !a.shared.take(ctx, step) {
		a.used -= n
		return fmt.Errorf("the headers of concurrent uploads hold all of their %d-byte memory budget; retry later: %w", a.shared.size, ErrMemoryBudget)
	}
	a.held += step
	return nil
}

// NewHeaderAccount returns an account charging shared (nil: no shared
// budget); ctx bounds how long a charge waits for memory to be given back.
func NewHeaderAccount(ctx context.Context, shared *HeaderMemory) *HeaderAccount {
	return &HeaderAccount{shared: shared, ctx: ctx}
}

// refund returns bytes charged but not used (a short read).
func (a *HeaderAccount) refund(n int64) { a.used -= n }

// Release gives back everything the account holds.
func (a *HeaderAccount) Release() {
	if a.shared != nil && a.held > 0 {
		a.shared.give(a.held)
	}
	a.used, a.held = 0, 0
}

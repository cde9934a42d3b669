package dicomcodec

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestHeaderMemoryWaits: an upload that needs memory another holds waits
// for it to be given back rather than failing, gives up after Wait or when
// its context ends, and never takes more than the budget.
func TestHeaderMemoryWaits(t *testing.T) {
	m := NewHeaderMemory(2 * headerChunk)
	m.Wait = time.Hour // only a release or the context ends this wait
	a := &HeaderAccount{shared: m}
	if err := a.charge(2 * headerChunk); err != nil {
		t.Fatal(err)
	}
	b := &HeaderAccount{shared: m, ctx: t.Context()}
	got := make(chan error, 1)
	go func() { got <- b.charge(10) }()
	select {
	case err := <-got:
		t.Fatalf("charged while all memory was held: %v", err)
	default:
	}
	a.Release()
	if err := <-got; err != nil {
		t.Fatalf("after the release: %v", err)
	}
	if m.Free() != headerChunk {
		t.Errorf("free = %d, want %d", m.Free(), headerChunk)
	}

	ctx, cancel := context.WithCancel(t.Context())
	c := &HeaderAccount{shared: m, ctx: ctx}
	go func() { got <- c.charge(2 * headerChunk) }()
	cancel()
	if err := <-got; !errors.Is(err, ErrMemoryBudget) {
		t.Errorf("waiting charge with its context ended: %v, want ErrMemoryBudget", err)
	}
	if err := c.charge(3 * headerChunk); !errors.Is(err, ErrMemoryBudget) {
		t.Errorf("more than the whole budget: %v, want ErrMemoryBudget at once", err)
	}
	b.Release()
	c.Release()
	if m.Free() != 2*headerChunk {
		t.Errorf("free after every release = %d", m.Free())
	}
}

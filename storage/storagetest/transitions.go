package storagetest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
)

// testTransitions drives every state change (actor, from, to) of an outgoing
// transfer through the backend with the operation that asks for it, and
// compares the outcome with gateway.TransferTransitionAllowed, the one
// statement of the rules: an allowed change must happen, a refused one must
// leave the stored state as it was. This is what keeps a backend's own copy
// of the rules (the Redis queue's Lua scripts) in step with the Go table.
// Each case runs on its own queue, so that no Claim picks up another case's
// transfer.
func testTransitions(t *testing.T, newQueue NewQueueFunc) {
	opts := gateway.QueueOptions{VisibilityTimeout: time.Minute}
	for _, by := range []gateway.TransitionActor{gateway.ActorWorker, gateway.ActorAdmin} {
		for _, from := range gateway.TransferStates() {
			for _, to := range gateway.TransferStates() {
				if from == to || (by == gateway.ActorAdmin && to != gateway.StateQueued && to != gateway.StateCancelled) {
					continue // no change, or no admin operation asks for it
				}
				t.Run(fmt.Sprintf("%s/%s-to-%s", by, from, to), func(t *testing.T) {
					q := newQueue(t, opts)
					tr, l := transferIn(t, q, from, by == gateway.ActorWorker)
					err := moveTransfer(t, q, by, tr, l, to)
					got, gerr := q.Get(t.Context(), tr.ID)
					if gerr != nil {
						t.Fatal(gerr)
					}
					if gateway.TransferTransitionAllowed(by, from, to) {
						if err != nil || got.State != to {
							t.Errorf("allowed change: err %v, state %s, want %s", err, got.State, to)
						}
					} else if got.State != from {
						t.Errorf("refused change happened: err %v, state %s, want %s kept", err, got.State, from)
					} else if err != nil && !errors.Is(err, gateway.ErrConflict) && !errors.Is(err, errNothingHandedOut) {
						t.Errorf("refused change: err %v, want ErrConflict", err)
					}
				})
			}
		}
	}
}

// errNothingHandedOut: a worker cannot even claim the transfer.
var errNothingHandedOut = errors.New("claim handed out nothing")

// transferIn stores a transfer in state from, as the operations of its life
// bring it there. When held, the caller gets the lease of a worker that
// still holds it (a queued transfer claimed and not yet saved, a running
// one, a running one an admin cancelled); else nothing holds it.
func transferIn(t *testing.T, q gateway.Queue, from gateway.TransferState, held bool) (*gateway.Transfer, *gateway.Lease) {
	t.Helper()
	ctx := t.Context()
	tr := newTransfer("transition", gateway.PriorityNormal)
	mustEnqueue(t, q, tr)
	if from == gateway.StateQueued && !held || from == gateway.StateCancelled && !held {
		if from == gateway.StateCancelled {
			if _, err := q.Cancel(ctx, tr.ID); err != nil {
				t.Fatal(err)
			}
		}
		return tr, nil
	}
	l := claim(t, q, "first", time.Second)
	if l == nil {
		t.Fatal("Claim of a new transfer handed out nothing")
	}
	if from == gateway.StateQueued {
		return tr, l
	}
	run := *tr
	run.State = gateway.StateRunning
	if err := q.Save(ctx, l, &run); err != nil {
		t.Fatal(err)
	}
	switch from {
	case gateway.StateCompleted, gateway.StateFailed:
		end := run
		end.State = from
		if err := q.Finish(ctx, l, &end); err != nil {
			t.Fatal(err)
		}
		return &end, nil
	case gateway.StateCancelled:
		if _, err := q.Cancel(ctx, tr.ID); err != nil {
			t.Fatal(err)
		}
	}
	return &run, l
}

// moveTransfer asks the queue to move tr to state to, as by would: a worker
// through its lease l (claiming one if it has none), an admin with Cancel or
// Requeue.
func moveTransfer(t *testing.T, q gateway.Queue, by gateway.TransitionActor, tr *gateway.Transfer, l *gateway.Lease, to gateway.TransferState) error {
	t.Helper()
	ctx := t.Context()
	next := *tr
	next.State = to
	if by == gateway.ActorAdmin {
		if to == gateway.StateCancelled {
			_, err := q.Cancel(ctx, tr.ID)
			return err
		}
		return q.Requeue(ctx, &next)
	}
	if l == nil {
		if l = claim(t, q, "second", 0); l == nil {
			return errNothingHandedOut
		}
	}
	switch to {
	case gateway.StateRunning:
		return q.Save(ctx, l, &next)
	case gateway.StateQueued:
		return q.Defer(ctx, l, &next, time.Now().Add(time.Hour))
	default:
		return q.Finish(ctx, l, &next)
	}
}

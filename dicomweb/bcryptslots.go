package dicomweb

import (
	"context"
	"fmt"

	"github.com/dicom-gateway/gateway/gateway"
)

// bcryptWaitersPerSlot is how many password checks may queue for each
// running one before further ones are refused.
const bcryptWaitersPerSlot = 4

// errPasswordChecksBusy is the answer when every bcrypt slot and its queue
// are taken: a 503 with Retry-After, so a flood of passwords (with or
// without a rate_limit configured) costs the server at most its CPUs.
var errPasswordChecksBusy = fmt.Errorf("too many password checks at once, retry later: %w", gateway.ErrUnavailable)

// bcryptSlots bounds bcrypt work: at most running checks at once (one per
// CPU: each takes tens of milliseconds of one core by design) and at most
// bcryptWaitersPerSlot×running waiting for a slot. Without it, basic
// credentials sent in parallel would each burn a core, rate limit or not.
type bcryptSlots struct {
	admit chan struct{} // running + waiting; a full channel refuses at once
	run   chan struct{} // running
}

func newBcryptSlots(running int) bcryptSlots {
	running = max(1, running)
	return bcryptSlots{
		admit: make(chan struct{}, running*(1+bcryptWaitersPerSlot)),
		run:   make(chan struct{}, running),
	}
}

// acquire takes a slot, waiting while others run, and returns its release.
// It fails at once with errPasswordChecksBusy when too many already wait,
// and with ctx's error when the client goes away while waiting.
func (s bcryptSlots) acquire(ctx context.Context) (release func(), err error) {
	select {
	case s.admit <- struct{}{}:
	default:
		return nil, errPasswordChecksBusy
	}
	select {
	case s.run <- struct{}{}:
		return func() { <-s.run; <-s.admit }, nil
	case <-ctx.Done():
		<-s.admit
		return nil, ctx.Err()
	}
}

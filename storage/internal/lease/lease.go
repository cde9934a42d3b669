// Package lease holds what the backends share about leases: the holder's
// token and the renewal loop of an Index.Lock lease, and the waiting loop of
// a transfer queue's Claim. Only storage backends import it.
package lease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
)

// Token is a random token naming one holder of an Index.Lock lease, so
// that renewing or releasing never touches a lease another holder took
// after ours expired.
func Token() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Hold runs renew every ttl/3 while a lease is held, so that only the
// lease of a holder that died (a killed replica) expires, and returns the
// unlock function of Index.Lock: it stops the renewal, waits for a renewal
// in progress, then calls release. Index backends share it so that every
// one renews the same way.
func Hold(ttl time.Duration, renew, release func()) (unlock func()) {
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(max(ttl/3, time.Millisecond))
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				renew()
			}
		}
	}()
	return func() {
		close(stop)
		<-stopped
		release()
	}
}

// PollClaim is the waiting loop of every gateway.Queue's Claim: it calls
// try, which claims a due transfer without waiting, and while nothing is due
// and wait has not passed, block, which waits at most d for a transfer to
// become due (a wake-up, a poll interval) and may claim one itself (a
// blocking stream read does). A lease or an error from either ends the loop;
// so does wait passing with nothing due (nil, nil).
func PollClaim(ctx context.Context, wait time.Duration,
	try func(ctx context.Context) (*gateway.Lease, error),
	block func(ctx context.Context, d time.Duration) (*gateway.Lease, error),
) (*gateway.Lease, error) {
	deadline := time.Now().Add(wait)
	for {
		l, err := try(ctx)
		if l != nil || err != nil {
			return l, err
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return nil, nil
		}
		if l, err := block(ctx, remaining); l != nil || err != nil {
			return l, err
		}
	}
}

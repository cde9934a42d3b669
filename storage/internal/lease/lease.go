// Package lease holds what the index backends share to hold an Index.Lock
// lease: its holder's token and the renewal loop. Only storage backends
// import it.
package lease

import (
	"crypto/rand"
	"encoding/hex"
	"time"
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

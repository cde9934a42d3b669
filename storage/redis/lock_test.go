package redis_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// TestLockOfDeadHolderExpires: a replica killed while holding a lease stops
// renewing it, and another takes the lease once its ttl has passed. The dead
// holder is a lease key written directly, as a killed process leaves it.
func TestLockOfDeadHolderExpires(t *testing.T) {
	prefix := storagetest.RedisPrefix(t)
	c, err := redis.Open(storagetest.RedisURL(t), prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const uid = "1.2.3.4.5"
	key := c.Key("{idx}:lock:" + uid)
	if err := c.Redis().Set(t.Context(), key, "token-of-a-killed-replica", 2*time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	x := redis.NewIndex(c)
	short, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, err := x.Lock(short, uid, time.Minute); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock while the dead holder's lease is live: err=%v, want context.DeadlineExceeded", err)
	}
	unlock, err := x.Lock(t.Context(), uid, time.Minute)
	if err != nil {
		t.Fatalf("Lock after the dead holder's ttl: %v", err)
	}
	defer unlock()
	if got, err := c.Redis().Get(t.Context(), key).Result(); err != nil || got == "token-of-a-killed-replica" {
		t.Errorf("lease key = %q, %v; want our own token", got, err)
	}
}

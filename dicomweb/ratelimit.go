package dicomweb

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// RateLimitConfig is the top-level rate_limit: section of the --config YAML:
// a token bucket per client (per authenticated principal; per client IP
// address without auth). Failed authentications are counted in a separate
// bucket per IP address with the same rate, so credentials cannot be guessed
// faster than that. RequestsPerSecond 0 turns limiting off.
type RateLimitConfig struct {
	RequestsPerSecond float64 `yaml:"requests_per_second"`
	Burst             int     `yaml:"burst"`       // default: RequestsPerSecond rounded up, at least 1
	MaxClients        int     `yaml:"max_clients"` // buckets held at once; default 10000
}

// errRateLimited is the error of a 429 answer.
var errRateLimited = errors.New("too many requests")

const defaultMaxClients = 10000

// RateLimiter holds one token bucket per client key, at most MaxClients of
// them. A nil *RateLimiter allows everything. Safe for concurrent use.
type RateLimiter struct {
	limit rate.Limit
	burst int
	max   int
	now   func() time.Time

	mu        sync.Mutex
	buckets   map[string]*rate.Limiter
	lastSweep time.Time
}

// NewRateLimiter validates cfg and returns its limiter, or nil when
// cfg.RequestsPerSecond is 0.
func NewRateLimiter(cfg RateLimitConfig) (*RateLimiter, error) {
	if cfg.RequestsPerSecond < 0 || cfg.Burst < 0 || cfg.MaxClients < 0 {
		return nil, errors.New("rate_limit: values must not be negative")
	}
	if cfg.RequestsPerSecond == 0 {
		if cfg.Burst != 0 {
			return nil, errors.New("rate_limit.burst without requests_per_second")
		}
		return nil, nil
	}
	if cfg.Burst == 0 {
		cfg.Burst = max(1, int(cfg.RequestsPerSecond+0.999))
	}
	if cfg.MaxClients == 0 {
		cfg.MaxClients = defaultMaxClients
	}
	return &RateLimiter{
		limit:   rate.Limit(cfg.RequestsPerSecond),
		burst:   cfg.Burst,
		max:     cfg.MaxClients,
		now:     time.Now,
		buckets: map[string]*rate.Limiter{},
	}, nil
}

// allow takes a token from key's bucket. When the bucket is empty it takes
// nothing and returns false with the seconds until a token is due.
func (l *RateLimiter) allow(key string) (wait float64, ok bool) {
	if l == nil {
		return 0, true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	r := l.bucket(key, now).ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d.Seconds(), false
	}
	return 0, true
}

// failure counts a failed authentication from ip.
func (l *RateLimiter) failure(ip string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.bucket("fail:"+ip, now).AllowN(now, 1)
}

// failuresExhausted reports whether ip's failed authentications have used
// up its bucket, and how long until another attempt is allowed. It takes
// nothing from the bucket.
func (l *RateLimiter) failuresExhausted(ip string) (wait float64, limited bool) {
	if l == nil {
		return 0, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets["fail:"+ip]
	if !ok {
		return 0, false
	}
	now := l.now()
	if tokens := b.TokensAt(now); tokens < 1 {
		return (1 - tokens) / float64(l.limit), true
	}
	return 0, false
}

// bucket returns key's limiter, creating it; l.mu is held. When the map is
// full, buckets idle long enough to have refilled are dropped first (a full
// bucket is the same as a new one, so this loses nothing); if none is, an
// arbitrary bucket goes, which at worst gives one client a fresh burst.
func (l *RateLimiter) bucket(key string, now time.Time) *rate.Limiter {
	if b, ok := l.buckets[key]; ok {
		return b
	}
	if len(l.buckets) >= l.max {
		if now.Sub(l.lastSweep) > time.Second {
			l.lastSweep = now
			for k, b := range l.buckets {
				if b.TokensAt(now) >= float64(l.burst) {
					delete(l.buckets, k)
				}
			}
		}
		for k := range l.buckets {
			if len(l.buckets) < l.max {
				break
			}
			delete(l.buckets, k)
		}
	}
	b := rate.NewLimiter(l.limit, l.burst)
	l.buckets[key] = b
	return b
}

// clients returns how many buckets are held (for tests).
func (l *RateLimiter) clients() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// String describes the limit without naming any client.
func (l *RateLimiter) String() string {
	if l == nil {
		return "off"
	}
	return fmt.Sprintf("%g/s burst %d per client", float64(l.limit), l.burst)
}

package dicomweb

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// RateLimitConfig is the top-level rate_limit: section of the --config YAML:
// a token bucket per client (per authenticated principal; per client IP
// address without auth). Failed authentications are counted in separate
// buckets per IP address and username with the same rate, so credentials
// cannot be guessed faster than that. RequestsPerSecond 0 turns the request
// limit off; failed authentications are then still limited, at
// defaultFailureRate and defaultFailureBurst.
type RateLimitConfig struct {
	RequestsPerSecond float64 `yaml:"requests_per_second"`
	Burst             int     `yaml:"burst"`       // default: RequestsPerSecond rounded up, at least 1
	MaxClients        int     `yaml:"max_clients"` // buckets held at once; default 10000
}

// errRateLimited is the error of a 429 answer.
var errRateLimited = errors.New("too many requests")

const defaultMaxClients = 10000

// Failed authentications per client network and username without a
// rate_limit section: enough for a person mistyping a password, too few to
// guess one, or to flood the audit log with failure events.
const (
	defaultFailureRate  = 1 // per second
	defaultFailureBurst = 10
)

// RateLimiter holds one token bucket per client key, at most MaxClients of
// them. A nil *RateLimiter allows everything. Safe for concurrent use.
type RateLimiter struct {
	limit rate.Limit // requests per client; 0: not limited
	burst int
	// failLimit and failBurst shape the buckets of failed authentications.
	failLimit rate.Limit
	failBurst int
	max       int
	now       func() time.Time

	mu        sync.Mutex
	buckets   map[string]*rate.Limiter
	lastSweep time.Time
	// pending counts the password checks under way per failure bucket
	// (reserveFailure).
	pending map[string]int
}

// NewRateLimiter validates cfg and returns its limiter. With
// cfg.RequestsPerSecond 0 it limits failed authentications only.
func NewRateLimiter(cfg RateLimitConfig) (*RateLimiter, error) {
	if cfg.RequestsPerSecond < 0 || cfg.Burst < 0 || cfg.MaxClients < 0 {
		return nil, errors.New("rate_limit: values must not be negative")
	}
	if cfg.RequestsPerSecond == 0 && cfg.Burst != 0 {
		return nil, errors.New("rate_limit.burst without requests_per_second")
	}
	if cfg.Burst == 0 && cfg.RequestsPerSecond > 0 {
		cfg.Burst = max(1, int(cfg.RequestsPerSecond+0.999))
	}
	if cfg.MaxClients == 0 {
		cfg.MaxClients = defaultMaxClients
	}
	l := &RateLimiter{
		limit:     rate.Limit(cfg.RequestsPerSecond),
		burst:     cfg.Burst,
		failLimit: rate.Limit(cfg.RequestsPerSecond),
		failBurst: cfg.Burst,
		max:       cfg.MaxClients,
		now:       time.Now,
		buckets:   map[string]*rate.Limiter{},
		pending:   map[string]int{},
	}
	if cfg.RequestsPerSecond == 0 {
		l.failLimit, l.failBurst = defaultFailureRate, defaultFailureBurst
	}
	return l, nil
}

// allow takes a token from key's bucket. When the bucket is empty it takes
// nothing and returns false with the seconds until a token is due.
func (l *RateLimiter) allow(key string) (wait float64, ok bool) {
	if l == nil || l.limit == 0 {
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

// failCeiling is how many times more failures one address may have, over
// all usernames, than one username from that address: enough that a
// colleague mistyping a password behind the same NAT does not lock out the
// PACS, low enough that spraying usernames stays slow.
const failCeiling = 10

// tokenFailure counts a failed authentication by other credentials than
// a password (tokens, JWTs, certificates, none at all) from the client
// network addr (clientNet), in a bucket of their own: they cannot be
// guessed, so they never hold passwords back; the bucket only bounds how
// many of them are audited.
func (l *RateLimiter) tokenFailure(addr string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.failures(addr, "", now).AllowN(now, 1)
}

// tokenFailuresExhausted reports whether addr's bucket of tokenFailure is
// used up. It takes nothing.
func (l *RateLimiter) tokenFailuresExhausted(addr string) bool {
	if l == nil {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[failKey(addr, "")]
	return ok && b.TokensAt(l.now()) < 1
}

// reserveFailure admits a password check for identity from addr while
// identity's bucket of failures and addr's ceiling each hold a token for
// it besides one for every check of theirs still under way: each may turn
// out a failure, so concurrent guesses cannot all pass a bucket with one
// token left. limited true means no (wait: the seconds until a token is
// due). Otherwise the caller calls done once the check has ended, with
// failed true for a wrong password, which then takes its tokens; a right
// one takes nothing.
func (l *RateLimiter) reserveFailure(addr, identity string) (done func(failed bool), wait float64, limited bool) {
	if l == nil {
		return func(bool) {}, 0, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	keys := []string{failKey(addr, identity), ceilingKey(addr)}
	for i, b := range []*rate.Limiter{l.failures(addr, identity, now), l.ceiling(addr, now)} {
		if avail := b.TokensAt(now) - float64(l.pending[keys[i]]); avail < 1 {
			return nil, (1 - avail) / float64(b.Limit()), true
		}
	}
	for _, k := range keys {
		l.pending[k]++
	}
	return func(failed bool) {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, k := range keys {
			if l.pending[k]--; l.pending[k] <= 0 {
				delete(l.pending, k)
			}
		}
		if failed {
			now := l.now()
			l.failures(addr, identity, now).AllowN(now, 1)
			l.ceiling(addr, now).AllowN(now, 1)
		}
	}, 0, false
}

func failKey(addr, identity string) string {
	return "fail:" + addr + "\x00" + identity
}

// failures returns identity's bucket of failures from addr; l.mu is held.
func (l *RateLimiter) failures(addr, identity string, now time.Time) *rate.Limiter {
	return l.bucketWith(failKey(addr, identity), now, l.failLimit, l.failBurst)
}

// ceiling returns addr's bucket of failures over all identities; l.mu is held.
func (l *RateLimiter) ceiling(addr string, now time.Time) *rate.Limiter {
	return l.bucketWith(ceilingKey(addr), now, l.failLimit*failCeiling, l.failBurst*failCeiling)
}

func ceilingKey(addr string) string { return "failall:" + addr }

// clientNet is the rate-limit identity of a client address: the address
// itself for IPv4, its /64 for IPv6. One IPv6 host usually holds a whole
// /64 and can pick any address in it, so per-address buckets would give it
// 2^64 allowances.
func clientNet(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.Unmap()
	if a.Is4() {
		return a.String()
	}
	p, err := a.WithZone("").Prefix(64)
	if err != nil {
		return ip
	}
	return p.String()
}

// bucket returns key's limiter, creating it; l.mu is held. When the map is
// full, buckets idle long enough to have refilled are dropped first (a full
// bucket is the same as a new one, so this loses nothing); if none is, an
// arbitrary bucket goes, which at worst gives one client a fresh burst.
func (l *RateLimiter) bucket(key string, now time.Time) *rate.Limiter {
	return l.bucketWith(key, now, l.limit, l.burst)
}

// bucketWith is bucket for a bucket of its own rate and burst.
func (l *RateLimiter) bucketWith(key string, now time.Time, limit rate.Limit, burst int) *rate.Limiter {
	if b, ok := l.buckets[key]; ok {
		return b
	}
	if len(l.buckets) >= l.max {
		if now.Sub(l.lastSweep) > time.Second {
			l.lastSweep = now
			for k, b := range l.buckets {
				if b.TokensAt(now) >= float64(b.Burst()) {
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
	b := rate.NewLimiter(limit, burst)
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
	switch {
	case l == nil:
		return "off"
	case l.limit == 0:
		return fmt.Sprintf("requests not limited; failed authentications %g/s burst %d per client and username", float64(l.failLimit), l.failBurst)
	}
	return fmt.Sprintf("%g/s burst %d per client", float64(l.limit), l.burst)
}

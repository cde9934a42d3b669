package dicomweb

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/dicom-gateway/gateway/gateway"
)

// BasicConfig is one HTTP basic user, for legacy PACS that cannot send a
// bearer token. The password is configured only as a bcrypt hash ("$2a$…",
// "$2b$…", "$2y$…", e.g. from `gateway hash-password` or `htpasswd -nBC 12
// user`). Plain text is refused, and so is the salted SHA-256 form earlier
// versions accepted: one SHA-256 is cheap to brute-force from a leaked
// config, and checking it in microseconds next to bcrypt's milliseconds let
// response times tell which usernames exist (issue 16).
type BasicConfig struct {
	Name         string         `yaml:"name"`     // principal name in audit and logs
	Username     string         `yaml:"username"` // what the PACS sends
	PasswordHash string         `yaml:"password_hash"`
	Roles        []gateway.Role `yaml:"roles"`
	Peer         string         `yaml:"peer"` // the centre a peer gateway's user speaks for (peerauth.go)
}

// HashPassword returns the bcrypt hash of password for BasicConfig.PasswordHash.
func HashPassword(password string) (string, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	if err != nil {
		return "", err
	}
	return string(h), nil
}

// basicCacheTTL and basicCacheMax bound the cache of verified credentials.
// bcrypt is slow on purpose; a PACS sending the same credentials with every
// request would otherwise pay it each time.
const (
	basicCacheTTL = 5 * time.Minute
	basicCacheMax = 1024
)

type basicUser struct {
	name     string
	username []byte
	bcrypt   []byte
	cost     int // of bcrypt
	roles    []gateway.Role
}

type basicAuth struct {
	users []basicUser
	dummy []byte // bcrypt hash checked when no user matches, so timing does not reveal usernames
	// maxCost is the highest bcrypt cost of the users (the dummy's), and
	// pad a hash of each cost below it that some user has, or that lies
	// between such a cost and maxCost: a user of cost c also checks pad
	// c, c+1, …, maxCost-1, 2^c + … + 2^(maxCost-1) = 2^maxCost - 2^c
	// rounds more, so every check costs what one of maxCost does and a
	// cheaper hash does not tell its username by answering sooner.
	maxCost int
	pad     map[int][]byte
	compare func(hash, password []byte) error // bcrypt.CompareHashAndPassword; tests count the work
	slots   bcryptSlots

	cacheKey []byte // random per process: the cache holds HMACs, never passwords
	mu       sync.Mutex
	cache    map[[sha256.Size]byte]basicCached
}

type basicCached struct {
	user    int
	expires time.Time
}

func newBasicAuth(cfg []BasicConfig) (*basicAuth, error) {
	b := &basicAuth{cache: map[[sha256.Size]byte]basicCached{}, cacheKey: make([]byte, 32), slots: newBcryptSlots(runtime.GOMAXPROCS(0))}
	_, _ = rand.Read(b.cacheKey)
	var errs []error
	seen := map[string]bool{}
	cost := 0
	for i, c := range cfg {
		where := fmt.Sprintf("auth.basic[%d] (%s)", i, c.Name)
		if c.Name == "" || c.Username == "" {
			errs = append(errs, fmt.Errorf("%s: name and username are required", where))
		}
		if strings.Contains(c.Username, ":") {
			errs = append(errs, fmt.Errorf("%s: username must not contain ':'", where))
		}
		if seen[c.Username] {
			errs = append(errs, fmt.Errorf("%s: duplicate username", where))
		}
		seen[c.Username] = true
		if err := checkRoles(c.Roles); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
		}
		u := basicUser{name: c.Name, username: []byte(c.Username), roles: c.Roles}
		h := strings.TrimSpace(c.PasswordHash)
		switch {
		case strings.HasPrefix(h, "$2"):
			n, err := bcrypt.Cost([]byte(h))
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: password_hash is not a valid bcrypt hash", where))
				continue
			}
			cost = max(cost, n)
			u.bcrypt, u.cost = []byte(h), n
		case strings.HasPrefix(h, "sha256:"):
			errs = append(errs, fmt.Errorf("%s: salted SHA-256 password hashes are no longer accepted (fast to brute-force, and they let timing reveal usernames): make a bcrypt hash with `gateway hash-password` (reads the password on stdin) and put it in password_hash", where))
			continue
		default:
			// Never echo the value: it may be a plain-text password.
			errs = append(errs, fmt.Errorf("%s: password_hash must be a bcrypt hash ($2a$/$2b$/$2y$) (from `gateway hash-password`); plain-text passwords are not accepted", where))
			continue
		}
		b.users = append(b.users, u)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cost == 0 {
		cost = bcrypt.MinCost
	}
	dummy, err := bcrypt.GenerateFromPassword([]byte("no such user"), cost)
	if err != nil {
		return nil, err
	}
	b.dummy, b.maxCost, b.pad, b.compare = dummy, cost, map[int][]byte{}, bcrypt.CompareHashAndPassword
	for _, u := range b.users {
		for c := u.cost; c < cost && b.pad[c] == nil; c++ {
			if b.pad[c], err = bcrypt.GenerateFromPassword([]byte("padding"), c); err != nil {
				return nil, err
			}
		}
	}
	return b, nil
}

// authenticate checks the base64 part of a Basic Authorization header.
// Usernames are compared in constant time and a bcrypt hash is always
// checked, even for an unknown user. bcrypt runs in a bounded number of
// slots (bcryptSlots): past them the answer is gateway.ErrUnavailable (503),
// whatever the rate limit says.
func (b *basicAuth) authenticate(ctx context.Context, cred string) (gateway.Principal, error) {
	raw, err := base64.StdEncoding.DecodeString(cred)
	if err != nil {
		return gateway.Principal{}, fmt.Errorf("malformed basic credentials: %w", gateway.ErrUnauthenticated)
	}
	username, password, ok := strings.Cut(string(raw), ":")
	if !ok {
		return gateway.Principal{}, fmt.Errorf("malformed basic credentials: %w", gateway.ErrUnauthenticated)
	}
	mac := hmac.New(sha256.New, b.cacheKey)
	mac.Write(raw)
	var key [sha256.Size]byte
	mac.Sum(key[:0])
	now := time.Now()
	b.mu.Lock()
	hit, cached := b.cache[key]
	b.mu.Unlock()
	if cached && now.Before(hit.expires) {
		return b.principal(hit.user), nil
	}

	found := -1
	for i := range b.users {
		if subtle.ConstantTimeCompare([]byte(username), b.users[i].username) == 1 {
			found = i
		}
	}
	hash, cost := b.dummy, b.maxCost
	if found >= 0 {
		hash, cost = b.users[found].bcrypt, b.users[found].cost
	}
	release, err := b.slots.acquire(ctx)
	if err != nil {
		return gateway.Principal{}, err
	}
	ok = b.compare(hash, []byte(password)) == nil
	for c := cost; c < b.maxCost; c++ {
		_ = b.compare(b.pad[c], []byte(password))
	}
	release()
	if found < 0 || !ok {
		return gateway.Principal{}, fmt.Errorf("bad basic credentials: %w", gateway.ErrUnauthenticated)
	}
	b.mu.Lock()
	if len(b.cache) >= basicCacheMax {
		clear(b.cache)
	}
	b.cache[key] = basicCached{user: found, expires: now.Add(basicCacheTTL)}
	b.mu.Unlock()
	return b.principal(found), nil
}

func (b *basicAuth) principal(i int) gateway.Principal {
	return gateway.Principal{Name: b.users[i].name, Roles: b.users[i].roles, Method: "basic"}
}

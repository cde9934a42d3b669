package gateway

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// AuditKeys are the secret keys of the audit chain. Without them the chain
// only proves that records fit together: anyone who can write Redis or
// state.db can rewrite a record and recompute every plain hash after it.
// With them each record's hash is an HMAC-SHA-256 under a key held outside
// the store, and the record names the key (AuditEvent.KeyID), so keys can
// rotate: new records use the current key, verification takes the whole
// set. Safe for concurrent use (immutable once parsed).
type AuditKeys struct {
	current string
	keys    map[string][]byte
	// unkeyed is how many records at the start of the chain predate the
	// keys (written before a key was configured): those are checked as
	// plain hashes, every later record must be keyed.
	unkeyed int64
}

var auditKeyIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// minAuditKeyBytes is the shortest key accepted: HMAC-SHA-256's block of
// entropy.
const minAuditKeyBytes = 32

// ParseAuditKeys reads an audit key file: one setting per line, "#" starts
// a comment.
//
//	key 2026-01 <hex, at least 32 bytes>   # the first key line signs new records
//	key 2025-01 <hex>                      # older keys, for verification only
//	unkeyed-records 1234                   # records 1..1234 were written before keying
//
// Make a key with `openssl rand -hex 32`. Errors never echo a key.
func ParseAuditKeys(r io.Reader) (*AuditKeys, error) {
	k := &AuditKeys{keys: map[string][]byte{}}
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		text, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(text)
		if len(f) == 0 {
			continue
		}
		switch {
		case f[0] == "key" && len(f) == 3:
			id := f[1]
			if !auditKeyIDPattern.MatchString(id) {
				return nil, fmt.Errorf("audit key file line %d: key ID must be 1-64 letters, digits, '.', '_' or '-': %w", line, ErrInvalid)
			}
			if _, dup := k.keys[id]; dup {
				return nil, fmt.Errorf("audit key file line %d: key ID %s given twice: %w", line, id, ErrInvalid)
			}
			key, err := hex.DecodeString(f[2])
			if err != nil || len(key) < minAuditKeyBytes {
				return nil, fmt.Errorf("audit key file line %d: key %s must be at least %d bytes in hex (openssl rand -hex 32): %w", line, id, minAuditKeyBytes, ErrInvalid)
			}
			k.keys[id] = key
			if k.current == "" {
				k.current = id
			}
		case f[0] == "unkeyed-records" && len(f) == 2:
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("audit key file line %d: unkeyed-records wants a record count: %w", line, ErrInvalid)
			}
			k.unkeyed = n
		default:
			return nil, fmt.Errorf("audit key file line %d: want \"key <id> <hex>\" or \"unkeyed-records <n>\": %w", line, ErrInvalid)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("audit key file: %w", err)
	}
	if k.current == "" {
		return nil, fmt.Errorf("audit key file: no key line: %w", ErrInvalid)
	}
	return k, nil
}

// CurrentID is the ID of the key that signs new records.
func (k *AuditKeys) CurrentID() string { return k.current }

// auditSum is the chain hash of ev: HMAC-SHA-256 under the key ev.KeyID
// names, or plain SHA-256 (AuditHash) for an unkeyed record. Both cover
// ev.PrevHash followed by AuditCanonical(ev), which includes key_id.
func (k *AuditKeys) auditSum(ev *AuditEvent) (string, error) {
	if ev.KeyID == "" {
		return AuditHash(ev)
	}
	var key []byte
	if k != nil {
		key = k.keys[ev.KeyID]
	}
	if key == nil {
		return "", fmt.Errorf("record is keyed with %q, which is not in the audit key set", ev.KeyID)
	}
	canon, err := AuditCanonical(ev)
	if err != nil {
		return "", err
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(ev.PrevHash))
	m.Write(canon)
	return hex.EncodeToString(m.Sum(nil)), nil
}

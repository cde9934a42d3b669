package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// AuditSegmentPrefix is where sealed segments live in the blob store:
// AuditSegmentPrefix + "<first seq>-<last seq>.jsonl", both zero-padded to
// 16 digits so that keys sort like positions. No instance key starts so.
const AuditSegmentPrefix = "audit/"

// DefaultAuditSegmentRecords is the most records one segment holds.
const DefaultAuditSegmentRecords = 10000

// maxAuditLine bounds one line of a segment (a seal or a record) read back.
const maxAuditLine = 16 << 20

// AuditSeal is the first line of a segment: what the segment holds and how
// it links to the one before. Its MAC, under the audit key when one is
// configured, covers every other field.
type AuditSeal struct {
	Version  int    `json:"seal_version"`
	Gateway  string `json:"gateway"`
	FirstSeq int64  `json:"first_seq"`
	LastSeq  int64  `json:"last_seq"`
	Records  int64  `json:"records"`
	// PrevHash is the hash of record FirstSeq-1 (the previous segment's
	// head, "" for the first segment); Head the hash of record LastSeq.
	PrevHash string `json:"prev_hash"`
	Head     string `json:"head"`
	// PrevSegmentSHA256 is the SHA-256 of the whole previous segment
	// object, "" for the first: a replaced segment breaks the next one's.
	PrevSegmentSHA256 string `json:"prev_segment_sha256"`
	// RecordsSHA256 is the SHA-256 of the record lines after the seal.
	RecordsSHA256 string `json:"records_sha256"`
	// MinTime and MaxTime bound the records' times; Terms is a Bloom filter
	// of their index terms (AuditTerms): queries skip segments by them.
	MinTime time.Time  `json:"min_time"`
	MaxTime time.Time  `json:"max_time"`
	Terms   auditBloom `json:"terms"`
	KeyID   string     `json:"key_id,omitempty"`
	MAC     string     `json:"mac,omitempty"`
}

// mac is the seal's HMAC under keys' key KeyID (plain SHA-256 unkeyed).
func (s *AuditSeal) mac(keys *AuditKeys) (string, error) {
	c := *s
	c.MAC = ""
	raw, err := json.Marshal(&c)
	if err != nil {
		return "", err
	}
	if s.KeyID == "" {
		sum := sha256.Sum256(raw)
		return hex.EncodeToString(sum[:]), nil
	}
	var key []byte
	if keys != nil {
		key = keys.keys[s.KeyID]
	}
	if key == nil {
		return "", fmt.Errorf("seal is keyed with %q, which is not in the audit key set", s.KeyID)
	}
	m := hmac.New(sha256.New, key)
	m.Write(raw)
	return hex.EncodeToString(m.Sum(nil)), nil
}

// auditBloom is a Bloom filter over index terms: a segment whose filter
// lacks a query's term holds no record of it.
type auditBloom struct {
	M    uint32 `json:"m"` // bits
	K    uint32 `json:"k"` // hashes per term
	Bits []byte `json:"bits"`
}

func auditTermHash(t AuditTerm) uint64 {
	sum := sha256.Sum256([]byte(t.Field + "\x00" + t.Value))
	return binary.BigEndian.Uint64(sum[:8])
}

// newAuditBloom sizes a filter for the term hashes given (about 1% false
// positives: 10 bits and 7 hashes a term).
func newAuditBloom(terms map[uint64]struct{}) auditBloom {
	m := uint32(max(64, 10*len(terms)))
	m = (m + 7) / 8 * 8
	b := auditBloom{M: m, K: 7, Bits: make([]byte, m/8)}
	for h := range terms {
		for i := range b.K {
			bit := b.bit(h, i)
			b.Bits[bit/8] |= 1 << (bit % 8)
		}
	}
	return b
}

func (b auditBloom) bit(h uint64, i uint32) uint32 {
	h1, h2 := uint32(h), uint32(h>>32)|1
	return (h1 + i*h2) % b.M
}

// mayHold reports whether a term may be in the filter; an empty or
// malformed filter may hold anything.
func (b auditBloom) mayHold(t AuditTerm) bool {
	if b.M == 0 || len(b.Bits)*8 < int(b.M) {
		return true
	}
	h := auditTermHash(t)
	for i := range b.K {
		bit := b.bit(h, i)
		if b.Bits[bit/8]&(1<<(bit%8)) == 0 {
			return false
		}
	}
	return true
}

// AuditSegmentKey is the blob key of the segment of records first..last.
func AuditSegmentKey(first, last int64) string {
	return fmt.Sprintf("%s%016d-%016d.jsonl", AuditSegmentPrefix, first, last)
}

// parseAuditSegmentKey returns the range a segment key names.
func parseAuditSegmentKey(key string) (first, last int64, ok bool) {
	name, ok := strings.CutPrefix(key, AuditSegmentPrefix)
	if !ok {
		return 0, 0, false
	}
	name, ok = strings.CutSuffix(name, ".jsonl")
	a, b, ok2 := strings.Cut(name, "-")
	if !ok || !ok2 || len(a) != 16 || len(b) != 16 {
		return 0, 0, false
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || first < 1 || last < first {
		return 0, 0, false
	}
	return first, last, true
}

// auditSegment is a segment object as listed.
type auditSegment struct {
	key         string
	first, last int64
	size        int64
	modTime     time.Time
}

// sealCache keeps the seals read by queries: segments are written once, so
// a seal is valid while its object's size and time are unchanged.
type sealCache struct {
	mu    sync.Mutex
	seals map[string]cachedSeal
}

type cachedSeal struct {
	size    int64
	modTime time.Time
	seal    *AuditSeal
}

const maxCachedSeals = 4096

func (c *sealCache) get(s auditSegment) *AuditSeal {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.seals[s.key]; ok && e.size == s.size && e.modTime.Equal(s.modTime) {
		return e.seal
	}
	return nil
}

func (c *sealCache) put(s auditSegment, seal *AuditSeal) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seals == nil || len(c.seals) >= maxCachedSeals {
		c.seals = map[string]cachedSeal{}
	}
	c.seals[s.key] = cachedSeal{size: s.size, modTime: s.modTime, seal: seal}
}

// segmentReader streams one segment object: its seal, then its records.
type segmentReader struct {
	rc   io.ReadCloser
	sc   *bufio.Scanner
	hash hash.Hash // of the whole object, as read
	seal *AuditSeal
}

type hashingReader struct {
	r io.Reader
	h hash.Hash
}

func (h hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	return n, err
}

// openSegment opens s and reads its seal line.
func (a *AuditArchive) openSegment(ctx context.Context, s auditSegment) (*segmentReader, error) {
	rc, err := a.Blobs.Get(ctx, s.key, 0, -1)
	if err != nil {
		return nil, fmt.Errorf("audit segment %s: %w", s.key, err)
	}
	sr := &segmentReader{rc: rc, hash: sha256.New()}
	sr.sc = bufio.NewScanner(hashingReader{rc, sr.hash})
	sr.sc.Buffer(make([]byte, 0, 64<<10), maxAuditLine)
	if !sr.sc.Scan() {
		err := sr.sc.Err()
		rc.Close()
		if err == nil {
			err = errors.New("empty object")
		}
		return nil, &segmentFormatError{fmt.Sprintf("segment %s has no seal: %v", s.key, err)}
	}
	seal := &AuditSeal{}
	if err := json.Unmarshal(sr.sc.Bytes(), seal); err != nil || seal.Version != 1 {
		rc.Close()
		return nil, &segmentFormatError{fmt.Sprintf("segment %s: first line is not a seal (%v)", s.key, err)}
	}
	sr.seal = seal
	return sr, nil
}

// segmentFormatError is a segment that cannot be read as one: a fault of
// the archive (reported by Verify), not of the store.
type segmentFormatError struct{ reason string }

func (e *segmentFormatError) Error() string { return e.reason }

// next returns the next record line, nil at the end.
func (sr *segmentReader) next() ([]byte, error) {
	if sr.sc.Scan() {
		return sr.sc.Bytes(), nil
	}
	if err := sr.sc.Err(); err != nil {
		return nil, err
	}
	return nil, nil
}

// sum returns the SHA-256 of the object, reading what is left of it.
func (sr *segmentReader) sum() (string, error) {
	if _, err := io.Copy(io.Discard, hashingReader{sr.rc, sr.hash}); err != nil {
		return "", err
	}
	return hex.EncodeToString(sr.hash.Sum(nil)), nil
}

func (sr *segmentReader) Close() error { return sr.rc.Close() }

// readSeal returns s's seal, from the cache or the object's first line.
func (a *AuditArchive) readSeal(ctx context.Context, s auditSegment) (*AuditSeal, error) {
	if seal := a.cache.get(s); seal != nil {
		return seal, nil
	}
	sr, err := a.openSegment(ctx, s)
	if err != nil {
		return nil, err
	}
	sr.Close()
	a.cache.put(s, sr.seal)
	return sr.seal, nil
}

// segmentSummary is what a seal states about its records, computed from
// them.
type segmentSummary struct {
	records          int64
	minTime, maxTime time.Time
	terms            map[uint64]struct{}
	recordsHash      hash.Hash
	head             string
}

func newSegmentSummary() *segmentSummary {
	return &segmentSummary{terms: map[uint64]struct{}{}, recordsHash: sha256.New()}
}

func (s *segmentSummary) add(line []byte, ev *AuditEvent) {
	s.records++
	s.recordsHash.Write(line)
	s.recordsHash.Write([]byte{'\n'})
	if s.minTime.IsZero() || ev.Time.Before(s.minTime) {
		s.minTime = ev.Time
	}
	if ev.Time.After(s.maxTime) {
		s.maxTime = ev.Time
	}
	for _, t := range AuditTerms(ev) {
		s.terms[auditTermHash(t)] = struct{}{}
	}
	s.head = ev.Hash
}

// matches reports whether seal states what s computed.
func (s *segmentSummary) matches(seal *AuditSeal) bool {
	bloom := newAuditBloom(s.terms)
	return seal.Records == s.records && seal.Head == s.head &&
		seal.MinTime.Equal(s.minTime) && seal.MaxTime.Equal(s.maxTime) &&
		seal.RecordsSHA256 == hex.EncodeToString(s.recordsHash.Sum(nil)) &&
		seal.Terms.M == bloom.M && seal.Terms.K == bloom.K && bytes.Equal(seal.Terms.Bits, bloom.Bits)
}

// auditLine is the line a stored record becomes in a segment: the record
// as stored, compacted should it hold a line break (the chain hashes the
// canonical form, which compacting keeps).
func auditLine(raw []byte) []byte {
	if bytes.ContainsAny(raw, "\r\n") {
		var b bytes.Buffer
		if json.Compact(&b, raw) == nil {
			return b.Bytes()
		}
	}
	return raw
}

// mayMatch reports whether seal's segment may hold a record matching f.
func (seal *AuditSeal) mayMatch(f AuditFilter) bool {
	if !f.Since.IsZero() && seal.MaxTime.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !seal.MinTime.Before(f.Until) {
		return false
	}
	for _, t := range []AuditTerm{{"study", f.StudyUID}, {"patient", f.PatientID}, {"actor", f.Actor}, {"action", f.Action}} {
		if t.Value != "" && !seal.Terms.mayHold(t) {
			return false
		}
	}
	return true
}

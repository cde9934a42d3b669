package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Audit actions. Every access to patient data and every transfer state change
// is recorded under one of these.
const (
	ActionStore            = "store"              // STOW-RS request with its instances
	ActionQuery            = "query"              // QIDO-RS search
	ActionRetrieve         = "retrieve"           // WADO-RS / WADO-URI read
	ActionDelete           = "delete"             // DELETE of study, series or instance
	ActionTransferCreated  = "transfer.created"   //
	ActionTransferStarted  = "transfer.started"   //
	ActionTransferComplete = "transfer.completed" //
	ActionTransferFailed   = "transfer.failed"    //
	ActionTransferCancel   = "transfer.cancelled" //
	ActionTransferRetried  = "transfer.retried"   //
	ActionTransferVerified = "transfer.verified"  //
	ActionAuthFailure      = "auth.failure"       // no or bad credentials
	ActionAccessDenied     = "auth.denied"        // wrong role
	ActionAdmin            = "admin"              // other admin actions
	ActionAuditUsed        = "audit.used"         // the audit log itself was queried or verified
)

// Audit outcomes (the FHIR AuditEvent.outcome codes map from these).
const (
	OutcomeSuccess = "success"
	OutcomeFailure = "failure" // minor failure: the request was refused or partly failed
	OutcomeError   = "error"   // serious failure
)

// AuditEvent is one record of the audit log. ID, Seq, PrevHash, KeyID and
// Hash are set by the AuditLog when the event is appended.
type AuditEvent struct {
	ID         string         `json:"id"`
	Seq        int64          `json:"seq"`
	Time       time.Time      `json:"time"`
	Gateway    string         `json:"gateway"`
	Actor      Principal      `json:"actor"`
	Action     string         `json:"action"`
	Outcome    string         `json:"outcome"`
	StudyUIDs  []string       `json:"study_uids,omitempty"`
	PatientIDs []string       `json:"patient_ids,omitempty"`
	Detail     map[string]any `json:"detail,omitempty"`
	PrevHash   string         `json:"prev_hash,omitempty"`
	// KeyID names the audit key whose HMAC Hash is (AuditKeys); "" for a
	// record chained with plain SHA-256 (no key configured).
	KeyID string `json:"key_id,omitempty"`
	Hash  string `json:"hash,omitempty"`
}

// Auditor records audit events. Record fails (ErrUnavailable) when the event
// could not be durably written; callers that serve patient data must then
// refuse the request rather than serve it unaudited. (The audit work owns the
// full AuditLog interface and its backends.)
type Auditor interface {
	Record(ctx context.Context, ev *AuditEvent) error
}

// AuditLog is the append-only, hash-chained audit store. Implementations:
// storage/bolt (embedded default) and storage/redis (shared by replicas),
// which hold the live log, and AuditArchive, which puts the segments
// sealed into the blob store in front of either (the gateway's log).
//
// Record appends ev as the next record of one linear chain, even when several
// replicas append to one backend at once: it sets ev.Seq (1, 2, 3, … without
// gaps), ev.ID (AuditRecordID(Seq)), ev.Time (now, if zero; always stored in
// UTC), ev.Gateway (the log's gateway name), ev.PrevHash (the previous
// record's Hash, "" for the first) and ev.Hash (AuditHash). It returns only
// once the record is durably stored; an event without Action or Outcome is
// ErrInvalid, an unreachable store ErrUnavailable. When Record fails the
// event may or may not have been stored (a lost reply), never half of it.
//
// Query returns one page of the records that match every filter of f, in
// chain order (oldest first); see AuditFilter. Verify reads the whole chain
// (a live log alone: from the last record trimmed into a segment) and
// reports the first record that was changed, removed or reordered; it
// returns an error only when the store cannot be read. All methods are safe
// for concurrent use.
type AuditLog interface {
	Auditor
	Query(ctx context.Context, f AuditFilter) (*AuditPage, error)
	Verify(ctx context.Context) (VerifyResult, error)
}

// AuditClockSkew bounds how far a record's Time may be out of chain order
// (replicas' clocks, events timed before they are appended). Query relies on
// it to start and stop since/until scans near the right place instead of
// reading the whole log.
const AuditClockSkew = 5 * time.Minute

// Page sizes of AuditLog.Query.
const (
	DefaultAuditLimit = 100
	MaxAuditLimit     = 1000
	// maxAuditExamined bounds the records one Query call reads; a sparse
	// filter over a long log returns a short (even empty) page with Next set
	// rather than reading everything at once.
	maxAuditExamined = 20000
)

// AuditFilter selects audit records. Empty fields do not filter. Since is
// inclusive, Until exclusive. Limit is the page size (0 = DefaultAuditLimit,
// at most MaxAuditLimit). Cursor is the Next of the previous page, "" for the
// first page.
type AuditFilter struct {
	StudyUID  string
	PatientID string
	Actor     string // Principal.Name
	Action    string
	Since     time.Time
	Until     time.Time
	Limit     int
	Cursor    string
}

// Match reports whether ev passes every filter of f (Limit and Cursor aside).
func (f AuditFilter) Match(ev *AuditEvent) bool {
	switch {
	case f.StudyUID != "" && !slices.Contains(ev.StudyUIDs, f.StudyUID),
		f.PatientID != "" && !slices.Contains(ev.PatientIDs, f.PatientID),
		f.Actor != "" && ev.Actor.Name != f.Actor,
		f.Action != "" && ev.Action != f.Action,
		!f.Since.IsZero() && ev.Time.Before(f.Since),
		!f.Until.IsZero() && !ev.Time.Before(f.Until):
		return false
	}
	return true
}

// AuditPage is one page of a Query. Next is set when more records may match:
// pass it as the next AuditFilter.Cursor. A page may be shorter than the
// limit, even empty, and still carry Next.
type AuditPage struct {
	Events []*AuditEvent `json:"events"`
	Next   string        `json:"next,omitempty"`
}

// VerifyResult is the outcome of checking the chain. Records counts the
// records read. When OK is false, FirstBroken is the ID of the first record
// that is missing or does not fit the chain, and Reason says why.
//
// With sealed segments (AuditArchive) Records counts every position once;
// Segments and Sealed count the segments and the records read from them,
// and InBoth the records found both in a segment and, not yet trimmed, in
// the live log (each checked against the other).
type VerifyResult struct {
	OK          bool   `json:"ok"`
	Records     int64  `json:"records"`
	FirstBroken string `json:"first_broken,omitempty"`
	Reason      string `json:"reason,omitempty"`
	Segments    int    `json:"segments,omitempty"`
	Sealed      int64  `json:"sealed,omitempty"`
	InBoth      int64  `json:"in_both,omitempty"`
}

// AuditRecordID is the ID of the record at position seq of the chain: the
// position zero-padded to 16 digits, so that IDs sort like positions and a
// missing record can be named even though it is gone.
func AuditRecordID(seq int64) string { return fmt.Sprintf("%016d", seq) }

// AuditCanonical is the byte form that the chain hashes: ev without Hash as
// JSON (encoding/json, omitempty as tagged), re-encoded with every object's
// keys sorted and numbers kept as written, so that the form survives a round
// trip through storage. It is written directly, without the marshal, decode,
// marshal round trip that defines it (auditCanonicalSlow in the tests); the
// actor and values of types other than JSON's own still take that route, so
// a field added to Principal is hashed without a change here.
func AuditCanonical(ev *AuditEvent) ([]byte, error) {
	b := make([]byte, 0, 512)
	b = append(b, `{"action":`...)
	b = appendJSONString(b, ev.Action)
	b = append(b, `,"actor":`...)
	b, err := appendCanonical(b, ev.Actor)
	if err != nil {
		return nil, err
	}
	if len(ev.Detail) > 0 {
		b = append(b, `,"detail":`...)
		if b, err = appendCanonical(b, ev.Detail); err != nil {
			return nil, err
		}
	}
	b = append(b, `,"gateway":`...)
	b = appendJSONString(b, ev.Gateway)
	b = append(b, `,"id":`...)
	b = appendJSONString(b, ev.ID)
	if ev.KeyID != "" {
		b = append(b, `,"key_id":`...)
		b = appendJSONString(b, ev.KeyID)
	}
	b = append(b, `,"outcome":`...)
	b = appendJSONString(b, ev.Outcome)
	if len(ev.PatientIDs) > 0 {
		b = append(b, `,"patient_ids":`...)
		b = appendJSONStrings(b, ev.PatientIDs)
	}
	if ev.PrevHash != "" {
		b = append(b, `,"prev_hash":`...)
		b = appendJSONString(b, ev.PrevHash)
	}
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, ev.Seq, 10)
	if len(ev.StudyUIDs) > 0 {
		b = append(b, `,"study_uids":`...)
		b = appendJSONStrings(b, ev.StudyUIDs)
	}
	t, err := ev.Time.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("audit event time: %v: %w", err, ErrInvalid)
	}
	b = append(b, `,"time":`...)
	b = append(b, t...)
	return append(b, '}'), nil
}

// appendJSONString appends s as encoding/json writes it after a round trip:
// every invalid UTF-8 byte becomes U+FFFD (as Marshal does), and the result
// is written as Marshal writes a valid string.
func appendJSONString(b []byte, s string) []byte {
	raw, _ := json.Marshal(jsonValidUTF8(s)) // a valid string always marshals
	return append(b, raw...)
}

// jsonValidUTF8 replaces every invalid UTF-8 byte of s with U+FFFD, as
// encoding/json does when it marshals s.
func jsonValidUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var sb strings.Builder
	for _, r := range s { // an invalid byte yields utf8.RuneError, width 1
		sb.WriteRune(r)
	}
	return sb.String()
}

func appendJSONStrings(b []byte, ss []string) []byte {
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, s)
	}
	return append(b, ']')
}

// appendCanonical appends v in canonical form: JSON's own types directly,
// anything else through Marshal and a UseNumber decode.
func appendCanonical(b []byte, v any) ([]byte, error) {
	var err error
	switch v := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case string:
		return appendJSONString(b, v), nil
	case bool, json.Number, float64, float32, int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		raw, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("audit detail: %v: %w", err, ErrInvalid)
		}
		return append(b, raw...), nil
	case map[string]any:
		if v == nil {
			return append(b, "null"...), nil
		}
		// Keys are sorted as a round trip sorts them: by the bytes of the
		// key once invalid UTF-8 is replaced.
		type kv struct {
			key string
			val any
		}
		kvs := make([]kv, 0, len(v))
		for k, val := range v {
			kvs = append(kvs, kv{jsonValidUTF8(k), val})
		}
		slices.SortFunc(kvs, func(x, y kv) int { return strings.Compare(x.key, y.key) })
		b = append(b, '{')
		for i, e := range kvs {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, e.key)
			b = append(b, ':')
			if b, err = appendCanonical(b, e.val); err != nil {
				return nil, err
			}
		}
		return append(b, '}'), nil
	case []any:
		if v == nil {
			return append(b, "null"...), nil
		}
		b = append(b, '[')
		for i, e := range v {
			if i > 0 {
				b = append(b, ',')
			}
			if b, err = appendCanonical(b, e); err != nil {
				return nil, err
			}
		}
		return append(b, ']'), nil
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("audit event: %v: %w", err, ErrInvalid)
	}
	var generic any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&generic); err != nil {
		return nil, fmt.Errorf("audit event: %v: %w", err, ErrInvalid)
	}
	return appendCanonical(b, generic)
}

// AuditHash is the chain hash of ev: hex SHA-256 over ev.PrevHash followed by
// AuditCanonical(ev). ev.PrevHash is part of the canonical form too, so a
// record moved elsewhere in the chain no longer matches its hash.
func AuditHash(ev *AuditEvent) (string, error) {
	canon, err := AuditCanonical(ev)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	h.Write([]byte(ev.PrevHash))
	h.Write(canon)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// PrepareAuditEvent checks ev and sets the fields that do not depend on its
// position: Time (now if zero, in UTC) and Gateway. Backends call it before
// SealAuditEvent.
func PrepareAuditEvent(ev *AuditEvent, gatewayName string, now time.Time) error {
	if ev == nil || ev.Action == "" || ev.Outcome == "" {
		return fmt.Errorf("audit event without action or outcome: %w", ErrInvalid)
	}
	if ev.Time.IsZero() {
		ev.Time = now
	}
	ev.Time = ev.Time.UTC()
	ev.Gateway = gatewayName
	return nil
}

// SealAuditEvent places ev at position seq after a record whose hash is
// prevHash: it sets ID, Seq, PrevHash, KeyID and Hash and returns the JSON
// to store. With keys (not nil) Hash is the HMAC under the current key;
// without, the plain SHA-256 of AuditHash.
func SealAuditEvent(ev *AuditEvent, seq int64, prevHash string, keys *AuditKeys) ([]byte, error) {
	ev.Seq, ev.ID, ev.PrevHash, ev.KeyID, ev.Hash = seq, AuditRecordID(seq), prevHash, "", ""
	if keys != nil {
		ev.KeyID = keys.current
	}
	h, err := keys.auditSum(ev)
	if err != nil {
		return nil, err
	}
	ev.Hash = h
	return json.Marshal(ev)
}

// DecodeAuditEvent decodes a stored record, keeping numbers in Detail as
// written (json.Number) so that its hash can be recomputed exactly.
func DecodeAuditEvent(raw []byte) (*AuditEvent, error) {
	ev := &AuditEvent{}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(ev); err != nil {
		return nil, err
	}
	return ev, nil
}

// AuditTerm is one (field, value) under which a record is indexed for Query.
type AuditTerm struct {
	Field string // "study", "patient", "actor" or "action"
	Value string
}

// AuditTerms lists the index terms of ev, so that every backend indexes
// records alike.
func AuditTerms(ev *AuditEvent) []AuditTerm {
	var terms []AuditTerm
	seen := map[AuditTerm]bool{}
	add := func(field, value string) {
		t := AuditTerm{field, value}
		if value != "" && !seen[t] {
			seen[t] = true
			terms = append(terms, t)
		}
	}
	for _, uid := range ev.StudyUIDs {
		add("study", uid)
	}
	for _, id := range ev.PatientIDs {
		add("patient", id)
	}
	add("actor", ev.Actor.Name)
	add("action", ev.Action)
	return terms
}

// driver returns the index term that drives a query: the first filter set
// among study, patient, actor, action; ok is false when none is.
func (f AuditFilter) driver() (AuditTerm, bool) {
	switch {
	case f.StudyUID != "":
		return AuditTerm{"study", f.StudyUID}, true
	case f.PatientID != "":
		return AuditTerm{"patient", f.PatientID}, true
	case f.Actor != "":
		return AuditTerm{"actor", f.Actor}, true
	case f.Action != "":
		return AuditTerm{"action", f.Action}, true
	}
	return AuditTerm{}, false
}

// AuditScanner is what a backend offers the shared query code (QueryAudit).
type AuditScanner interface {
	// AuditHead returns the Seq of the last record, 0 when the log is empty.
	AuditHead(ctx context.Context) (int64, error)
	// AuditIndex returns up to n positions greater than after, ascending, of
	// the records indexed under t.
	AuditIndex(ctx context.Context, t AuditTerm, after int64, n int) ([]int64, error)
	// AuditRecords returns the records at seqs, in that order; nil for a
	// position that holds none.
	AuditRecords(ctx context.Context, seqs []int64) ([]*AuditEvent, error)
}

// EncodeAuditCursor and DecodeAuditCursor make the opaque Next of a page:
// the last position examined.
func EncodeAuditCursor(after int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte("a1:" + strconv.FormatInt(after, 10)))
}

// DecodeAuditCursor is the inverse of EncodeAuditCursor; a cursor it did not
// make is ErrInvalid.
func DecodeAuditCursor(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err == nil {
		if v, ok := strings.CutPrefix(string(raw), "a1:"); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
				return n, nil
			}
		}
	}
	return 0, fmt.Errorf("audit cursor %q: %w", printable(s), ErrInvalid)
}

// QueryAudit answers AuditLog.Query over a backend's AuditScanner. It walks
// the most selective index given (study, patient, actor, action) or else
// every position, from the cursor on, and filters records in memory. Since
// starts the walk at the first record timed at or after Since-AuditClockSkew
// (binary search over positions); a record timed at or after
// Until+AuditClockSkew ends it.
func QueryAudit(ctx context.Context, s AuditScanner, f AuditFilter) (*AuditPage, error) {
	limit, err := auditLimit(f.Limit)
	if err != nil {
		return nil, err
	}
	after, err := DecodeAuditCursor(f.Cursor)
	if err != nil {
		return nil, err
	}
	head, err := s.AuditHead(ctx)
	if err != nil {
		return nil, err
	}
	if !f.Since.IsZero() {
		first, err := firstAtOrAfter(ctx, s, head, f.Since.Add(-AuditClockSkew))
		if err != nil {
			return nil, err
		}
		after = max(after, first-1)
	}
	term, indexed := f.driver()
	page := &AuditPage{Events: []*AuditEvent{}}
	batch := min(max(limit, 64), 1000)
	for examined := 0; examined < maxAuditExamined; {
		var seqs []int64
		if indexed {
			if seqs, err = s.AuditIndex(ctx, term, after, batch); err != nil {
				return nil, err
			}
		} else {
			for seq := after + 1; seq <= head && len(seqs) < batch; seq++ {
				seqs = append(seqs, seq)
			}
		}
		if len(seqs) == 0 {
			return page, nil
		}
		recs, err := s.AuditRecords(ctx, seqs)
		if err != nil {
			return nil, err
		}
		for i, rec := range recs {
			after = seqs[i]
			examined++
			if rec == nil {
				continue
			}
			if !f.Until.IsZero() && !rec.Time.Before(f.Until.Add(AuditClockSkew)) {
				return page, nil
			}
			if f.Match(rec) {
				page.Events = append(page.Events, rec)
				if len(page.Events) == limit {
					page.Next = EncodeAuditCursor(after)
					return page, nil
				}
			}
		}
	}
	page.Next = EncodeAuditCursor(after)
	return page, nil
}

// firstAtOrAfter returns the first position in 1..head whose record is timed
// at or after t (head+1 when none is), assuming times ascend with positions
// up to AuditClockSkew. Missing records count as earlier.
func firstAtOrAfter(ctx context.Context, s AuditScanner, head int64, t time.Time) (int64, error) {
	lo, hi := int64(1), head+1
	for lo < hi {
		mid := lo + (hi-lo)/2
		recs, err := s.AuditRecords(ctx, []int64{mid})
		if err != nil {
			return 0, err
		}
		if len(recs) == 1 && recs[0] != nil && !recs[0].Time.Before(t) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo, nil
}

// AuditVerifier checks a chain that a backend feeds to it record by record in
// position order, then against the stored chain head. The first fault found
// is the one reported; later records are only counted.
//
// With sealed segments the chain comes in two parts: AuditArchive first
// feeds the segments' records (after Archived), then the backend calls Live
// with the position and hash its live log starts after, and feeds its live
// records. A live record that a segment also holds (sealed, not yet
// trimmed) must be the same record: it is counted in InBoth, not twice.
type AuditVerifier struct {
	keys   *AuditKeys
	next   int64 // position expected next
	prev   string
	result VerifyResult

	archived   bool             // segments come first: the live log must continue them
	liveBase   int64            // positions from here on are remembered while segments are read
	sealed     map[int64]string // hash by position, from liveBase on, of segment records
	lastSealed int64            // last position read from a segment, once Live is called
	live       bool
}

// NewAuditVerifier returns a verifier expecting position 1 first. With keys
// (not nil), every record after the key set's unkeyed-records must carry
// an HMAC under one of its keys: a record rewritten by someone without the
// key, even with every plain hash recomputed, does not verify. Without
// keys, keyed records cannot be checked and are reported as such.
func NewAuditVerifier(keys *AuditKeys) *AuditVerifier {
	return &AuditVerifier{keys: keys, next: 1, result: VerifyResult{OK: true}}
}

// Archived tells v that sealed segments are fed first and that the live log
// starts after liveBase: segment records from liveBase on are remembered so
// that their live copies can be compared.
func (v *AuditVerifier) Archived(liveBase int64) {
	v.archived, v.liveBase, v.sealed = true, liveBase, map[int64]string{}
}

// StartAt makes v expect position seq+1 next, chained to hash: the first
// record of a segment, or of a live log whose older records were sealed.
func (v *AuditVerifier) StartAt(seq int64, hash string) { v.next, v.prev = seq+1, hash }

// Next returns the position v expects next and the hash it must chain to.
func (v *AuditVerifier) Next() (int64, string) { return v.next, v.prev }

// Result is the result so far (Finish adds the head's checks).
func (v *AuditVerifier) Result() VerifyResult { return v.result }

// Failf marks the chain broken at seq unless an earlier fault was found.
func (v *AuditVerifier) Failf(seq int64, format string, args ...any) {
	if v.result.OK {
		v.fail(seq, format, args...)
	}
}

func (v *AuditVerifier) fail(seq int64, format string, args ...any) {
	v.result.OK = false
	v.result.FirstBroken = AuditRecordID(seq)
	v.result.Reason = fmt.Sprintf(format, args...)
}

// Live tells v that the live log's records follow, starting after base,
// whose hash is baseHash ("" for base 0). Without Archived, v trusts base:
// it checks the live log alone. After Archived, the live log must continue
// the segments read: no position may lie in neither.
func (v *AuditVerifier) Live(base int64, baseHash string) {
	v.live = true
	if !v.archived {
		v.StartAt(base, baseHash)
		return
	}
	v.lastSealed = v.next - 1
	if v.result.OK {
		want, known := "", base == 0
		switch {
		case base == v.lastSealed:
			want, known = v.prev, true
		case base < v.lastSealed && base > 0:
			want, known = v.sealed[base]
		}
		switch {
		case base > v.lastSealed:
			v.fail(v.lastSealed+1, "records %s to %s are in no sealed segment and no longer in the live log: a segment was removed", AuditRecordID(v.lastSealed+1), AuditRecordID(base))
		case !known || want != baseHash:
			v.fail(base+1, "the live log does not continue the sealed segments: the hash it starts from differs from record %s's", AuditRecordID(base))
		}
	}
	v.StartAt(base, baseHash)
}

// Add checks raw, the record stored at position pos. Positions must ascend.
func (v *AuditVerifier) Add(pos int64, raw []byte) { v.add(pos, raw) }

// add is Add returning the decoded record when it fits the chain (nil once
// the chain is broken).
func (v *AuditVerifier) add(pos int64, raw []byte) *AuditEvent {
	inBoth := v.live && pos <= v.lastSealed && v.archived
	if inBoth {
		v.result.InBoth++
	} else {
		v.result.Records++
	}
	if !v.result.OK {
		return nil
	}
	if pos != v.next {
		v.fail(v.next, "record %s is missing (the next stored record is %s)", AuditRecordID(v.next), AuditRecordID(pos))
		return nil
	}
	ev, err := DecodeAuditEvent(raw)
	if err != nil {
		v.fail(pos, "record is not valid JSON: %v", err)
		return nil
	}
	switch {
	case ev.Seq != pos || ev.ID != AuditRecordID(pos):
		v.fail(pos, "position %d holds record seq %d id %q: records were reordered or moved", pos, ev.Seq, ev.ID)
		return nil
	case ev.PrevHash != v.prev:
		v.fail(pos, "prev_hash does not match the hash of the record before it: a record was changed, removed or reordered")
		return nil
	}
	switch {
	case v.keys != nil && ev.KeyID == "" && pos > v.keys.unkeyed:
		v.fail(pos, "record is not keyed although an audit key is configured: it was written or rewritten without the key (if it predates the key, set unkeyed-records in the audit key file)")
		return nil
	case v.keys == nil && ev.KeyID != "":
		v.fail(pos, "record is keyed with %q: verification needs the audit key file (--audit-key-file)", ev.KeyID)
		return nil
	}
	h, err := v.keys.auditSum(ev)
	if err != nil {
		v.fail(pos, "hash cannot be computed: %v", err)
		return nil
	}
	if h != ev.Hash {
		v.fail(pos, "hash does not match the record's content: the record was changed")
		return nil
	}
	if inBoth && v.sealed[pos] != ev.Hash {
		v.fail(pos, "the live record differs from its sealed copy")
		return nil
	}
	if v.archived && !v.live && pos >= v.liveBase {
		v.sealed[pos] = ev.Hash
	}
	v.prev = ev.Hash
	v.next++
	return ev
}

// Finish compares the chain read so far with the stored head (the position
// and hash of the last record appended) and returns the result.
func (v *AuditVerifier) Finish(headSeq int64, headHash string) VerifyResult {
	last := v.next - 1
	switch {
	case !v.result.OK:
	case v.archived && headSeq < v.lastSealed:
		v.fail(headSeq+1, "sealed segments hold records up to %s, beyond the live log's head (%d records)", AuditRecordID(v.lastSealed), headSeq)
	case last < headSeq:
		v.fail(v.next, "record %s is missing: the chain head says %d records, %d were found", AuditRecordID(v.next), headSeq, last)
	case last > headSeq:
		v.fail(headSeq+1, "%d records lie beyond the chain head (%d records)", last-headSeq, headSeq)
	case v.prev != headHash:
		v.fail(last, "hash differs from the chain head: the last record was replaced")
	}
	return v.result
}

// auditDetached writes ev to a with a deadline of its own, whatever becomes
// of ctx: the record of something done must not be lost because the
// request that did it was cancelled or timed out meanwhile.
func auditDetached(ctx context.Context, a Auditor, ev *AuditEvent) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return a.Record(ctx, ev)
}

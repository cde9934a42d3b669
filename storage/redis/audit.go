package redis

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/internal/groupcommit"
)

// Keys of the audit log, all with the hash tag {audit} so that the append
// script's keys share one Redis Cluster slot:
//
//	{audit}:head               hash: seq, hash of the last record; base_seq,
//	                           base_hash of the last record trimmed (sealed
//	                           into a segment by gateway.AuditArchive)
//	{audit}:rec                hash: seq → the record's JSON
//	{audit}:ix:<field>:<hash>  sorted set of seqs (score = seq) per index term;
//	                           the term's value is hashed, so patient IDs never
//	                           appear in key names (MONITOR, SLOWLOG, SCAN)
const (
	auditHeadKey = "{audit}:head"
	auditRecKey  = "{audit}:rec"
	auditIxKey   = "{audit}:ix:"
	// auditMaxBatch bounds the records one append script writes.
	auditMaxBatch = 256
	// auditFlushTimeout bounds one group commit, whichever caller runs it.
	auditFlushTimeout = 10 * time.Second
)

// auditAppendScript appends records after the chain head if, and only if, the head
// still is the one they were chained to; otherwise it returns the current
// head so that the caller re-chains and retries. Reading the head and
// appending in one script keeps the chain linear across replicas.
//
// KEYS: head, rec, index keys… ARGV: expected seq, expected hash, new seq,
// new hash, then per record: seq, JSON, n, n indices into KEYS.
var auditAppendScript = goredis.NewScript(`
local head = redis.call('HMGET', KEYS[1], 'seq', 'hash')
local seq = head[1] or '0'
local hash = head[2] or ''
if seq ~= ARGV[1] or hash ~= ARGV[2] then
  return {0, seq, hash}
end
local i = 5
while i <= #ARGV do
  local s = ARGV[i]
  redis.call('HSET', KEYS[2], s, ARGV[i+1])
  local n = tonumber(ARGV[i+2])
  for j = 1, n do
    redis.call('ZADD', KEYS[tonumber(ARGV[i+2+j])], s, s)
  end
  i = i + 3 + n
end
redis.call('HSET', KEYS[1], 'seq', ARGV[3], 'hash', ARGV[4])
return {1, ARGV[3], ARGV[4]}
`)

// AuditLog is the gateway.AuditLog on Redis, shared by every replica using
// the same key prefix. Concurrent Records in one process are group-committed
// (groupcommit.Committer): one append script per batch, not per event.
type AuditLog struct {
	c         *Client
	gateway   string
	now       func() time.Time
	committer groupcommit.Committer[*gateway.AuditEvent]
	keys      *gateway.AuditKeys // nil: plain SHA-256 chain (SetKeys)

	// The cached chain head, used only inside Commit (one caller at a time).
	headKnown bool
	headSeq   int64
	headHash  string
}

var _ gateway.AuditLog = (*AuditLog)(nil)
var _ gateway.AuditScanner = (*AuditLog)(nil)
var _ gateway.AuditArchiveBackend = (*AuditLog)(nil)

// NewAuditLog returns the audit log under c's key prefix; gatewayName goes
// into every record.
func NewAuditLog(c *Client, gatewayName string) *AuditLog {
	l := &AuditLog{c: c, gateway: gatewayName, now: time.Now}
	l.committer = groupcommit.Committer[*gateway.AuditEvent]{Commit: l.commit, MaxBatch: auditMaxBatch, Timeout: auditFlushTimeout}
	return l
}

func (l *AuditLog) indexKey(t gateway.AuditTerm) string {
	sum := sha256.Sum256([]byte(t.Value))
	return l.c.Key(auditIxKey + t.Field + ":" + hex.EncodeToString(sum[:16]))
}

// Record appends ev to the chain; see gateway.AuditLog.
func (l *AuditLog) Record(ctx context.Context, ev *gateway.AuditEvent) error {
	if err := gateway.PrepareAuditEvent(ev, l.gateway, l.now()); err != nil {
		return err
	}
	return l.committer.Record(ctx, ev)
}

// commit appends batch after the chain head, re-chaining and retrying when
// another replica appended first.
func (l *AuditLog) commit(ctx context.Context, batch []*gateway.AuditEvent) []error {
	errs := make([]error, len(batch))
	failAll := func(err error) []error {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return errs
	}
	for attempt := 0; ; attempt++ {
		if !l.headKnown {
			seq, hash, err := l.readHead(ctx)
			if err != nil {
				return failAll(err)
			}
			l.headSeq, l.headHash, l.headKnown = seq, hash, true
		}
		keys := []string{l.c.Key(auditHeadKey), l.c.Key(auditRecKey)}
		keyIndex := map[string]int{}
		args := []any{strconv.FormatInt(l.headSeq, 10), l.headHash, "", ""}
		seq, prev := l.headSeq, l.headHash
		for i, ev := range batch {
			if errs[i] != nil {
				continue
			}
			raw, err := gateway.SealAuditEvent(ev, seq+1, prev, l.keys)
			if err != nil {
				errs[i] = err
				continue
			}
			seq, prev = seq+1, ev.Hash
			terms := gateway.AuditTerms(ev)
			args = append(args, strconv.FormatInt(seq, 10), raw, len(terms))
			for _, t := range terms {
				k := l.indexKey(t)
				ki, ok := keyIndex[k]
				if !ok {
					keys = append(keys, k)
					ki = len(keys) // Lua indices start at 1
					keyIndex[k] = ki
				}
				args = append(args, ki)
			}
		}
		if seq == l.headSeq {
			return errs // nothing left to write
		}
		args[2], args[3] = strconv.FormatInt(seq, 10), prev
		res, err := auditAppendScript.Run(ctx, l.c.rdb, keys, args...).Slice()
		if err != nil {
			l.headKnown = false
			return failAll(translate(err))
		}
		gotSeq, gotHash, ok := auditParseReply(res)
		if ok || (gotSeq == seq && gotHash == prev) {
			// Appended; the second case is our own append seen again
			// after go-redis retried the script on a network error.
			l.headSeq, l.headHash = seq, prev
			return errs
		}
		l.headSeq, l.headHash = gotSeq, gotHash // another replica appended: re-chain
		if attempt >= 1000 || ctx.Err() != nil {
			return failAll(fmt.Errorf("audit append lost the race %d times: %w", attempt+1, gateway.ErrUnavailable))
		}
	}
}

func auditParseReply(res []any) (seq int64, hash string, ok bool) {
	if len(res) != 3 {
		return -1, "", false
	}
	flag, _ := res[0].(int64)
	s, _ := res[1].(string)
	hash, _ = res[2].(string)
	seq, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		seq = -1
	}
	return seq, hash, flag == 1
}

func (l *AuditLog) readHead(ctx context.Context) (int64, string, error) {
	vals, err := l.c.rdb.HMGet(ctx, l.c.Key(auditHeadKey), "seq", "hash").Result()
	if err != nil {
		return 0, "", translate(err)
	}
	return auditHeadFrom(vals)
}

func auditHeadFrom(vals []any) (int64, string, error) {
	s, _ := vals[0].(string)
	hash, _ := vals[1].(string)
	if s == "" {
		return 0, hash, nil
	}
	seq, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, "", fmt.Errorf("audit head seq %q: %w", s, gateway.ErrUnavailable)
	}
	return seq, hash, nil
}

// Query returns one page of matching records; see gateway.AuditLog.
func (l *AuditLog) Query(ctx context.Context, f gateway.AuditFilter) (*gateway.AuditPage, error) {
	return gateway.QueryAudit(ctx, l, f)
}

// AuditHead implements gateway.AuditScanner.
func (l *AuditLog) AuditHead(ctx context.Context) (int64, error) {
	seq, _, err := l.readHead(ctx)
	return seq, err
}

// AuditIndex implements gateway.AuditScanner.
func (l *AuditLog) AuditIndex(ctx context.Context, t gateway.AuditTerm, after int64, n int) ([]int64, error) {
	members, err := l.c.rdb.ZRangeArgs(ctx, goredis.ZRangeArgs{
		Key: l.indexKey(t), Start: "(" + strconv.FormatInt(after, 10), Stop: "+inf",
		ByScore: true, Count: int64(n),
	}).Result()
	if err != nil {
		return nil, translate(err)
	}
	seqs := make([]int64, 0, len(members))
	for _, m := range members {
		if seq, err := strconv.ParseInt(m, 10, 64); err == nil {
			seqs = append(seqs, seq)
		}
	}
	return seqs, nil
}

// AuditRecords implements gateway.AuditScanner.
func (l *AuditLog) AuditRecords(ctx context.Context, seqs []int64) ([]*gateway.AuditEvent, error) {
	raws, err := l.raw(ctx, seqs)
	if err != nil {
		return nil, err
	}
	out := make([]*gateway.AuditEvent, len(seqs))
	for i, raw := range raws {
		if raw != nil {
			out[i], _ = gateway.DecodeAuditEvent(raw) // an unreadable record is Verify's to report
		}
	}
	return out, nil
}

// raw returns the stored JSON at seqs, nil where none is.
func (l *AuditLog) raw(ctx context.Context, seqs []int64) ([][]byte, error) {
	fields := make([]string, len(seqs))
	for i, s := range seqs {
		fields[i] = strconv.FormatInt(s, 10)
	}
	vals, err := l.c.rdb.HMGet(ctx, l.c.Key(auditRecKey), fields...).Result()
	if err != nil {
		return nil, translate(err)
	}
	out := make([][]byte, len(vals))
	for i, v := range vals {
		if s, ok := v.(string); ok {
			out[i] = []byte(s)
		}
	}
	return out, nil
}

// Verify checks the live chain from its base; see gateway.AuditLog
// (gateway.AuditArchive checks the sealed part).
func (l *AuditLog) Verify(ctx context.Context) (gateway.VerifyResult, error) {
	return l.VerifyLive(ctx, gateway.NewAuditVerifier(l.keys))
}

// VerifyLive implements gateway.AuditArchiveBackend. It reads the head, the
// base and the number of stored records in one transaction, then the
// records between base and head in batches, so that appends running
// meanwhile do not disturb it.
func (l *AuditLog) VerifyLive(ctx context.Context, v *gateway.AuditVerifier) (gateway.VerifyResult, error) {
	var headCmd *goredis.SliceCmd
	var lenCmd *goredis.IntCmd
	_, err := l.c.rdb.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		headCmd = p.HMGet(ctx, l.c.Key(auditHeadKey), "seq", "hash", "base_seq", "base_hash")
		lenCmd = p.HLen(ctx, l.c.Key(auditRecKey))
		return nil
	})
	if err != nil {
		return gateway.VerifyResult{}, translate(err)
	}
	headSeq, headHash, err := auditHeadFrom(headCmd.Val()[:2])
	if err != nil {
		return gateway.VerifyResult{}, err
	}
	base, baseHash, err := auditHeadFrom(headCmd.Val()[2:])
	if err != nil {
		return gateway.VerifyResult{}, err
	}
	v.Live(base, baseHash)
	var present int64
	err = l.AuditRaw(ctx, base+1, headSeq, func(seq int64, raw []byte) error {
		present++
		v.Add(seq, raw)
		return nil
	})
	if err != nil {
		return gateway.VerifyResult{}, err
	}
	res := v.Finish(headSeq, headHash)
	if extra := lenCmd.Val() - present; res.OK && extra > 0 {
		res.Records += extra
		res.OK = false
		res.FirstBroken = gateway.AuditRecordID(headSeq + 1)
		res.Reason = fmt.Sprintf("%d records lie outside the live chain (base %d, head %d)", extra, base, headSeq)
	}
	return res, nil
}

// AuditBase implements gateway.AuditArchiveBackend.
func (l *AuditLog) AuditBase(ctx context.Context) (int64, string, error) {
	vals, err := l.c.rdb.HMGet(ctx, l.c.Key(auditHeadKey), "base_seq", "base_hash").Result()
	if err != nil {
		return 0, "", translate(err)
	}
	return auditHeadFrom(vals)
}

// auditRawBatch is how many records one HMGET of AuditRaw reads.
const auditRawBatch = 1000

// AuditRaw implements gateway.AuditArchiveBackend.
func (l *AuditLog) AuditRaw(ctx context.Context, from, to int64, fn func(seq int64, raw []byte) error) error {
	for ; from <= to; from += auditRawBatch {
		seqs := make([]int64, 0, auditRawBatch)
		for s := from; s < from+auditRawBatch && s <= to; s++ {
			seqs = append(seqs, s)
		}
		raws, err := l.raw(ctx, seqs)
		if err != nil {
			return err
		}
		for i, raw := range raws {
			if raw == nil {
				continue
			}
			if err := fn(seqs[i], raw); err != nil {
				return err
			}
		}
	}
	return nil
}

// auditTrimScript removes records and their index entries up to a new base,
// if the base is still the one the caller read (another replica trimming
// the same records makes it a no-op).
//
// KEYS: head, rec, index keys… ARGV: expected base, new base seq, new base
// hash, then the record fields to delete.
var auditTrimScript = goredis.NewScript(`
local base = redis.call('HGET', KEYS[1], 'base_seq') or '0'
if base ~= ARGV[1] then
  return 0
end
for i = 4, #ARGV do
  redis.call('HDEL', KEYS[2], ARGV[i])
end
for i = 3, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[2])
end
redis.call('HSET', KEYS[1], 'base_seq', ARGV[2], 'base_hash', ARGV[3])
return 1
`)

// AuditTrim implements gateway.AuditArchiveBackend: one script per
// thousand records, each removing them with their index entries and
// moving the base past them.
func (l *AuditLog) AuditTrim(ctx context.Context, through int64, hash string) error {
	for {
		base, _, err := l.AuditBase(ctx)
		if err != nil {
			return err
		}
		if base >= through {
			return nil
		}
		last, err := l.raw(ctx, []int64{through})
		if err != nil {
			return err
		}
		if ev, err := gateway.DecodeAuditEvent(last[0]); last[0] == nil || err != nil || ev.Hash != hash {
			return fmt.Errorf("audit trim: record %d is not the sealed record it should be: %w", through, gateway.ErrConflict)
		}
		end := min(through, base+auditRawBatch)
		keys := []string{l.c.Key(auditHeadKey), l.c.Key(auditRecKey)}
		seen := map[string]bool{}
		args := []any{strconv.FormatInt(base, 10), strconv.FormatInt(end, 10), ""}
		next := base + 1
		err = l.AuditRaw(ctx, base+1, end, func(seq int64, raw []byte) error {
			if seq != next {
				return fmt.Errorf("audit trim: record %d to trim is missing: %w", next, gateway.ErrConflict)
			}
			next++
			ev, err := gateway.DecodeAuditEvent(raw)
			if err != nil {
				return fmt.Errorf("audit trim: record %d: %v: %w", seq, err, gateway.ErrConflict)
			}
			for _, t := range gateway.AuditTerms(ev) {
				if k := l.indexKey(t); !seen[k] {
					seen[k] = true
					keys = append(keys, k)
				}
			}
			args[2] = ev.Hash
			args = append(args, strconv.FormatInt(seq, 10))
			return nil
		})
		if err != nil {
			return err
		}
		if next != end+1 {
			return fmt.Errorf("audit trim: record %d to trim is missing: %w", next, gateway.ErrConflict)
		}
		if err := auditTrimScript.Run(ctx, l.c.rdb, keys, args...).Err(); err != nil {
			return translate(err)
		}
	}
}

// SetKeys makes the log sign new records with keys' current key (HMAC) and
// verify with the whole set; see gateway.AuditKeys. Call it before the
// log's first use.
func (l *AuditLog) SetKeys(keys *gateway.AuditKeys) { l.keys = keys }

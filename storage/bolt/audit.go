package bolt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/dicom-gateway/gateway/gateway"
)

// The audit log lives in one top-level bucket:
//
//	audit/head           8-byte big-endian seq of the last record + its hash
//	audit/base           the same for the last record trimmed (sealed into a
//	                     segment by gateway.AuditArchive); absent before any
//	audit/records/<seq>  the record's JSON, keyed by 8-byte big-endian seq
//	audit/index/<term><seq>  empty; term = SHA-256(field NUL value)[:16]
var (
	auditBucket   = []byte("audit")
	auditHead     = []byte("head")
	auditBase     = []byte("base")
	auditRecords  = []byte("records")
	auditIndex    = []byte("index")
	auditTermSize = 16
)

// AuditLog is the gateway.AuditLog of the embedded store. Concurrent Records
// are group-committed (groupcommit.Committer): one bbolt transaction, and so
// one fsync, per batch, reading the chain head inside it, so the chain stays
// linear even with several AuditLogs on one DB. (bbolt's own DB.Batch would
// also coalesce, but waits up to 10 ms for company even when alone.)
type AuditLog struct {
	db      *bbolt.DB
	gateway string
	now     func() time.Time
	writes  *txCommitter       // the DB's, shared with the index
	keys    *gateway.AuditKeys // nil: plain SHA-256 chain (SetKeys)
}

var _ gateway.AuditLog = (*AuditLog)(nil)
var _ gateway.AuditScanner = (*AuditLog)(nil)
var _ gateway.AuditArchiveBackend = (*AuditLog)(nil)

// NewAuditLog opens the audit log in db, creating its bucket if needed.
// gatewayName goes into every record.
func NewAuditLog(db *DB, gatewayName string) (*AuditLog, error) {
	err := db.bolt.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(auditBucket)
		if err != nil {
			return err
		}
		if _, err := b.CreateBucketIfNotExists(auditRecords); err != nil {
			return err
		}
		_, err = b.CreateBucketIfNotExists(auditIndex)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	return &AuditLog{db: db.bolt, writes: db.writes, gateway: gatewayName, now: time.Now}, nil
}

func auditSeqKey(seq int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(seq)) }

func auditTermPrefix(t gateway.AuditTerm) []byte {
	sum := sha256.Sum256([]byte(t.Field + "\x00" + t.Value))
	return sum[:auditTermSize]
}

// auditReadHead returns the chain head: the last seq and its hash.
func auditReadHead(b *bbolt.Bucket) (int64, string) { return auditReadPoint(b, auditHead) }

// auditReadPoint returns the seq and hash stored under key (head or base).
func auditReadPoint(b *bbolt.Bucket, key []byte) (int64, string) {
	v := b.Get(key)
	if len(v) < 8 {
		return 0, ""
	}
	return int64(binary.BigEndian.Uint64(v[:8])), string(v[8:])
}

// Record appends ev to the chain; see gateway.AuditLog. The append runs
// in the DB's shared group commit, so concurrent events, and index writes
// made at the same time, share a transaction; events are sealed in the
// order they run inside it, each on the head the previous one left.
func (l *AuditLog) Record(ctx context.Context, ev *gateway.AuditEvent) error {
	if err := gateway.PrepareAuditEvent(ev, l.gateway, l.now()); err != nil {
		return err
	}
	err := l.writes.Record(ctx, func(tx *bbolt.Tx) error { return l.appendEvent(tx, ev) })
	if err != nil && !errors.Is(err, errSeal) {
		return fmt.Errorf("audit log: %v: %w", err, gateway.ErrUnavailable)
	}
	return err
}

// errSeal marks an event that could not be sealed: it fails alone.
var errSeal = errors.New("audit event not sealed")

// appendEvent seals ev on the chain's head in tx and stores it with its
// index terms. It reads the head inside tx, so running it again from the
// same state (commitTogether's retry of a failed batch) gives the same
// result.
func (l *AuditLog) appendEvent(tx *bbolt.Tx, ev *gateway.AuditEvent) error {
	b := tx.Bucket(auditBucket)
	recs, ix := b.Bucket(auditRecords), b.Bucket(auditIndex)
	seq, prev := auditReadHead(b)
	raw, err := gateway.SealAuditEvent(ev, seq+1, prev, l.keys)
	if err != nil {
		return fmt.Errorf("%w: %w", errSeal, err)
	}
	seq, prev = seq+1, ev.Hash
	if err := recs.Put(auditSeqKey(seq), raw); err != nil {
		return err
	}
	for _, t := range gateway.AuditTerms(ev) {
		if err := ix.Put(append(auditTermPrefix(t), auditSeqKey(seq)...), nil); err != nil {
			return err
		}
	}
	return b.Put(auditHead, append(auditSeqKey(seq), prev...))
}

// Query returns one page of matching records; see gateway.AuditLog.
func (l *AuditLog) Query(ctx context.Context, f gateway.AuditFilter) (*gateway.AuditPage, error) {
	return gateway.QueryAudit(ctx, l, f)
}

// AuditHead implements gateway.AuditScanner.
func (l *AuditLog) AuditHead(ctx context.Context) (int64, error) {
	var seq int64
	err := l.view(func(b *bbolt.Bucket) error {
		seq, _ = auditReadHead(b)
		return nil
	})
	return seq, err
}

// AuditIndex implements gateway.AuditScanner.
func (l *AuditLog) AuditIndex(ctx context.Context, t gateway.AuditTerm, after int64, n int) ([]int64, error) {
	var seqs []int64
	prefix := auditTermPrefix(t)
	err := l.view(func(b *bbolt.Bucket) error {
		c := b.Bucket(auditIndex).Cursor()
		for k, _ := c.Seek(append(prefix, auditSeqKey(after+1)...)); k != nil && bytes.HasPrefix(k, prefix) && len(seqs) < n; k, _ = c.Next() {
			seqs = append(seqs, int64(binary.BigEndian.Uint64(k[auditTermSize:])))
		}
		return nil
	})
	return seqs, err
}

// AuditRecords implements gateway.AuditScanner.
func (l *AuditLog) AuditRecords(ctx context.Context, seqs []int64) ([]*gateway.AuditEvent, error) {
	out := make([]*gateway.AuditEvent, len(seqs))
	err := l.view(func(b *bbolt.Bucket) error {
		recs := b.Bucket(auditRecords)
		for i, seq := range seqs {
			if raw := recs.Get(auditSeqKey(seq)); raw != nil {
				out[i], _ = gateway.DecodeAuditEvent(raw) // an unreadable record is Verify's to report
			}
		}
		return nil
	})
	return out, err
}

// Verify checks the live chain in one read transaction, from its base;
// see gateway.AuditLog (gateway.AuditArchive checks the sealed part).
func (l *AuditLog) Verify(ctx context.Context) (gateway.VerifyResult, error) {
	return l.VerifyLive(ctx, gateway.NewAuditVerifier(l.keys))
}

// VerifyLive implements gateway.AuditArchiveBackend in one read
// transaction.
func (l *AuditLog) VerifyLive(ctx context.Context, v *gateway.AuditVerifier) (gateway.VerifyResult, error) {
	var res gateway.VerifyResult
	err := l.view(func(b *bbolt.Bucket) error {
		v.Live(auditReadPoint(b, auditBase))
		c := b.Bucket(auditRecords).Cursor()
		for k, raw := c.First(); k != nil; k, raw = c.Next() {
			if len(k) != 8 {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			v.Add(int64(binary.BigEndian.Uint64(k)), raw)
		}
		res = v.Finish(auditReadHead(b))
		return nil
	})
	return res, err
}

// AuditBase implements gateway.AuditArchiveBackend.
func (l *AuditLog) AuditBase(ctx context.Context) (int64, string, error) {
	var seq int64
	var hash string
	err := l.view(func(b *bbolt.Bucket) error {
		seq, hash = auditReadPoint(b, auditBase)
		return nil
	})
	return seq, hash, err
}

// auditRawBatch is how many records AuditRaw reads per read transaction,
// so that a long read does not hold one transaction (and its pages) open.
const auditRawBatch = 1000

// AuditRaw implements gateway.AuditArchiveBackend.
func (l *AuditLog) AuditRaw(ctx context.Context, from, to int64, fn func(seq int64, raw []byte) error) error {
	type rec struct {
		seq int64
		raw []byte
	}
	for from <= to {
		var batch []rec
		err := l.view(func(b *bbolt.Bucket) error {
			c := b.Bucket(auditRecords).Cursor()
			for k, raw := c.Seek(auditSeqKey(from)); k != nil && len(batch) < auditRawBatch; k, raw = c.Next() {
				seq := int64(binary.BigEndian.Uint64(k))
				if len(k) != 8 || seq > to {
					break
				}
				batch = append(batch, rec{seq, bytes.Clone(raw)})
			}
			return nil
		})
		if err != nil {
			return err
		}
		if len(batch) == 0 {
			return nil
		}
		for _, r := range batch {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := fn(r.seq, r.raw); err != nil {
				return err
			}
		}
		from = batch[len(batch)-1].seq + 1
	}
	return nil
}

// AuditTrim implements gateway.AuditArchiveBackend: one transaction per
// thousand records, each removing them with their index entries and
// moving the base past them.
func (l *AuditLog) AuditTrim(ctx context.Context, through int64, hash string) error {
	for {
		done := false
		err := l.db.Update(func(tx *bbolt.Tx) error {
			b := tx.Bucket(auditBucket)
			recs, ix := b.Bucket(auditRecords), b.Bucket(auditIndex)
			base, _ := auditReadPoint(b, auditBase)
			if base >= through {
				done = true
				return nil
			}
			last, err := gateway.DecodeAuditEvent(recs.Get(auditSeqKey(through)))
			if err != nil || last.Hash != hash {
				return fmt.Errorf("record %d is not the sealed record it should be: %w", through, gateway.ErrConflict)
			}
			end := min(through, base+auditRawBatch)
			endHash := ""
			for seq := base + 1; seq <= end; seq++ {
				raw := recs.Get(auditSeqKey(seq))
				if raw == nil {
					return fmt.Errorf("record %d to trim is missing: %w", seq, gateway.ErrConflict)
				}
				ev, err := gateway.DecodeAuditEvent(raw)
				if err != nil {
					return fmt.Errorf("record %d to trim: %v: %w", seq, err, gateway.ErrConflict)
				}
				for _, t := range gateway.AuditTerms(ev) {
					if err := ix.Delete(append(auditTermPrefix(t), auditSeqKey(seq)...)); err != nil {
						return err
					}
				}
				if err := recs.Delete(auditSeqKey(seq)); err != nil {
					return err
				}
				endHash = ev.Hash
			}
			done = end == through
			return b.Put(auditBase, append(auditSeqKey(end), endHash...))
		})
		if err != nil {
			if errors.Is(err, gateway.ErrConflict) {
				return fmt.Errorf("audit trim: %w", err)
			}
			return fmt.Errorf("audit trim: %v: %w", err, gateway.ErrUnavailable)
		}
		if done {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

func (l *AuditLog) view(fn func(b *bbolt.Bucket) error) error {
	err := l.db.View(func(tx *bbolt.Tx) error { return fn(tx.Bucket(auditBucket)) })
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("audit log: %v: %w", err, gateway.ErrUnavailable)
	}
	return err
}

// SetKeys makes the log sign new records with keys' current key (HMAC) and
// verify with the whole set; see gateway.AuditKeys. Call it before the
// log's first use.
func (l *AuditLog) SetKeys(keys *gateway.AuditKeys) { l.keys = keys }

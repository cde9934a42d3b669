package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// ActionAuditArchived records a sealing run that moved records into
// segments (detail: the segments written and the records trimmed).
const ActionAuditArchived = "audit.archived"

// AuditArchiveBackend is what a live audit log (storage/bolt, storage/redis)
// offers AuditArchive besides the AuditLog itself: its records as stored,
// the point up to which they were trimmed, and trimming.
type AuditArchiveBackend interface {
	AuditLog
	AuditScanner
	// AuditBase returns the position and hash of the last record trimmed
	// from the live log (0, "" before any trim): the live records start at
	// base+1 and chain to that hash.
	AuditBase(ctx context.Context) (seq int64, hash string, err error)
	// AuditRaw calls fn with the stored bytes of each live record from
	// position from to to, ascending, skipping positions that hold none.
	// An error from fn stops it and is returned.
	AuditRaw(ctx context.Context, from, to int64, fn func(seq int64, raw []byte) error) error
	// AuditTrim removes the records after the base up to through, with
	// their index entries, and makes through (whose record must have the
	// given hash) the base; it may do so in several steps, each leaving a
	// consistent log. Trimming to a base already reached does nothing.
	AuditTrim(ctx context.Context, through int64, hash string) error
	// VerifyLive feeds v the live log as one consistent view: v.Live with
	// the base, every live record, then returns v.Finish with the head.
	VerifyLive(ctx context.Context, v *AuditVerifier) (VerifyResult, error)
}

// AuditArchive is the audit log as a whole: sealed segments in the blob
// store followed by the live log of a backend. Seal moves records older
// than Age into segments and then trims them from the live log; Query and
// Verify span both. Record goes to the live log. Safe for concurrent use;
// several replicas may seal at once (segment boundaries depend only on the
// records, so they write the same segments).
type AuditArchive struct {
	Live  AuditArchiveBackend
	Blobs BlobStore
	// Keys sign seals (and verify records and seals); nil: plain SHA-256.
	Keys *AuditKeys
	// Age is how old a record must be to be sealed; 0 turns sealing off
	// (Query and Verify still span existing segments).
	Age time.Duration
	// SegmentRecords bounds a segment (0: DefaultAuditSegmentRecords). A
	// segment also ends with the UTC day of its first record.
	SegmentRecords int
	// RetentionMode and RetentionDays lock each segment written (S3 Object
	// Lock); RetentionDays 0 writes without a lock. With a lock asked for,
	// a store that cannot lock makes Seal fail rather than write unlocked.
	RetentionMode string
	RetentionDays int
	// Gateway names this centre in seals.
	Gateway string
	Now     func() time.Time
	Logger  *slog.Logger

	sealMu sync.Mutex // one sealing run at a time in this process
	cache  sealCache

	sealed       atomic.Int64 // records sealed by this process
	sealFailures atomic.Int64 // sealing runs that failed
}

// SealedRecords is how many records this process sealed into segments.
func (a *AuditArchive) SealedRecords() int64 { return a.sealed.Load() }

// SealFailures is how many sealing runs of this process failed.
func (a *AuditArchive) SealFailures() int64 { return a.sealFailures.Load() }

var _ AuditLog = (*AuditArchive)(nil)

func (a *AuditArchive) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

func (a *AuditArchive) segmentRecords() int64 {
	if a.SegmentRecords > 0 {
		return int64(a.SegmentRecords)
	}
	return DefaultAuditSegmentRecords
}

// Record appends ev to the live log; see AuditLog.
func (a *AuditArchive) Record(ctx context.Context, ev *AuditEvent) error {
	return a.Live.Record(ctx, ev)
}

// segments lists the segment objects in position order. A key under the
// prefix that is not a segment's name is ignored.
func (a *AuditArchive) segments(ctx context.Context) ([]auditSegment, error) {
	var segs []auditSegment
	err := a.Blobs.Walk(ctx, AuditSegmentPrefix, func(info BlobInfo) error {
		if first, last, ok := parseAuditSegmentKey(info.Key); ok {
			segs = append(segs, auditSegment{key: info.Key, first: first, last: last, size: info.Size, modTime: info.ModTime})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list audit segments: %w", err)
	}
	return segs, nil
}

// verifySegment feeds segment s to v (which expects s's first record next)
// and checks its seal: the range its key names, the link to the previous
// segment object (prevSHA), the MAC and the summary. It returns the
// SHA-256 of the object; a fault goes into v, an unreadable store is the
// error.
func (a *AuditArchive) verifySegment(ctx context.Context, v *AuditVerifier, s auditSegment, prevSHA string) (string, error) {
	next, prevHash := v.Next()
	switch {
	case s.first > next:
		v.Failf(next, "records %s to %s are in no segment: a segment was removed", AuditRecordID(next), AuditRecordID(s.first-1))
	case s.first < next:
		v.Failf(s.first, "segment %s overlaps the segment before it", s.key)
	}
	v.StartAt(s.first-1, prevHash)
	sr, err := a.openSegment(ctx, s)
	var fe *segmentFormatError
	if errors.As(err, &fe) {
		v.Failf(s.first, "%s", fe.reason)
		v.StartAt(s.last, "")
		return "", nil
	}
	if err != nil {
		return "", err
	}
	defer sr.Close()
	seal := sr.seal
	switch {
	case seal.FirstSeq != s.first || seal.LastSeq != s.last || seal.Records != s.last-s.first+1:
		v.Failf(s.first, "segment %s: its seal states records %d to %d (%d): the segment was renamed or its seal changed", s.key, seal.FirstSeq, seal.LastSeq, seal.Records)
	case seal.PrevSegmentSHA256 != prevSHA:
		v.Failf(s.first, "segment %s does not follow the segment before it (prev_segment_sha256 differs): a segment was replaced or removed", s.key)
	case seal.PrevHash != prevHash:
		v.Failf(s.first, "segment %s does not continue the chain: its prev_hash differs from the previous record's hash", s.key)
	case a.Keys != nil && seal.KeyID == "" && seal.LastSeq > a.Keys.unkeyed:
		v.Failf(s.first, "segment %s: seal is not keyed although an audit key is configured", s.key)
	case a.Keys == nil && seal.KeyID != "":
		v.Failf(s.first, "segment %s: seal is keyed with %q: verification needs the audit key file (--audit-key-file)", s.key, seal.KeyID)
	}
	if mac, err := seal.mac(a.Keys); err != nil || mac != seal.MAC {
		v.Failf(s.first, "segment %s: seal MAC does not match: the seal was changed", s.key)
	}
	sum := newSegmentSummary()
	pos := s.first
	for {
		line, err := sr.next()
		if err != nil {
			if errors.Is(err, bufio.ErrTooLong) {
				v.Failf(pos, "segment %s: record line longer than %d bytes", s.key, maxAuditLine)
				break
			}
			return "", fmt.Errorf("audit segment %s: %w", s.key, err)
		}
		if line == nil {
			break
		}
		if ev := v.add(pos, line); ev != nil {
			sum.add(line, ev)
		}
		pos++
	}
	v.result.Segments++
	v.result.Sealed += pos - s.first
	switch {
	case pos-1 < s.last:
		v.Failf(pos, "segment %s ends at record %s, its name says %s: records were removed", s.key, AuditRecordID(pos-1), AuditRecordID(s.last))
	case pos-1 > s.last:
		v.Failf(s.last+1, "segment %s holds records beyond %s, the last its name says", s.key, AuditRecordID(s.last))
	case !sum.matches(seal):
		v.Failf(s.first, "segment %s: its seal does not match its records (count, times, terms or digest)", s.key)
	}
	// Whatever was found, the chain goes on from the seal's head.
	v.StartAt(s.last, seal.Head)
	objSHA, err := sr.sum()
	if err != nil {
		return "", fmt.Errorf("audit segment %s: %w", s.key, err)
	}
	return objSHA, nil
}

// Verify checks the sealed segments in order, each segment's records and
// seal, the link from the last segment into the live log and the live log;
// see AuditLog. A sealing run that trims while Verify reads is retried.
func (a *AuditArchive) Verify(ctx context.Context) (VerifyResult, error) {
	for attempt := 0; ; attempt++ {
		base, _, err := a.Live.AuditBase(ctx)
		if err != nil {
			return VerifyResult{}, err
		}
		segs, err := a.segments(ctx)
		if err != nil {
			return VerifyResult{}, err
		}
		v := NewAuditVerifier(a.Keys)
		v.Archived(base)
		prevSHA := ""
		for _, s := range segs {
			if err := ctx.Err(); err != nil {
				return VerifyResult{}, err
			}
			if prevSHA, err = a.verifySegment(ctx, v, s, prevSHA); err != nil {
				return VerifyResult{}, err
			}
		}
		res, err := a.Live.VerifyLive(ctx, v)
		if err != nil {
			return VerifyResult{}, err
		}
		if !res.OK && attempt < 2 {
			if now, _, err := a.Live.AuditBase(ctx); err == nil && now != base {
				continue // trimmed meanwhile: read again
			}
		}
		return res, nil
	}
}

// Query returns one page of the records matching f, from the segments and
// then the live log, in chain order; see AuditLog. Segments are streamed
// one at a time, and those whose seal rules the filter out (time range,
// terms) are not read.
func (a *AuditArchive) Query(ctx context.Context, f AuditFilter) (*AuditPage, error) {
	limit, err := auditLimit(f.Limit)
	if err != nil {
		return nil, err
	}
	after, err := DecodeAuditCursor(f.Cursor)
	if err != nil {
		return nil, err
	}
	segs, err := a.segments(ctx)
	if err != nil {
		return nil, err
	}
	page := &AuditPage{Events: []*AuditEvent{}}
	examined := 0
	for _, s := range segs {
		if s.last <= after {
			continue
		}
		seal, err := a.readSeal(ctx, s)
		var fe *segmentFormatError
		if errors.As(err, &fe) {
			return nil, fmt.Errorf("%s (run audit verify): %w", fe.reason, ErrUnavailable)
		}
		if err != nil {
			return nil, err
		}
		if !seal.mayMatch(f) {
			after = s.last
			continue
		}
		full, err := a.querySegment(ctx, s, f, limit, &after, &examined, page)
		if err != nil {
			return nil, err
		}
		if full || examined >= maxAuditExamined {
			page.Next = EncodeAuditCursor(after)
			return page, nil
		}
		after = s.last
	}
	if n := len(segs); n > 0 {
		after = max(after, segs[n-1].last)
	}
	lf := f
	lf.Limit, lf.Cursor = limit-len(page.Events), EncodeAuditCursor(after)
	live, err := a.Live.Query(ctx, lf)
	if err != nil {
		return nil, err
	}
	page.Events = append(page.Events, live.Events...)
	page.Next = live.Next
	return page, nil
}

// querySegment adds s's records after *after that match f to page until it
// holds limit events; it reports whether it does.
func (a *AuditArchive) querySegment(ctx context.Context, s auditSegment, f AuditFilter, limit int, after *int64, examined *int, page *AuditPage) (bool, error) {
	sr, err := a.openSegment(ctx, s)
	if err != nil {
		var fe *segmentFormatError
		if errors.As(err, &fe) {
			return false, fmt.Errorf("%s (run audit verify): %w", fe.reason, ErrUnavailable)
		}
		return false, err
	}
	defer sr.Close()
	for {
		line, err := sr.next()
		if err != nil {
			return false, fmt.Errorf("audit segment %s: %w", s.key, err)
		}
		if line == nil {
			return false, nil
		}
		ev, err := DecodeAuditEvent(line)
		if err != nil || ev.Seq <= *after {
			continue // an unreadable record is Verify's to report
		}
		*after = ev.Seq
		*examined++
		if f.Match(ev) {
			page.Events = append(page.Events, ev)
			if len(page.Events) == limit {
				return true, nil
			}
		}
		if *examined >= maxAuditExamined {
			return false, nil
		}
	}
}

// auditLimit normalises a page size (0: the default, at most the maximum).
func auditLimit(limit int) (int, error) {
	switch {
	case limit < 0:
		return 0, fmt.Errorf("limit %d: %w", limit, ErrInvalid)
	case limit == 0:
		return DefaultAuditLimit, nil
	case limit > MaxAuditLimit:
		return MaxAuditLimit, nil
	}
	return limit, nil
}

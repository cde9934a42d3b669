package gateway

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// AuditSealReport says what one sealing run did.
type AuditSealReport struct {
	Segments []string `json:"segments,omitempty"` // keys written
	Sealed   int64    `json:"sealed"`             // records written into them
	Trimmed  int64    `json:"trimmed"`            // records trimmed from the live log
	Locked   bool     `json:"locked"`             // segments written under a retention lock
}

// Seal runs one sealing pass: it first trims from the live log the records
// that segments already hold (a previous run may have stopped between
// writing and trimming), then writes every closed segment whose records are
// all older than Age, reads each back and checks it, and only then trims
// its records. A crash anywhere leaves either no segment, or a segment
// whose records are also still live (trimmed by the next run): never a gap
// and never a record twice in a query. It records an ActionAuditArchived
// event when it did anything.
func (a *AuditArchive) Seal(ctx context.Context) (AuditSealReport, error) {
	a.sealMu.Lock()
	defer a.sealMu.Unlock()
	var rep AuditSealReport
	if a.Age <= 0 {
		return rep, nil
	}
	var ret *ObjectLock
	if a.RetentionDays > 0 {
		rl, ok := a.Blobs.(RetentionLocker)
		if !ok {
			a.sealFailures.Add(1)
			return rep, fmt.Errorf("audit archive: retention lock asked for, but the blob store cannot lock: %w", errors.ErrUnsupported)
		}
		if err := rl.CanRetain(ctx); err != nil {
			a.sealFailures.Add(1)
			return rep, fmt.Errorf("audit archive: retention lock asked for: %w", err)
		}
		ret = &ObjectLock{Mode: a.RetentionMode, Until: a.now().Add(time.Duration(a.RetentionDays) * 24 * time.Hour)}
		rep.Locked = true
	}
	err := a.seal(ctx, ret, &rep)
	a.sealed.Add(rep.Sealed)
	if err != nil {
		a.sealFailures.Add(1)
	}
	if rep.Trimmed > 0 || len(rep.Segments) > 0 {
		ev := &AuditEvent{Actor: Principal{Name: "audit-archive"}, Action: ActionAuditArchived, Outcome: OutcomeSuccess,
			Detail: map[string]any{"segments": len(rep.Segments), "sealed": rep.Sealed, "trimmed": rep.Trimmed, "locked": rep.Locked}}
		if err != nil {
			ev.Outcome = OutcomeError
		}
		if rerr := a.Live.Record(ctx, ev); rerr != nil && err == nil {
			err = fmt.Errorf("audit of the sealing run: %w", rerr)
		}
	}
	return rep, err
}

func (a *AuditArchive) seal(ctx context.Context, ret *ObjectLock, rep *AuditSealReport) error {
	// The base is read before the segments are listed: a segment is always
	// written before the records it holds are trimmed, so the list then
	// reaches at least this base even while another replica seals.
	base, _, err := a.Live.AuditBase(ctx)
	if err != nil {
		return err
	}
	segs, err := a.segments(ctx)
	if err != nil {
		return err
	}
	// Trim what is sealed but still live, segment by segment, each read
	// back and checked first.
	prevSHA, lastSealed, lastHead := "", int64(0), ""
	for i, s := range segs {
		if s.last <= base && i < len(segs)-1 {
			continue
		}
		if i > 0 && prevSHA == "" {
			// The segment before: its digest is what the next seal links to.
			if prevSHA, err = a.objectSHA(ctx, segs[i-1]); err != nil {
				return err
			}
		}
		seal, objSHA, err := a.checkSegment(ctx, s, prevSHA)
		if err != nil {
			return err
		}
		prevSHA, lastSealed, lastHead = objSHA, s.last, seal.Head
		if s.last > base {
			if err := a.Live.AuditTrim(ctx, s.last, seal.Head); err != nil {
				return a.unlessSealedElsewhere(ctx, base, fmt.Errorf("trim audit records to %d: %w", s.last, err))
			}
			rep.Trimmed += s.last - max(base, s.first-1)
			base = s.last
		}
	}
	if base > lastSealed {
		return fmt.Errorf("audit archive: the live log was trimmed to %d but segments end at %d: not sealing (run audit verify)", base, lastSealed)
	}
	cutoff := a.now().Add(-a.Age)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		seal, ok, err := a.nextSegment(ctx, lastSealed, lastHead, prevSHA, cutoff)
		if err != nil {
			return a.unlessSealedElsewhere(ctx, lastSealed, err)
		}
		if !ok {
			return nil
		}
		s := auditSegment{key: AuditSegmentKey(seal.FirstSeq, seal.LastSeq), first: seal.FirstSeq, last: seal.LastSeq}
		written, err := a.writeSegment(ctx, s, seal, ret)
		if err != nil {
			return a.unlessSealedElsewhere(ctx, lastSealed, err)
		}
		_, objSHA, err := a.checkSegment(ctx, s, prevSHA)
		if err != nil {
			return err
		}
		if objSHA != written {
			return fmt.Errorf("audit segment %s read back differs from what was written: not trimming", s.key)
		}
		rep.Segments = append(rep.Segments, s.key)
		rep.Sealed += seal.Records
		if err := a.Live.AuditTrim(ctx, s.last, seal.Head); err != nil {
			// Another replica wrote the same segment (boundaries depend on
			// the records alone) and trimmed first: its trim is ours.
			return a.unlessSealedElsewhere(ctx, lastSealed, fmt.Errorf("trim audit records to %d: %w", s.last, err))
		}
		rep.Trimmed += seal.Records
		prevSHA, lastSealed, lastHead = objSHA, s.last, seal.Head
	}
}

// unlessSealedElsewhere returns err, or nil when the live log was trimmed
// past lastSealed meanwhile: another replica sealed or trimmed the same
// records (and their disappearance is what failed this run's read, write or
// trim), so this run stops and the next one goes on from the segments as
// they are then.
func (a *AuditArchive) unlessSealedElsewhere(ctx context.Context, lastSealed int64, err error) error {
	if base, _, berr := a.Live.AuditBase(ctx); berr == nil && base > lastSealed {
		return nil
	}
	return err
}

// objectSHA returns the SHA-256 of segment s's object.
func (a *AuditArchive) objectSHA(ctx context.Context, s auditSegment) (string, error) {
	rc, err := a.Blobs.Get(ctx, s.key, 0, -1)
	if err != nil {
		return "", fmt.Errorf("audit segment %s: %w", s.key, err)
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		return "", fmt.Errorf("audit segment %s: %w", s.key, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// checkSegment reads s back and checks it alone (chain from its seal's
// prev_hash, seal, link to prevSHA); any fault is an error.
func (a *AuditArchive) checkSegment(ctx context.Context, s auditSegment, prevSHA string) (*AuditSeal, string, error) {
	seal, err := a.readSeal(ctx, s)
	if err != nil {
		return nil, "", err
	}
	v := NewAuditVerifier(a.Keys)
	v.StartAt(s.first-1, seal.PrevHash)
	objSHA, err := a.verifySegment(ctx, v, s, prevSHA)
	if err != nil {
		return nil, "", err
	}
	if res := v.Result(); !res.OK {
		return nil, "", fmt.Errorf("audit segment %s does not verify (record %s: %s): not trimming", s.key, res.FirstBroken, res.Reason)
	}
	return seal, objSHA, nil
}

// nextSegment scans the live records after lastSealed for the next closed
// segment: up to SegmentRecords records of the UTC day of its first, closed
// by a record of another day or by reaching the size. ok is false when the
// segment is not closed yet or holds a record not older than cutoff. The
// records are checked as a chain on the way (a broken live chain is not
// sealed).
func (a *AuditArchive) nextSegment(ctx context.Context, lastSealed int64, lastHead, prevSHA string, cutoff time.Time) (*AuditSeal, bool, error) {
	max := a.segmentRecords()
	first := lastSealed + 1
	v := NewAuditVerifier(a.Keys)
	v.StartAt(lastSealed, lastHead)
	sum := newSegmentSummary()
	var day time.Time
	closed, young := false, false
	errStop := errors.New("stop")
	err := a.Live.AuditRaw(ctx, first, first+max, func(seq int64, raw []byte) error {
		line := auditLine(raw)
		if sum.records == max {
			closed = true
			return errStop
		}
		ev := v.add(seq, line)
		if ev == nil {
			res := v.Result()
			return fmt.Errorf("live audit chain broken at record %s (%s): not sealing", res.FirstBroken, res.Reason)
		}
		d := ev.Time.UTC().Truncate(24 * time.Hour)
		if sum.records > 0 && !d.Equal(day) {
			closed = true
			return errStop
		}
		if !ev.Time.Before(cutoff) {
			young = true
			return errStop
		}
		day = d
		sum.add(line, ev)
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return nil, false, err
	}
	if !closed || young || sum.records == 0 {
		return nil, false, nil
	}
	seal := &AuditSeal{
		Version: 1, Gateway: a.Gateway,
		FirstSeq: first, LastSeq: first + sum.records - 1, Records: sum.records,
		PrevHash: lastHead, Head: sum.head, PrevSegmentSHA256: prevSHA,
		RecordsSHA256: hex.EncodeToString(sum.recordsHash.Sum(nil)),
		MinTime:       sum.minTime, MaxTime: sum.maxTime, Terms: newAuditBloom(sum.terms),
	}
	if a.Keys != nil {
		seal.KeyID = a.Keys.current
	}
	mac, err := seal.mac(a.Keys)
	if err != nil {
		return nil, false, err
	}
	seal.MAC = mac
	return seal, true, nil
}

// writeSegment streams the segment of seal to the blob store: the seal
// line, then the live records as stored, one a line. It returns the
// SHA-256 of the bytes written.
func (a *AuditArchive) writeSegment(ctx context.Context, s auditSegment, seal *AuditSeal, ret *ObjectLock) (string, error) {
	sealLine, err := json.Marshal(seal)
	if err != nil {
		return "", err
	}
	pr, pw := io.Pipe()
	h := sha256.New()
	done := make(chan error, 1)
	go func() {
		w := bufio.NewWriterSize(io.MultiWriter(pw, h), 64<<10)
		err := func() error {
			if _, err := w.Write(append(sealLine, '\n')); err != nil {
				return err
			}
			n := int64(0)
			err := a.Live.AuditRaw(ctx, s.first, s.last, func(seq int64, raw []byte) error {
				n++
				if _, err := w.Write(auditLine(raw)); err != nil {
					return err
				}
				return w.WriteByte('\n')
			})
			if err == nil && n != seal.Records {
				err = fmt.Errorf("live log holds %d of the %d records to seal", n, seal.Records)
			}
			if err != nil {
				return err
			}
			return w.Flush()
		}()
		pw.CloseWithError(err)
		done <- err
	}()
	if ret != nil {
		_, err = a.Blobs.(RetentionLocker).PutRetained(ctx, s.key, pr, *ret)
	} else {
		_, err = a.Blobs.Put(ctx, s.key, pr)
	}
	pr.CloseWithError(errors.New("put ended"))
	if werr := <-done; err == nil && werr != nil {
		err = werr
	}
	if err != nil {
		return "", fmt.Errorf("write audit segment %s: %w", s.key, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Run seals every interval until ctx ends; a failed run is logged and
// tried again at the next interval.
func (a *AuditArchive) Run(ctx context.Context, interval time.Duration) {
	if a.Age <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		rep, err := a.Seal(ctx)
		switch {
		case err != nil && ctx.Err() == nil && a.Logger != nil:
			a.Logger.ErrorContext(ctx, "audit sealing run failed", LogKeyError, err.Error())
		case err == nil && len(rep.Segments) > 0 && a.Logger != nil:
			a.Logger.InfoContext(ctx, "audit records sealed", "segments", len(rep.Segments), "records", rep.Sealed, "locked", rep.Locked)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// DuplicatePolicy says what Store does with an instance whose SOP Instance
// UID is already stored with different bytes.
type DuplicatePolicy string

const (
	// DuplicateReject refuses the new instance and keeps the original (the
	// default: nothing stored is ever altered without an operator's choice).
	DuplicateReject DuplicatePolicy = "reject"
	// DuplicateReplace stores the new bytes in place of the original and
	// audits the replacement.
	DuplicateReplace DuplicatePolicy = "replace"
)

// mediaStorageDirectory is the SOP class of a DICOMDIR: a file-set index,
// not an instance of a study.
const mediaStorageDirectory = "1.2.840.10008.1.3.10"

// StoreOptions qualify one Store call.
type StoreOptions struct {
	// StudyInstanceUID, when set (STOW-RS to /studies/{study}), refuses an
	// instance of any other study.
	StudyInstanceUID string
	// SHA256, when set, is the SHA-256 (lower-case hex) the sender declared
	// for the bytes it sent (a STOW-RS part's Content-Digest). An instance
	// whose bytes differ is refused before anything is stored, so that a
	// sender's corrupt copy, or bytes damaged on the way, never land here.
	SHA256 string
	// SOPClassUID and SOPInstanceUID, when set (a C-STORE: its command's
	// Affected SOP Class and Instance UIDs), refuse a dataset that names
	// another instance or class: the C-STORE's answer is about the
	// instance its command names.
	SOPClassUID, SOPInstanceUID string
}

// Ingester stores instances: it parses the header from a bounded prefix,
// streams every byte once to the BlobStore while hashing it and checking
// the rest of the structure, and writes the index entry only after the blob
// is durable. Safe for concurrent use; concurrent stores of one SOP Instance
// UID (on any replica sharing the Index) are serialised by Index.Lock.
type Ingester struct {
	Blobs   BlobStore
	Index   Index
	Auditor Auditor // records replacements; may be nil
	// DuplicatePolicy applies to the same SOP Instance UID with different
	// bytes; "" means DuplicateReject.
	DuplicatePolicy DuplicatePolicy
	// PreamblePolicy applies to an executable preamble (preamble.go); ""
	// means PreambleRefuse.
	PreamblePolicy PreamblePolicy
	// MaxInstanceBytes bounds one instance; 0 means unlimited.
	MaxInstanceBytes int64
	// HeaderLimits bound the header parser; zero fields take the defaults.
	HeaderLimits dicomcodec.HeaderLimits
	// HeaderMemory, when set, bounds the memory the headers of all
	// concurrent Stores hold together (an instance over it is refused as
	// unavailable); nil bounds each Store by HeaderLimits only.
	HeaderMemory *dicomcodec.HeaderMemory
	// LockTTL bounds how long a crashed replica's lease on a SOP Instance
	// UID blocks others (a live holder renews it). 0 means 30 s.
	LockTTL time.Duration
	// LockWait bounds how long an upload waits for another upload of the
	// same instance to finish before it is refused as unavailable (503,
	// Retry-After), rather than holding the client. 0 means 1 minute.
	LockWait time.Duration
	Now      func() time.Time
	Logger   *slog.Logger
	// ObserveStage, when set, is told how long each stage of storing an
	// instance took (StageReceive, StageDurable, StageIndex; StoreBatch
	// adds StageAudit per request), so that an admin can see which of the
	// network, the disk, the index or the audit log bounds ingest.
	ObserveStage func(stage StoreStage, d time.Duration)
}

// StoreStage names a stage of storing instances, for Ingester.ObserveStage.
type StoreStage string

const (
	// StageReceive is reading an instance from its sender: parsing its
	// header and streaming it to the blob store (the whole write, for a
	// blob store that does not stage).
	StageReceive StoreStage = "receive"
	// StageDurable is making a staged blob durable under its key: its sync,
	// its name, its directory's sync (Stager's Commit).
	StageDurable StoreStage = "durable"
	// StageIndex is writing the instance's index entry, with the read of
	// its study's entry that the identity check compares it with.
	StageIndex StoreStage = "index"
	// StageAudit is recording a request's audit event (once per request,
	// not per instance).
	StageAudit StoreStage = "audit"
)

// StoreStages lists every StoreStage, for metrics that exist from the start.
var StoreStages = []StoreStage{StageReceive, StageDurable, StageIndex, StageAudit}

// observe reports the time since start of stage to ObserveStage.
func (in *Ingester) observe(stage StoreStage, start time.Time) {
	if in.ObserveStage != nil {
		in.ObserveStage(stage, time.Since(start))
	}
}

// Store reads one DICOM Part 10 instance from r and stores it unchanged.
//
// It returns the stored record, or the existing one when the same bytes are
// already stored (idempotent: nothing is rewritten). A refused instance is an
// *InstanceError carrying the STOW-RS FailureReason: ReasonCannotUnderstand
// (ErrInvalid) for unreadable, truncated or malformed data,
// ReasonTransferSyntaxUnsupported, ReasonDataSetSOPClassMismatch for missing
// UIDs or another study than opts.StudyInstanceUID (ErrConflict),
// ReasonDuplicateRejected (ErrConflict) for other bytes under a stored SOP
// Instance UID, ReasonOutOfResources wrapping ErrUnavailable when storage or
// the index fail, or ErrTooLarge over MaxInstanceBytes. Any other error is a
// read error from r, returned as it is (a client that went away, an
// *http.MaxBytesError). On every error no index entry is written and nothing
// is left under the instance's key (an original is left as it was).
func (in *Ingester) Store(ctx context.Context, r io.Reader, opts StoreOptions) (*InstanceRecord, error) {
	p, err := in.Begin(ctx, r, opts)
	if err != nil {
		return nil, err
	}
	return p.Finish(ctx)
}

// PendingInstance is an instance Begin has read to its end and staged but
// not yet made durable and indexed; Finish does that. It holds the
// instance's lock (and, on a filesystem store, an open temporary file) until
// Finish returns.
type PendingInstance struct {
	finish func(ctx context.Context) (*InstanceRecord, error)
	once   sync.Once
	rec    *InstanceRecord
	err    error
}

// Finish makes the instance durable and indexes it, and returns what Store
// returns. Calling it again returns the same outcome.
func (p *PendingInstance) Finish(ctx context.Context) (*InstanceRecord, error) {
	p.once.Do(func() { p.rec, p.err = p.finish(ctx) })
	return p.rec, p.err
}

// Begin does the part of Store that reads r: it parses, checks and streams
// the instance to storage (staged, when the BlobStore is a Stager) and
// returns once r is consumed, leaving the sync and the index write to the
// returned PendingInstance's Finish. A receiver of many instances in one
// stream calls Begin for each in turn and runs the Finishes concurrently,
// so syncs overlap with reading and are shared instead of paid one after
// another. Begin's errors are Store's; after a nil error the caller must
// call Finish (until then the instance's lock is held).
func (in *Ingester) Begin(ctx context.Context, r io.Reader, opts StoreOptions) (_ *PendingInstance, err error) {
	defer in.observe(StageReceive, time.Now())
	lim := &instanceLimit{r: r, max: in.MaxInstanceBytes}
	var head bytes.Buffer
	// The header's memory is held until Finish has indexed it (its
	// encodings are made from the Dataset there).
	acct := dicomcodec.NewHeaderAccount(ctx, in.HeaderMemory)
	handedOver := false // to Finish, which releases the header and the lock
	defer func() {
		if !handedOver {
			acct.Release()
		}
	}()
	h, err := dicomcodec.ParseHeaderAccounted(io.TeeReader(lim, &head), in.HeaderLimits, acct)
	if err != nil {
		return nil, FromCodec(err)
	}
	if err := in.validate(h, opts); err != nil {
		return nil, err
	}
	preamble, err := in.checkPreamble(head.Bytes())
	if err != nil {
		return nil, &InstanceError{SOPClassUID: h.SOPClassUID, SOPInstanceUID: h.SOPInstanceUID, Reason: ReasonCannotUnderstand, Err: err,
			Comment: "executable preamble (" + preamble + ") refused: CVE-2019-11687"}
	}
	key := InstanceKey(h.StudyInstanceUID, h.SeriesInstanceUID, h.SOPInstanceUID)
	fail := func(reason uint16, err error) *InstanceError {
		return &InstanceError{SOPClassUID: h.SOPClassUID, SOPInstanceUID: h.SOPInstanceUID, Reason: reason, Err: err}
	}
	annotate := func(err error) error {
		if ie, ok := errors.AsType[*InstanceError](err); ok && ie.SOPInstanceUID == "" {
			ie.SOPClassUID, ie.SOPInstanceUID = h.SOPClassUID, h.SOPInstanceUID
		}
		return err
	}
	unavailable := func(what string, err error) *InstanceError {
		if !errors.Is(err, ErrUnavailable) {
			err = fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		return fail(ReasonOutOfResources, fmt.Errorf("%s: %w", what, err))
	}

	ttl, wait := in.LockTTL, in.LockWait
	if ttl <= 0 {
		ttl = 30 * time.Second
	}
	if wait <= 0 {
		wait = time.Minute
	}
	lockCtx, cancelLock := context.WithTimeout(ctx, wait)
	unlock, err := in.Index.Lock(lockCtx, h.SOPInstanceUID, ttl)
	cancelLock()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, unavailable("lock instance", fmt.Errorf("another upload of this instance is still running: %w", err))
	}
	defer func() {
		if !handedOver {
			unlock()
		}
	}()

	existing, err := in.Index.GetInstance(ctx, h.SOPInstanceUID)
	switch {
	case errors.Is(err, ErrNotFound):
		existing = nil
	case err != nil:
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, unavailable("look up instance", err)
	}
	var src io.Reader = io.MultiReader(&head, lim)
	var origSum hash.Hash // set when an executable preamble is zeroed
	if preamble != "" {
		src, origSum = zeroPreamble(&head, lim)
	}
	body := &checkedReader{r: src, sum: sha256.New(), tail: h.Tail(), headerLeft: h.HeaderLength, want: opts.SHA256, sent: origSum}
	defer body.tail.Close()

	// An index entry whose blob is gone (lost after a failure) is healed by a
	// resend of the same bytes, never answered as "already stored".
	healing := false
	if existing != nil {
		if _, err := in.Blobs.Stat(ctx, existing.Key()); errors.Is(err, ErrNotFound) {
			healing = true
			in.logger().WarnContext(ctx, "index entry without its blob: storing the resent bytes", LogKeySOPUID, h.SOPInstanceUID)
		}
	}

	if existing != nil && !healing && in.policy() == DuplicateReject {
		// Hash the stream only: the stored original is never touched.
		if _, err := io.Copy(io.Discard, body); err != nil {
			return nil, annotate(body.failure(err))
		}
		if body.sha() == existing.SHA256 && body.n == existing.Size {
			// Already stored: nothing is left for Finish but to answer.
			return &PendingInstance{finish: func(context.Context) (*InstanceRecord, error) { return existing, nil }}, nil
		}
		return nil, fail(ReasonDuplicateRejected, fmt.Errorf("instance %s is already stored with different content (policy %s): %w", h.SOPInstanceUID, DuplicateReject, ErrConflict))
	}

	var (
		size   int64
		staged StagedBlob
	)
	if st, ok := in.Blobs.(Stager); ok {
		if staged, err = st.Stage(ctx, key, body); err == nil {
			size = staged.Size()
		}
	} else {
		size, err = in.Blobs.Put(ctx, key, body)
	}
	if err != nil {
		if body.err != nil {
			return nil, annotate(body.failure(body.err))
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, unavailable("store blob", err)
	}
	if !body.done || size != body.n {
		// Put returned before the end of the stream: never index that.
		if staged != nil {
			staged.Abort()
		} else {
			in.deleteBlob(ctx, key)
		}
		return nil, unavailable("store blob", fmt.Errorf("stored %d of %d bytes", size, body.n))
	}
	rec := &InstanceRecord{
		StudyInstanceUID:  h.StudyInstanceUID,
		SeriesInstanceUID: h.SeriesInstanceUID,
		SOPInstanceUID:    h.SOPInstanceUID,
		SOPClassUID:       h.SOPClassUID,
		TransferSyntaxUID: h.TransferSyntaxUID,
		Size:              size,
		SHA256:            body.sha(),
		NumberOfFrames:    h.NumberOfFrames,
		PixelData:         body.layout,
		StoredAt:          in.now().UTC(),
		Metadata:          withoutForeignFlag(h.Dataset), // identity_conflict.go
	}

	// stored says what a successful Finish did: the zeroed preamble's
	// audit, the log line, and UIDs that break PS3.5 9.1.
	stored := func(ctx context.Context, what string) {
		if origSum != nil {
			in.auditZeroedPreamble(ctx, rec, preamble, origSum)
		}
		in.logger().InfoContext(ctx, what, LogKeyStudyUID, rec.StudyInstanceUID, LogKeySeriesUID, rec.SeriesInstanceUID, LogKeySOPUID, rec.SOPInstanceUID, "size", rec.Size)
		in.logDeviations(ctx, rec)
	}
	pending := &PendingInstance{}
	pending.finish = func(ctx context.Context) (*InstanceRecord, error) {
		defer acct.Release()
		defer unlock()
		if healing && (existing.SHA256 != rec.SHA256 || existing.Size != rec.Size) && in.policy() == DuplicateReject {
			if staged != nil {
				staged.Abort()
			} else {
				in.deleteBlob(ctx, key)
			}
			return nil, fail(ReasonDuplicateRejected, fmt.Errorf("instance %s is indexed with different content (policy %s): %w", h.SOPInstanceUID, DuplicateReject, ErrConflict))
		}
		if staged != nil {
			start := time.Now()
			var (
				err  error
				done *InstanceRecord
			)
			if existing == nil {
				done, err = in.commitNew(ctx, staged, rec, key)
			} else {
				err = staged.Commit(ctx, rec.SHA256)
			}
			in.observe(StageDurable, start)
			switch {
			case done != nil:
				return done, nil
			case err != nil && ctx.Err() != nil:
				return nil, ctx.Err()
			case errors.Is(err, ErrConflict):
				return nil, fail(ReasonDuplicateRejected, err)
			case err != nil:
				return nil, unavailable("store blob", err)
			}
		}
		if existing != nil { // DuplicateReplace, or healing a lost blob
			if existing.SHA256 == rec.SHA256 && existing.Size == rec.Size {
				return existing, nil
			}
			in.checkReplacement(ctx, existing, rec) // identity_conflict.go
			start := time.Now()
			err := in.Index.ReplaceInstance(ctx, IndexRecord(rec))
			in.observe(StageIndex, start)
			if err != nil {
				return nil, unavailable("replace index entry", err)
			}
			if old := existing.Key(); old != key {
				in.deleteBlob(ctx, old)
			}
			in.auditReplace(ctx, existing, rec)
			stored(ctx, "instance replaced")
			return rec, nil
		}

		start := time.Now()
		got, created, err := in.indexNew(ctx, rec) // identity_conflict.go
		in.observe(StageIndex, start)
		if err != nil {
			// The blob stays, indexed or not (a write whose reply was lost
			// is found by indexNew): a resend of the same bytes
			// indexes it (commitNew), reindex finds it. Deleting it could
			// take the blob of another upload of the same bytes that adopted
			// it meanwhile (past a lost lock) and was acknowledged.
			return nil, unavailable("write index entry", err)
		}
		if !created {
			// Only possible when the lock's lease ran out during the upload.
			if got != nil && got.SHA256 == rec.SHA256 {
				return got, nil
			}
			in.logger().ErrorContext(ctx, "instance indexed by another upload while locked", LogKeySOPUID, rec.SOPInstanceUID)
			if got != nil && got.Key() != key {
				in.deleteBlob(ctx, key) // ours, under a key no index entry names
			}
			return nil, fail(ReasonDuplicateRejected, fmt.Errorf("instance %s was stored concurrently with different content: %w", h.SOPInstanceUID, ErrConflict))
		}
		stored(ctx, "instance stored")
		return rec, nil
	}
	handedOver = true
	return pending, nil
}

// commitNew makes the staged blob of a new instance durable without
// replacing an object already under key (StagedBlob.CommitNew). The lock
// on the SOP Instance UID normally keeps a second upload away; this holds
// when the lock was lost (a Redis failover, renewals failing past its
// TTL), so that no upload overwrites the bytes of an instance already
// acknowledged. When key is taken, it decides from the index and the
// object there, and ends staged either way:
//   - the instance is indexed: the same bytes are stored already (done is
//     that record); other bytes are a conflict (ErrConflict), as for a
//     duplicate;
//   - the object there is not indexed and holds the same bytes (a store
//     whose index write failed, or another upload between its commit and
//     its index write): it is committed again over itself, so that it is
//     durable before this upload indexes and acknowledges it;
//   - an unindexed object with other bytes is a conflict too: it may be
//     another upload about to be acknowledged, and nothing here can tell
//     it from one left by a failed store (reindex indexes such an object).
func (in *Ingester) commitNew(ctx context.Context, staged StagedBlob, rec *InstanceRecord, key string) (done *InstanceRecord, err error) {
	err = staged.CommitNew(ctx, rec.SHA256)
	if !errors.Is(err, ErrConflict) {
		return nil, err
	}
	keep := false
	defer func() {
		if !keep {
			staged.Abort()
		}
	}()
	cur, err := in.Index.GetInstance(ctx, rec.SOPInstanceUID)
	switch {
	case err == nil && cur.SHA256 == rec.SHA256 && cur.Size == rec.Size:
		return cur, nil
	case err == nil:
		in.logger().ErrorContext(ctx, "instance indexed by another upload while locked", LogKeySOPUID, rec.SOPInstanceUID)
		return nil, fmt.Errorf("instance %s was stored concurrently with different content: %w", rec.SOPInstanceUID, ErrConflict)
	case !errors.Is(err, ErrNotFound):
		return nil, fmt.Errorf("look up instance: %w", err)
	}
	sum, size, err := BlobSHA256(ctx, in.Blobs, key)
	if err != nil {
		return nil, fmt.Errorf("read the unindexed object under the key: %w", err)
	}
	if sum != rec.SHA256 || size != rec.Size {
		in.logger().WarnContext(ctx, "unindexed blob with other bytes under the instance's key", LogKeySOPUID, rec.SOPInstanceUID)
		return nil, fmt.Errorf("instance %s: an object with other bytes is stored under its key but not indexed (another upload of it, or a failed one: gateway reindex indexes it): %w", rec.SOPInstanceUID, ErrConflict)
	}
	keep = true
	return nil, staged.Commit(ctx, rec.SHA256)
}

// logDeviations warns about a stored instance whose UIDs break PS3.5 9.1 in
// the way ValidateUID tolerates (no patient data: UIDs only).
func (in *Ingester) logDeviations(ctx context.Context, rec *InstanceRecord) {
	if deviations := rec.UIDDeviations(); len(deviations) > 0 {
		in.logger().WarnContext(ctx, "instance stored with UIDs that break PS3.5 9.1", LogKeyStudyUID, rec.StudyInstanceUID, LogKeySOPUID, rec.SOPInstanceUID, "uid_deviations", deviations)
	}
}

// validate checks what makes an instance storable: its UIDs (ValidateUID:
// PS3.5 9.1, a leading zero tolerated), its SOP class and its study.
func (in *Ingester) validate(h *dicomcodec.Header, opts StoreOptions) error {
	fail := func(reason uint16, err error) error {
		uid := h.SOPInstanceUID
		if ValidateUID(uid) != nil {
			uid = ""
		}
		class := h.SOPClassUID
		if ValidateUID(class) != nil {
			class = ""
		}
		return &InstanceError{SOPClassUID: class, SOPInstanceUID: uid, Reason: reason, Err: err}
	}
	if h.SOPClassUID == mediaStorageDirectory {
		return fail(ReasonNoSuchSOPClass, fmt.Errorf("a DICOMDIR (Media Storage Directory) is not a storable instance: %w", ErrInvalid))
	}
	for _, f := range []struct{ name, uid string }{
		{"SOP Class UID (0008,0016)", h.SOPClassUID},
		{"SOP Instance UID (0008,0018)", h.SOPInstanceUID},
		{"Study Instance UID (0020,000D)", h.StudyInstanceUID},
		{"Series Instance UID (0020,000E)", h.SeriesInstanceUID},
	} {
		if f.uid == "" {
			return fail(ReasonDataSetSOPClassMismatch, fmt.Errorf("%s is missing: %w", f.name, ErrInvalid))
		}
		if err := ValidateUID(f.uid); err != nil {
			return fail(ReasonCannotUnderstand, fmt.Errorf("%s: %w", f.name, err))
		}
	}
	if (opts.SOPInstanceUID != "" && opts.SOPInstanceUID != h.SOPInstanceUID) || (opts.SOPClassUID != "" && opts.SOPClassUID != h.SOPClassUID) {
		return fail(ReasonDataSetSOPClassMismatch, fmt.Errorf("the dataset is instance %s of class %s, not the instance %s of class %s its command names: %w",
			h.SOPInstanceUID, h.SOPClassUID, printable(opts.SOPInstanceUID), printable(opts.SOPClassUID), ErrInvalid))
	}
	if opts.StudyInstanceUID != "" && opts.StudyInstanceUID != h.StudyInstanceUID {
		// PS3.18 10.5.3: a Study Instance UID mismatch is a conflict; the
		// FailureReason is of the A9xx class ("does not match").
		return fail(ReasonDataSetSOPClassMismatch, fmt.Errorf("instance belongs to study %s, not to the study %s of the request: %w", h.StudyInstanceUID, printable(opts.StudyInstanceUID), ErrConflict))
	}
	return nil
}

func (in *Ingester) policy() DuplicatePolicy {
	if in.DuplicatePolicy == DuplicateReplace {
		return DuplicateReplace
	}
	return DuplicateReject
}

func (in *Ingester) now() time.Time {
	if in.Now != nil {
		return in.Now()
	}
	return time.Now()
}

func (in *Ingester) logger() *slog.Logger {
	if in.Logger != nil {
		return in.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// deleteBlob removes what a failed store left, even when the request's
// context has ended.
func (in *Ingester) deleteBlob(ctx context.Context, key string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := in.Blobs.Delete(ctx, key); err != nil && !errors.Is(err, ErrNotFound) {
		in.logger().ErrorContext(ctx, "blob of a failed store not removed", "key", key, LogKeyError, err.Error())
	}
}

func (in *Ingester) auditReplace(ctx context.Context, old, rec *InstanceRecord) {
	in.auditStored(ctx, rec, "audit of an instance replacement not written", map[string]any{
		"replaced":         rec.SOPInstanceUID,
		"old_sha256":       old.SHA256,
		"new_sha256":       rec.SHA256,
		"duplicate_policy": string(DuplicateReplace),
	})
}

// auditStored records a store that altered something (a replacement, a
// zeroed preamble) with detail, for rec's study and patient; a failure to
// write it is logged with failure, never returned: the instance is stored.
func (in *Ingester) auditStored(ctx context.Context, rec *InstanceRecord, failure string, detail map[string]any) {
	if in.Auditor == nil {
		return
	}
	ev := &AuditEvent{
		Time:      in.now().UTC(),
		Actor:     PrincipalFrom(ctx),
		Action:    ActionStore,
		Outcome:   OutcomeSuccess,
		StudyUIDs: []string{rec.StudyInstanceUID},
		Detail:    detail,
	}
	if id := rec.Metadata.String(dicomcodec.TagPatientID); id != "" {
		ev.PatientIDs = []string{id}
	}
	if err := auditDetached(ctx, in.Auditor, ev); err != nil {
		in.logger().ErrorContext(ctx, failure, LogKeySOPUID, rec.SOPInstanceUID, LogKeyError, err.Error())
	}
}

// instanceLimit fails the read once more than max bytes arrive.
type instanceLimit struct {
	r   io.Reader
	n   int64
	max int64
}

func (l *instanceLimit) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	l.n += int64(n)
	if l.max > 0 && l.n > l.max {
		return 0, &InstanceError{Reason: ReasonOutOfResources, Err: fmt.Errorf("instance is larger than %d bytes: %w", l.max, ErrTooLarge)}
	}
	return n, err
}

// checkedReader passes the instance on to storage while hashing it and
// feeding the bytes after the header to the TailScanner. At the end of the
// stream it returns the scanner's verdict instead of io.EOF when the
// instance is incomplete, so the BlobStore aborts the Put and never commits
// a truncated object.
type checkedReader struct {
	r          io.Reader
	sum        hash.Hash
	tail       *dicomcodec.TailScanner
	headerLeft int64
	n          int64
	err        error
	done       bool
	layout     *dicomcodec.PixelDataLayout
	// want, when set, is the sender's SHA-256 of the bytes it sent
	// (StoreOptions.SHA256): at the end of the stream the digest must
	// match, or the read fails, so that the store never commits the
	// object. sent hashes the bytes as sent when they differ from the
	// stored ones (a zeroed preamble); nil means sum.
	want string
	sent hash.Hash
}

func (c *checkedReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if c.done {
		return 0, io.EOF
	}
	n, err := c.r.Read(p)
	if n > 0 {
		c.n += int64(n)
		c.sum.Write(p[:n])
		rest := p[:n]
		if c.headerLeft > 0 {
			k := min(c.headerLeft, int64(len(rest)))
			c.headerLeft -= k
			rest = rest[k:]
		}
		if len(rest) > 0 {
			if _, werr := c.tail.Write(rest); werr != nil {
				c.err = FromCodec(werr)
				return 0, c.err
			}
		}
	}
	if errors.Is(err, io.EOF) {
		layout, ferr := c.tail.Finish()
		if ferr != nil {
			c.err = FromCodec(ferr)
			return 0, c.err
		}
		if derr := c.checkDigest(); derr != nil {
			c.err = derr
			return 0, c.err
		}
		c.layout, c.done = layout, true
		return n, io.EOF
	}
	if err != nil {
		c.err = err
	}
	return n, err
}

func (c *checkedReader) sha() string { return hex.EncodeToString(c.sum.Sum(nil)) }

// checkDigest compares the bytes as sent with the sender's declared
// SHA-256, when it declared one.
func (c *checkedReader) checkDigest() error {
	if c.want == "" {
		return nil
	}
	sent := c.sum
	if c.sent != nil {
		sent = c.sent
	}
	if got := hex.EncodeToString(sent.Sum(nil)); got != c.want {
		return &InstanceError{Reason: ReasonProcessingFailure, Comment: "Content-Digest mismatch: bytes differ from those sent",
			Err: fmt.Errorf("the %d bytes received have SHA-256 %s, not the %s the sender declared (Content-Digest): not stored: %w", c.n, got, c.want, ErrInvalid)}
	}
	return nil
}

// failure is the error to return for a stream that could not be read to
// its end: the instance's own problem, or the read error as it is.
func (c *checkedReader) failure(err error) error {
	if c.err != nil {
		return c.err
	}
	return err
}

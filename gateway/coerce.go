package gateway

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// ActionTransferCoerced records that a transfer rewrote patient identity on
// the way out, with the identities before and after.
const ActionTransferCoerced = "transfer.coerced"

// Coercion targets (peers[].coerce.to).
const (
	// CoerceNational sends the NHS number as the Patient ID, with Issuer
	// of Patient ID "NHS".
	CoerceNational = "national"
	// CoerceLocal sends the destination's local ID for the instance's NHS
	// number, from the lookup the admin maintains, with the destination's
	// issuer.
	CoerceLocal = "local"
)

// CoerceRule is a peer's identity rule, peers[].coerce in the --config YAML.
// Every rule needs the NHS number: an instance that does not carry it (as
// its Patient ID with a national issuer, or in the Other Patient IDs
// Sequence) is not sent, and the transfer fails saying so, rather than
// filing images under an ambiguous identity at the destination.
type CoerceRule struct {
	To string `yaml:"to" json:"to"`
	// Issuer is the Issuer of Patient ID written with a local ID (to:
	// local), e.g. SURREY.
	Issuer string `yaml:"issuer" json:"issuer,omitempty"`
	// LookupFile maps NHS numbers to the destination's local IDs: one
	// "nhs_number,local_id" per line; blank lines and lines starting with #
	// are ignored.
	LookupFile string `yaml:"lookup_file" json:"lookup_file,omitempty"`
}

// Coercer applies the identity rules of peers and routes to outgoing
// transfers. A transfer a routing rule created (CreatedBy "route:<name>")
// follows that rule's coerce when it has one, else its destination peer's.
// Build it with NewCoercer.
type Coercer struct {
	Blobs BlobStore
	rules map[string]CoerceRule // "peer:<name>" or "route:<name>" → rule

	mu      sync.Mutex
	lookups map[string]*lookupFile // same keys
}

// lookupFile is a lookup file as last read. The admin maintains the file;
// a transfer planned after its content changed reads it again, so no
// restart is needed. Changes are told by the SHA-256 of the content, not by
// size and modification time: an edit that keeps both (a tool that
// restores the time, two edits within one clock tick) must not leave a
// transfer sending under the old mapping.
type lookupFile struct {
	path   string
	digest [sha256.Size]byte
	ids    map[string]string // NHS number → local ID
}

// lookup returns the lookup of key, read again when its file's content
// changed. A file that became unreadable or malformed is an error: the
// transfer waits for the admin to fix it rather than send with an older
// mapping.
func (c *Coercer) lookup(key string) (map[string]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	lf := c.lookups[key]
	if lf.ids != nil {
		digest, err := fileDigest(lf.path)
		if err != nil {
			return nil, fmt.Errorf("%s: coerce.lookup_file: %w", key, err)
		}
		if digest == lf.digest {
			return lf.ids, nil
		}
	}
	ids, digest, err := readLookup(lf.path)
	if err != nil {
		return nil, fmt.Errorf("%s: coerce.lookup_file: %w", key, err)
	}
	lf.ids, lf.digest = ids, digest
	return ids, nil
}

// fileDigest is the SHA-256 of the file at path, streamed.
func fileDigest(path string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	f, err := os.Open(path)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, err
	}
	h.Sum(sum[:0])
	return sum, nil
}

// NewCoercer checks the coerce rules of peers and routes and reads their
// lookup files.
func NewCoercer(peers []Peer, routes []RouteRule, blobs BlobStore) (*Coercer, error) {
	c := &Coercer{Blobs: blobs, rules: map[string]CoerceRule{}, lookups: map[string]*lookupFile{}}
	add := func(key string, r *CoerceRule) error {
		if r == nil {
			return nil
		}
		switch r.To {
		case CoerceNational:
		case CoerceLocal:
			if r.Issuer == "" || r.LookupFile == "" {
				return fmt.Errorf("%s: coerce.to local needs coerce.issuer and coerce.lookup_file", key)
			}
			c.lookups[key] = &lookupFile{path: r.LookupFile}
			if _, err := c.lookup(key); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: coerce.to %q: want national or local", key, r.To)
		}
		c.rules[key] = *r
		return nil
	}
	// Both senders (STOW-RS and C-STORE) send what SendHeader.Rewrite
	// returns, so a rule applies to DICOMweb and DIMSE peers alike.
	for _, p := range peers {
		if err := add("peer:"+p.Name, p.Coerce); err != nil {
			return nil, err
		}
	}
	for _, r := range routes {
		if err := add("route:"+r.Name, r.Coerce); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// ruleFor returns the key and rule that apply to transfer t to peer.
func (c *Coercer) ruleFor(t *Transfer, peer string) (string, CoerceRule, bool) {
	if strings.HasPrefix(t.CreatedBy, "route:") {
		if r, ok := c.rules[t.CreatedBy]; ok {
			return t.CreatedBy, r, true
		}
	}
	key := "peer:" + peer
	r, ok := c.rules[key]
	return key, r, ok
}

// readLookup reads the lookup file at path (parseLookup) and the SHA-256
// of the bytes it parsed.
func readLookup(path string) (map[string]string, [sha256.Size]byte, error) {
	var digest [sha256.Size]byte
	f, err := os.Open(path)
	if err != nil {
		return nil, digest, err
	}
	defer f.Close()
	// The digest is of the bytes parsed, so a change made while they are
	// read is seen on the next lookup.
	h := sha256.New()
	ids, err := parseLookup(io.TeeReader(f, h))
	if err != nil {
		return nil, digest, err
	}
	if _, err := io.Copy(h, f); err != nil { // anything the scanner left unread
		return nil, digest, err
	}
	h.Sum(digest[:0])
	return ids, digest, nil
}

// parseLookup reads "nhs_number,local_id" lines. The mapping must be one
// to one: an NHS number listed twice, or two NHS numbers given one local
// ID, would file two patients' images under one record (or one patient's
// under whichever line came last), so the file is refused.
func parseLookup(r io.Reader) (map[string]string, error) {
	m := map[string]string{}
	lineOf := map[string]int{} // local ID → the line that gave it
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		nhs, local, ok := strings.Cut(line, ",")
		nhs, local = strings.TrimSpace(nhs), strings.TrimSpace(local)
		if !ok || nhs == "" || local == "" || len(local) > 64 { // LO holds 64 characters
			return nil, fmt.Errorf("line %d: want nhs_number,local_id (local ID at most 64 characters)", n)
		}
		if prev, dup := m[nhs]; dup {
			if prev == local {
				continue // the same line again
			}
			return nil, fmt.Errorf("line %d: an NHS number listed before with another local ID: one patient, one local ID", n)
		}
		if prev, dup := lineOf[local]; dup {
			return nil, fmt.Errorf("line %d: the local ID of line %d again: two NHS numbers cannot share one local ID", n, prev)
		}
		m[nhs], lineOf[local] = local, n
	}
	return m, sc.Err()
}

// identityChange is one distinct before → after mapping of a transfer.
type identityChange struct {
	BeforeID     string `json:"before_patient_id"`
	BeforeIssuer string `json:"before_issuer"`
	AfterID      string `json:"after_patient_id"`
	AfterIssuer  string `json:"after_issuer"`
	Instances    int    `json:"instances"`
}

// errRefused marks a transfer the rule refuses: permanent.
var errRefused = errors.New("identity rule refuses")

// refusedByCodec reports whether the rewriter refused the instance itself
// (unreadable, a transfer syntax it cannot rewrite, another patient than
// its index entry, values LO cannot hold): no retry can send it.
func refusedByCodec(err error) bool {
	for _, e := range []error{dicomcodec.ErrMalformed, dicomcodec.ErrUnsupportedTransferSyntax, dicomcodec.ErrIdentityMismatch, dicomcodec.ErrInvalidInput} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// edit decides what rule (under key) writes into rec for peer; ids is the
// rule's lookup (to: local).
func (c *Coercer) edit(key, peer string, rule CoerceRule, ids map[string]string, rec *InstanceRecord) (dicomcodec.IdentityEdit, error) {
	md := rec.Metadata
	nhs, ok := NationalID(md)
	if !ok {
		return dicomcodec.IdentityEdit{}, fmt.Errorf("%w: instance %s carries no NHS number (Patient ID with issuer NHS, or in the Other Patient IDs Sequence), which peer %s's rule (coerce.to %s) needs; nothing sent", errRefused, rec.SOPInstanceUID, peer, rule.To)
	}
	e := dicomcodec.IdentityEdit{ExpectPatientID: strings.TrimSpace(md.String(dicomcodec.TagPatientID)), PatientID: nhs, Issuer: NHSNumberIssuer}
	if rule.To == CoerceLocal {
		local, ok := ids[nhs]
		if !ok {
			return dicomcodec.IdentityEdit{}, fmt.Errorf("%w: the NHS number of instance %s has no local ID for %s in the lookup of %s (coerce.lookup_file); nothing sent", errRefused, rec.SOPInstanceUID, peer, key)
		}
		e.PatientID, e.Issuer = local, rule.Issuer
	}
	return e, nil
}

// plan is the outbound form of a transfer's instances under a rule.
type plan struct {
	edits   map[string]dicomcodec.IdentityEdit // by SOP Instance UID
	out     map[string]*InstanceRecord         // records with the size and SHA-256 that will be sent
	changes []identityChange
}

// plan decides every instance's edit (failing with errRefused when the
// rule cannot be met) and streams each through the rewriter once, hashing
// both sides: the original against the index (a corrupt local copy is not
// sent), the output for the request's Content-Length and for verifying
// what the peer stored.
//
// Each instance also gets an Original Attributes Sequence item naming
// system (this centre) as the modifier, with its original identity: the
// receiver learns and audits the mapping. Its modification time is when
// this gateway stored the instance, not the time of sending: the coerced
// bytes of an instance must be the same in every attempt and every later
// transfer to the same destination, or a resumed transfer's verification
// and a resend would find different bytes under the same SOP Instance UID.
func (c *Coercer) plan(ctx context.Context, key, peer string, rule CoerceRule, recs []*InstanceRecord, system string) (*plan, error) {
	p := &plan{edits: map[string]dicomcodec.IdentityEdit{}, out: map[string]*InstanceRecord{}}
	var ids map[string]string
	if rule.To == CoerceLocal {
		var err error
		if ids, err = c.lookup(key); err != nil {
			return nil, err // temporary: the admin fixes the file
		}
	}
	for _, rec := range recs {
		e, err := c.edit(key, peer, rule, ids, rec)
		if err != nil {
			return nil, err
		}
		e.ModifyingSystem, e.ModifiedAt = system, rec.StoredAt.UTC().Format("20060102150405")+"+0000"
		p.edits[rec.SOPInstanceUID] = e
		i := slices.IndexFunc(p.changes, func(ch identityChange) bool {
			return ch.BeforeID == e.ExpectPatientID && ch.AfterID == e.PatientID
		})
		if i < 0 {
			p.changes = append(p.changes, identityChange{BeforeID: e.ExpectPatientID, BeforeIssuer: strings.TrimSpace(rec.Metadata.String(TagIssuerOfPatientID)), AfterID: e.PatientID, AfterIssuer: e.Issuer})
			i = len(p.changes) - 1
		}
		p.changes[i].Instances++
	}
	for _, rec := range recs {
		rc, err := c.Blobs.Get(ctx, rec.Key(), 0, -1)
		if err != nil {
			return nil, fmt.Errorf("reading instance %s for identity coercion: %w", rec.SOPInstanceUID, err)
		}
		orig, sent := sha256.New(), sha256.New()
		n, err := dicomcodec.RewriteIdentity(sent, io.TeeReader(rc, orig), p.edits[rec.SOPInstanceUID])
		cerr := rc.Close()
		if refusedByCodec(err) {
			return nil, fmt.Errorf("%w: instance %s: %v", errRefused, rec.SOPInstanceUID, err)
		}
		if err = errors.Join(err, cerr); err != nil {
			return nil, fmt.Errorf("reading instance %s for identity coercion: %w", rec.SOPInstanceUID, err)
		}
		if rec.SHA256 != "" && hex.EncodeToString(orig.Sum(nil)) != rec.SHA256 {
			return nil, fmt.Errorf("%w: local copy of instance %s is corrupt (SHA-256 differs from the index)", errRefused, rec.SOPInstanceUID)
		}
		out := *rec
		out.Size, out.SHA256 = n, hex.EncodeToString(sent.Sum(nil))
		p.out[rec.SOPInstanceUID] = &out
	}
	return p, nil
}

// outbound returns recs as they will be sent.
func (p *plan) outbound(recs []*InstanceRecord) []*InstanceRecord {
	out := make([]*InstanceRecord, len(recs))
	for i, r := range recs {
		out[i] = p.out[r.SOPInstanceUID]
	}
	return out
}

// rewrite is the SendHeader.Rewrite of the plan: the instance's stored
// bytes through RewriteIdentity, on a pipe whose writer ends when the
// returned reader is closed.
func (p *plan) rewrite(rec *InstanceRecord, original io.ReadCloser) io.ReadCloser {
	e, ok := p.edits[rec.SOPInstanceUID]
	if !ok {
		original.Close()
		return io.NopCloser(errReader{fmt.Errorf("instance %s has no identity decision: not sent", rec.SOPInstanceUID)})
	}
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := dicomcodec.RewriteIdentity(pw, original, e)
		pw.CloseWithError(errors.Join(err, original.Close()))
	}()
	return &pipeReadCloser{PipeReader: pr, done: done}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// pipeReadCloser waits for its writer goroutine on Close.
type pipeReadCloser struct {
	*io.PipeReader
	done chan struct{}
}

func (p *pipeReadCloser) Close() error {
	err := p.PipeReader.Close()
	<-p.done
	return err
}

// coerce is the transfer's hook: for a peer with an identity rule it plans
// the rewrite of recs, swaps recs and pending for their outbound records
// (sizes and SHA-256 of what is sent, so verification checks what the peer
// received), sets h.Rewrite and audits the mapping. A rule the instances
// cannot meet fails the transfer for good with the reason; nil means send.
func (s *Transfers) coerce(ctx context.Context, t *Transfer, peer Peer, recs, pending *[]*InstanceRecord, h *SendHeader) *attemptResult {
	if s.Coercer == nil {
		return nil
	}
	key, rule, ok := s.Coercer.ruleFor(t, peer.Name)
	if !ok {
		return nil
	}
	p, err := s.Coercer.plan(ctx, key, peer.Name, rule, *recs, s.Name)
	if errors.Is(err, errRefused) {
		return &attemptResult{permanent: err}
	}
	if err != nil {
		return &attemptResult{temporary: err}
	}
	*recs, *pending = p.outbound(*recs), p.outbound(*pending)
	h.Rewrite = p.rewrite
	if len(*pending) > 0 && s.Auditor != nil {
		ids := []string{}
		for _, ch := range p.changes {
			for _, id := range []string{ch.BeforeID, ch.AfterID} {
				if id != "" && !slices.Contains(ids, id) {
					ids = append(ids, id)
				}
			}
		}
		ev := &AuditEvent{Time: s.now(), Gateway: s.Name, Actor: workerPrincipal, Action: ActionTransferCoerced,
			Outcome: OutcomeSuccess, StudyUIDs: []string{t.StudyUID}, PatientIDs: ids,
			Detail: map[string]any{"transfer_id": t.ID, "destination": peer.Name, "rule": key, "to": rule.To,
				"changes": p.changes, "instances": len(*pending)}}
		if err := auditDetached(ctx, s.Auditor, ev); err != nil {
			return &attemptResult{temporary: fmt.Errorf("identity coercion could not be audited, nothing sent: %w", err)}
		}
	}
	return nil
}

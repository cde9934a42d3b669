package gateway

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"math/big"
	"slices"
	"strings"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// ActionTransferDeidentified records that a transfer sent a study
// de-identified, with the profile, its options and the study's UID
// mapping.
const ActionTransferDeidentified = "transfer.deidentified"

// ProfileBasic is the PS3.15 Annex E Basic Application Level
// Confidentiality Profile, the one profile peers[].deidentify.profile
// names.
const ProfileBasic = "basic"

// DeidentifyRule is peers[].deidentify in the --config YAML: instances sent
// to the peer leave with the profile applied (dicomcodec.Deidentify) and
// their UIDs replaced by a keyed mapping.
type DeidentifyRule struct {
	Profile string `yaml:"profile" json:"profile"`
	// RetainLongitudinalTemporal keeps dates and times (Retain
	// Longitudinal Temporal Information with Full Dates Option).
	RetainLongitudinalTemporal bool `yaml:"retain_longitudinal_temporal" json:"retain_longitudinal_temporal"`
	// RetainPatientCharacteristics keeps sex, age, size, weight, smoking
	// and pregnancy status and the like.
	RetainPatientCharacteristics bool `yaml:"retain_patient_characteristics" json:"retain_patient_characteristics"`
}

// MinDeidentifyKeyBytes is the shortest UID mapping key accepted.
const MinDeidentifyKeyBytes = 32

// Deidentifier applies the peers' de-identification rules to outgoing
// transfers. UIDs are mapped with HMAC-SHA-256 under a secret key: the
// same source UID sent to the same peer always becomes the same UID, so a
// study sent again is a duplicate at the destination and references
// between its instances stay coherent, while nobody without the key can
// recompute the mapping (an unkeyed hash of a UID is reversed by hashing
// the UIDs one suspects, which are far from secret). Build it with
// NewDeidentifier.
type Deidentifier struct {
	Blobs BlobStore
	key   []byte
	rules map[string]DeidentifyRule // by peer name
}

// NewDeidentifier checks the deidentify rules of peers. key is the UID
// mapping key (--deidentify-key-file); a rule without one is refused, as
// is a peer with both coerce and deidentify (de-identification removes the
// identity coercion would choose).
func NewDeidentifier(peers []Peer, key []byte, blobs BlobStore) (*Deidentifier, error) {
	d := &Deidentifier{Blobs: blobs, key: key, rules: map[string]DeidentifyRule{}}
	for _, p := range peers {
		if p.Deidentify == nil {
			continue
		}
		if p.Deidentify.Profile != ProfileBasic {
			return nil, fmt.Errorf("peer %s: deidentify.profile %q: want basic", p.Name, p.Deidentify.Profile)
		}
		if p.Coerce != nil {
			return nil, fmt.Errorf("peer %s: coerce and deidentify exclude each other: de-identification removes the patient identity", p.Name)
		}
		if len(key) < MinDeidentifyKeyBytes {
			return nil, fmt.Errorf("peer %s: deidentify needs --deidentify-key-file (at least %d bytes in hex, e.g. openssl rand -hex 32): the UID mapping is keyed", p.Name, MinDeidentifyKeyBytes)
		}
		d.rules[p.Name] = *p.Deidentify
	}
	return d, nil
}

// ParseDeidentifyKey reads a key file: the key in hex on its first
// non-comment line. Errors never echo the key.
func ParseDeidentifyKey(r io.Reader) ([]byte, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		key, err := hex.DecodeString(line)
		if err != nil || len(key) < MinDeidentifyKeyBytes {
			return nil, fmt.Errorf("de-identification key must be at least %d bytes in hex (openssl rand -hex 32): %w", MinDeidentifyKeyBytes, ErrInvalid)
		}
		return key, nil
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("de-identification key file holds no key: %w", ErrInvalid)
}

// MapUID returns the UID that uid becomes at peer: "2.25." and the
// decimal of 128 bits of HMAC-SHA-256(key, peer, uid), shaped as an RFC
// 9562 version 8 UUID. Distinct peers get unrelated UIDs, so two
// recipients cannot link their copies by UID.
//
// A UID the standard registers (dicomcodec.IsWellKnownUID: a color palette
// stored as an instance, say) is returned as it is, as the profile keeps
// it wherever it occurs.
func (d *Deidentifier) MapUID(peer, uid string) string {
	if dicomcodec.IsWellKnownUID(uid) {
		return uid
	}
	m := hmac.New(sha256.New, d.key)
	m.Write([]byte("dicom-gateway uid\x00" + peer + "\x00" + uid))
	sum := m.Sum(nil)[:16]
	sum[6] = sum[6]&0x0F | 0x80
	sum[8] = sum[8]&0x3F | 0x80
	return "2.25." + new(big.Int).SetBytes(sum).String()
}

// MapPatientID returns the pseudonym a patient, Patient ID id under Issuer
// of Patient ID issuer, gets at peer: "ANON-" and 96 bits of
// HMAC-SHA-256(key, peer, issuer, id) in hex. One patient's studies stay
// one patient at the peer (a viewer's priors are that patient's); two
// patients, whether their IDs or their issuers differ, stay two; and
// without the key nobody can recompute it: a Patient ID, an NHS number
// above all, is guessed by hashing every candidate.
func (d *Deidentifier) MapPatientID(peer, issuer, id string) string {
	m := hmac.New(sha256.New, d.key)
	m.Write([]byte("dicom-gateway patient\x00" + peer + "\x00" + issuer + "\x00" + id))
	return "ANON-" + strings.ToUpper(hex.EncodeToString(m.Sum(nil)[:12]))
}

// patientOf returns the Patient ID and Issuer of Patient ID of rec as the
// index holds them (decoded from the instance's character set, trimmed; a
// Patient ID of several values joined by a backslash, as it is encoded).
func patientOf(rec *InstanceRecord) (issuer, id string) {
	var ids []string
	for _, v := range rec.Metadata[dicomcodec.TagPatientID].Value {
		s, _ := v.(string) // an empty value is nil
		ids = append(ids, s)
	}
	return strings.TrimSpace(rec.Metadata.String(TagIssuerOfPatientID)), joinTrimmed(ids)
}

// joinTrimmed joins the values of a multi-valued string, each trimmed, with
// backslashes: the one form of a Patient ID that the index and the wire
// both give.
func joinTrimmed(vals []string) string {
	out := make([]string, len(vals))
	for i, v := range vals {
		out[i] = strings.TrimSpace(v)
	}
	return strings.Join(out, `\`)
}

// options returns the profile options for rec sent to peer. The Patient
// ID of rec becomes the pseudonym of rec's patient as the index holds it,
// the one the audit records, whatever character set the instance encodes
// it in. Another Patient ID inside a sequence, which comes without its
// issuer, becomes the pseudonym of its value alone; a non-ASCII value
// cannot be told from the instance's own (the codec sees bytes, the index
// text) and is taken as its own.
func (d *Deidentifier) options(peer string, rule DeidentifyRule, rec *InstanceRecord) dicomcodec.DeidentifyOptions {
	issuer, id := patientOf(rec)
	own := d.MapPatientID(peer, issuer, id)
	return dicomcodec.DeidentifyOptions{
		RetainFullDates:              rule.RetainLongitudinalTemporal,
		RetainPatientCharacteristics: rule.RetainPatientCharacteristics,
		MapUID:                       func(uid string) string { return d.MapUID(peer, uid) },
		MapPatientID: func(raw string) string {
			if raw = joinTrimmed(strings.Split(raw, `\`)); id != "" && (raw == id || !isASCII(raw)) {
				return own
			}
			return d.MapPatientID(peer, "", raw)
		},
	}
}

func isASCII(s string) bool {
	for i := range len(s) {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// uidView translates between the UIDs this gateway holds and those a
// de-identified destination holds. Its zero value (no de-identification)
// translates nothing.
type uidView struct {
	study  string            // the study's UID at the destination
	source map[string]string // destination SOP Instance UID → ours
}

func (v *uidView) studyUID(ours string) string {
	if v == nil || v.study == "" {
		return ours
	}
	return v.study
}

func (v *uidView) sourceUID(theirs string) string {
	if v == nil {
		return theirs
	}
	if s, ok := v.source[theirs]; ok {
		return s
	}
	return theirs
}

func (v *uidView) sourceUIDs(theirs []string) []string {
	out := make([]string, len(theirs))
	for i, u := range theirs {
		out[i] = v.sourceUID(u)
	}
	return out
}

// sourceResults returns res with the SOP Instance UIDs this gateway holds:
// progress is recorded under them, so a resumed transfer skips what was
// confirmed whatever the destination calls it.
func (v *uidView) sourceResults(res []SendResult) []SendResult {
	if v == nil {
		return res
	}
	out := make([]SendResult, len(res))
	for i, r := range res {
		r.SOPInstanceUID = v.sourceUID(r.SOPInstanceUID)
		out[i] = r
	}
	return out
}

// deidPlan is a transfer's instances as the destination receives them.
type deidPlan struct {
	opts     map[string]dicomcodec.DeidentifyOptions // by destination SOP Instance UID
	out      map[string]*InstanceRecord              // by our SOP Instance UID
	stored   map[string]string                       // destination SOP Instance UID → our blob key
	view     *uidView
	studyMap map[string]string
	// withheld are the instances the profile cannot be applied to
	// (burned-in text, a syntax or encoding the rewriter cannot read):
	// refusals of this gateway's own, under our UIDs.
	withheld []SendResult
	// pseudonyms are the patients the plan names, for the audit.
	pseudonyms []patientPseudonym
	// unknown are the attributes removed because the dictionary does not
	// know them, as "(gggg,eeee)", for the audit.
	unknown map[string]bool
}

// patientPseudonym is one patient of a de-identified transfer and the
// pseudonym the peer knows it by (transfer.deidentified's
// patient_pseudonyms).
type patientPseudonym struct {
	Issuer    string `json:"issuer,omitempty"`
	PatientID string `json:"patient_id"`
	Pseudonym string `json:"pseudonym"`
}

// withheldReason starts the reason of an instance this gateway refused to
// send, so that it reads apart from a destination's refusal.
const withheldReason = "withheld by this gateway, not sent: "

// plan maps every instance's UIDs and streams each through the profile
// once, hashing both sides: the original against the index (a corrupt
// local copy is not sent), the output for the request's Content-Length and
// for verifying what the peer stored.
func (d *Deidentifier) plan(ctx context.Context, peer string, rule DeidentifyRule, recs []*InstanceRecord) (*deidPlan, error) {
	p := &deidPlan{opts: map[string]dicomcodec.DeidentifyOptions{}, out: map[string]*InstanceRecord{}, stored: map[string]string{},
		view: &uidView{source: map[string]string{}}, studyMap: map[string]string{}, unknown: map[string]bool{}}
	removedUnknown := func(tag uint32) { p.unknown[fmt.Sprintf("(%04X,%04X)", tag>>16, tag&0xFFFF)] = true }
	for _, rec := range recs {
		if issuer, id := patientOf(rec); id != "" {
			pp := patientPseudonym{Issuer: issuer, PatientID: id, Pseudonym: d.MapPatientID(peer, issuer, id)}
			if !slices.Contains(p.pseudonyms, pp) {
				p.pseudonyms = append(p.pseudonyms, pp)
			}
		}
		out := *rec
		out.StudyInstanceUID = d.MapUID(peer, rec.StudyInstanceUID)
		out.SeriesInstanceUID = d.MapUID(peer, rec.SeriesInstanceUID)
		out.SOPInstanceUID = d.MapUID(peer, rec.SOPInstanceUID)
		out.Metadata = nil // the identifying header stays here
		p.view.study = out.StudyInstanceUID
		p.view.source[out.SOPInstanceUID] = rec.SOPInstanceUID
		p.stored[out.SOPInstanceUID] = rec.Key()
		p.studyMap[rec.StudyInstanceUID] = out.StudyInstanceUID

		rc, err := d.Blobs.Get(ctx, rec.Key(), 0, -1)
		if err != nil {
			return nil, fmt.Errorf("reading instance %s for de-identification: %w", rec.SOPInstanceUID, err)
		}
		opts := d.options(peer, rule, rec)
		p.opts[out.SOPInstanceUID] = opts // for the send, which only writes
		opts.RemovedUnknown = removedUnknown
		orig, sent := sha256.New(), sha256.New()
		n, err := dicomcodec.Deidentify(sent, io.TeeReader(rc, orig), opts)
		if refusal := err; refusedByCodec(refusal) {
			// The rest of the blob is hashed too: a copy that differs from
			// its index entry is corrupt, not an instance to withhold.
			_, err = io.Copy(orig, rc)
			if cerr := rc.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return nil, fmt.Errorf("reading instance %s for de-identification: %w", rec.SOPInstanceUID, err)
			}
			if err := checkLocalCopy(rec, orig); err != nil {
				return nil, err
			}
			// This instance cannot leave de-identified; the rest of the
			// study can, and the transfer then fails naming it.
			p.withheld = append(p.withheld, SendResult{SOPInstanceUID: rec.SOPInstanceUID, Reason: withheldReason + refusal.Error()})
			continue
		}
		cerr := rc.Close()
		if err = errors.Join(err, cerr); err != nil {
			return nil, fmt.Errorf("reading instance %s for de-identification: %w", rec.SOPInstanceUID, err)
		}
		if err := checkLocalCopy(rec, orig); err != nil {
			return nil, err
		}
		out.Size, out.SHA256 = n, hex.EncodeToString(sent.Sum(nil))
		p.out[rec.SOPInstanceUID] = &out
	}
	return p, nil
}

// checkLocalCopy refuses, for good, a local copy whose SHA-256 (orig, of
// every byte read) differs from its index entry: it is corrupt, and is
// never sent.
func checkLocalCopy(rec *InstanceRecord, orig hash.Hash) error {
	if rec.SHA256 != "" && hex.EncodeToString(orig.Sum(nil)) != rec.SHA256 {
		return fmt.Errorf("%w: local copy of instance %s is corrupt (SHA-256 differs from the index)", errRefused, rec.SOPInstanceUID)
	}
	return nil
}

// outbound returns the records of recs as the destination receives them,
// without the withheld instances.
func (p *deidPlan) outbound(recs []*InstanceRecord) []*InstanceRecord {
	out := make([]*InstanceRecord, 0, len(recs))
	for _, r := range recs {
		if o, ok := p.out[r.SOPInstanceUID]; ok {
			out = append(out, o)
		}
	}
	return out
}

// withheldOf returns the withheld instances among recs.
func (p *deidPlan) withheldOf(recs []*InstanceRecord) []SendResult {
	var out []SendResult
	for _, w := range p.withheld {
		if slices.ContainsFunc(recs, func(r *InstanceRecord) bool { return r.SOPInstanceUID == w.SOPInstanceUID }) {
			out = append(out, w)
		}
	}
	return out
}

// rewrite is the SendHeader.Rewrite of the plan.
func (p *deidPlan) rewrite(rec *InstanceRecord, original io.ReadCloser) io.ReadCloser {
	opts := p.opts[rec.SOPInstanceUID] // rec is the outbound record
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := dicomcodec.Deidentify(pw, original, opts)
		pw.CloseWithError(errors.Join(err, original.Close()))
	}()
	return &pipeReadCloser{PipeReader: pr, done: done}
}

// deidentify is the transfer's hook: for a peer with a deidentify rule it
// plans the de-identification of recs, swaps recs and pending for their
// outbound records (the destination's UIDs, the size and SHA-256 of what is
// sent), sets h.Rewrite and h.BlobKey, audits the mapping, and returns the
// view that translates the destination's answers back to our UIDs. An
// instance the profile cannot be applied to is withheld: it is returned as
// a refusal of pending, the rest of the study is sent, and the transfer
// then fails naming it. A local copy that differs from its index entry
// fails the transfer for good.
func (s *Transfers) deidentify(ctx context.Context, t *Transfer, peer Peer, recs, pending *[]*InstanceRecord, h *SendHeader) (*uidView, []SendResult, *attemptResult) {
	if s.Deidentifier == nil {
		return nil, nil, nil
	}
	rule, ok := s.Deidentifier.rules[peer.Name]
	if !ok {
		return nil, nil, nil
	}
	p, err := s.Deidentifier.plan(ctx, peer.Name, rule, *recs)
	if errors.Is(err, errRefused) {
		return nil, nil, &attemptResult{permanent: err}
	}
	if err != nil {
		return nil, nil, &attemptResult{temporary: err}
	}
	withheld := p.withheldOf(*pending)
	*recs, *pending = p.outbound(*recs), p.outbound(*pending)
	h.Total = len(*recs)
	h.Rewrite = p.rewrite
	h.BlobKey = func(rec *InstanceRecord) string {
		if k, ok := p.stored[rec.SOPInstanceUID]; ok {
			return k
		}
		return rec.Key()
	}
	if len(*pending) > 0 && s.Auditor != nil {
		ev := &AuditEvent{Time: s.now(), Gateway: s.Name, Actor: workerPrincipal, Action: ActionTransferDeidentified,
			Outcome: OutcomeSuccess, StudyUIDs: []string{t.StudyUID, p.view.studyUID(t.StudyUID)}, PatientIDs: s.studyPatientIDs(ctx, t.StudyUID),
			Detail: map[string]any{"transfer_id": t.ID, "destination": peer.Name, "profile": rule.Profile,
				"retain_longitudinal_temporal": rule.RetainLongitudinalTemporal, "retain_patient_characteristics": rule.RetainPatientCharacteristics,
				"study_uid_mapping": p.studyMap, "patient_pseudonyms": p.pseudonyms, "instances": len(*pending)}}
		if len(p.unknown) > 0 {
			unknown := slices.Sorted(maps.Keys(p.unknown))
			ev.Detail["unknown_attributes_removed"] = unknown
			s.logger().WarnContext(ctx, "de-identification removed attributes the dictionary does not know",
				LogKeyTransferID, t.ID, LogKeyPeer, peer.Name, "tags", strings.Join(unknown, " "))
		}
		if err := auditDetached(ctx, s.Auditor, ev); err != nil {
			return nil, nil, &attemptResult{temporary: fmt.Errorf("de-identification could not be audited, nothing sent: %w", err)}
		}
	}
	return p.view, withheld, nil
}

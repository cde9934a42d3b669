package gateway

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// A study's attributes are its latest instance's, and its identity
// conflict flag only grows as instances arrive (identity_conflict.go). A
// delete undoes neither by itself: after the instances of a misfiled
// patient are deleted (the usual correction), the study would still be
// flagged, still listed under that patient's ID, and still shown with that
// patient's name when theirs was the latest instance. restateStudy makes a
// flagged study's index entry true again of the instances left, and an
// unflagged one show its latest instance left when the one it showed was
// deleted.

// ActionIdentityRestated records that a delete changed the patient
// identities a flagged study is listed under (identity.conflict recorded
// their arrival).
const ActionIdentityRestated = "identity.restated"

// restateRounds bounds how often restateStudy starts again when instances
// arrive in the study while it works.
const restateRounds = 3

// IdentityRestatement is what restateStudy changed: the identities the
// study was listed under before and after.
type IdentityRestatement struct {
	Before, After []PatientIdentity
}

// Changed reports whether the study is listed under other identities now,
// or shown as another patient's.
func (r *IdentityRestatement) Changed() bool {
	if r == nil {
		return false
	}
	if len(r.Before) != len(r.After) || r.Before[0] != r.After[0] {
		return true
	}
	for _, p := range r.Before {
		if !slices.Contains(r.After, p) {
			return true
		}
	}
	return false
}

// restateStudy rewrites the index entry of the latest instance left in a
// study flagged for an identity conflict, so that the study's attributes
// are that instance's and its flag names exactly the other identities its
// instances hold (none: the flag is dropped), in the order they arrived.
// An unflagged study is restateShown's, and a study no longer indexed is
// left as it is. The rewrite is made under the instance's lease and only
// if the instance is unchanged.
//
// Instances may arrive while it works. An identity the study's entry names
// that it did not name before (an arrival indexed before the rewrite) is
// kept in the flag; an arrival indexed between the listing and the rewrite
// shows in a second listing, and the study is restated again. When
// arrivals keep coming, a last rewrite keeps every identity the entry
// names then (nothing more is dropped) and an error says so. An arrival
// that read the study's entry before the rewrite is refused by the index
// and checked again (Ingester.indexNew). It returns what the last rewrite made
// of the study, nil when nothing was rewritten, with any error.
//
// Other instances' records keep the flag they were indexed with: it is what
// the study held when they arrived; an instance's search result shows the
// study's current flag instead (instanceRow), and a later restatement
// computes the flag from the instances' identities, not from their flags.
func (d *Deleter) restateStudy(ctx context.Context, studyUID string, deleted []*InstanceRecord) (*IdentityRestatement, error) {
	held, err := studyEntry(ctx, d.Index, studyUID)
	if err != nil || held == nil {
		return nil, err
	}
	if _, flagged := IdentityConflicts(held); !flagged {
		return d.restateShown(ctx, studyUID, held, deleted)
	}
	before := listedIdentities(held)
	var written *InstanceRecord
	result := func() *IdentityRestatement {
		if written == nil {
			return nil
		}
		return &IdentityRestatement{Before: before, After: listedIdentities(written.Metadata)}
	}
	for round := range restateRounds {
		failSafe := round == restateRounds-1
		recs, err := d.Index.ListInstances(ctx, studyUID, "")
		if errors.Is(err, ErrNotFound) {
			return result(), nil
		}
		if err != nil {
			return result(), err
		}
		cur, err := studyEntry(ctx, d.Index, studyUID)
		if err != nil || cur == nil {
			return result(), err
		}
		keep := listedIdentities(cur)
		if !failSafe {
			keep = slices.DeleteFunc(keep, func(p PatientIdentity) bool { return slices.Contains(before, p) })
		}
		latest := restatedLatest(recs, keep, namesOf(cur))
		ok, err := d.rewriteUnchanged(ctx, latest, nil)
		if err != nil {
			return result(), err
		}
		if ok {
			written = latest
		}
		if failSafe {
			break
		}
		after, err := d.Index.ListInstances(ctx, studyUID, "")
		if err != nil && !errors.Is(err, ErrNotFound) {
			return result(), err
		}
		if ok && sameInstances(recs, after) {
			return result(), nil
		}
	}
	return result(), fmt.Errorf("study %s: instances kept arriving while its identities were restated; its flag keeps every identity its entry named: %w", studyUID, ErrUnavailable)
}

// restateShown makes an unflagged study, held, show an instance left when
// the one it showed is among those deleted: before, a wrong accession
// number or description deleted with its instance still showed, and still
// found the study. The study shows the study-level attributes of the
// instance written last, which stored times need not order (concurrent
// uploads, clocks of two replicas, reindex), so the instance shown is
// told by its attributes (showsAttributes): when no instance deleted looks
// like it, nothing is read; when an instance left looks exactly like it,
// nothing is written. Otherwise the latest instance left is rewritten
// (restatedLatest: flagged if the instances left hold two patients, as a
// study indexed before the identity check and the write were one could),
// and only while the study still lists the patients it listed when read
// (IdentityCheckedIndex): a refusal means another patient's instance was
// indexed since, which shows itself, so it is left at that. A
// same-patient instance indexed while this runs can be left unshown (an
// older one of that patient shown instead) until the study's next
// arrival. deleted are the records the delete planned: an instance
// replaced between the plan and its removal (DuplicateReplace, test-only)
// may leave the study showing it. Without a checked index nothing is
// rewritten.
func (d *Deleter) restateShown(ctx context.Context, studyUID string, held dicomcodec.Dataset, deleted []*InstanceRecord) (*IdentityRestatement, error) {
	checked, ok := d.Index.(IdentityCheckedIndex)
	looksShown := func(r *InstanceRecord) bool { return showsAttributes(held, r.Metadata) }
	if !ok || !slices.ContainsFunc(deleted, looksShown) {
		return nil, nil
	}
	recs, err := d.Index.ListInstances(ctx, studyUID, "")
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil || slices.ContainsFunc(recs, looksShown) {
		return nil, err
	}
	latest := restatedLatest(recs, nil, namesOf(held))
	written, err := d.rewriteUnchanged(ctx, latest, func(rec *InstanceRecord) error {
		return checked.ReplaceInstanceChecked(ctx, rec, StudyIdentitySet(held))
	})
	switch {
	case errors.Is(err, ErrStudyIdentitiesChanged):
		return nil, nil
	case err != nil || !written: // not written: the instance was replaced, moved or deleted since it was listed
		return nil, err
	}
	return &IdentityRestatement{Before: listedIdentities(held), After: listedIdentities(latest.Metadata)}, nil
}

// showsAttributes reports whether a study's entry, held, shows the
// study-level attributes of an instance's metadata md, the gateway's
// private block apart: md's instance is, or looks exactly like, the one
// the study shows. An attribute absent and one without a value are alike.
func showsAttributes(held, md dicomcodec.Dataset) bool {
	for tag := range studyLevelTags {
		if slices.Contains(gatewayBlockTags, tag) {
			continue
		}
		a, b := held[tag], md[tag]
		if (len(a.Value) > 0 || len(b.Value) > 0) && !reflect.DeepEqual(a.Value, b.Value) {
			return false
		}
	}
	return true
}

// studyEntry is the study's own index entry (no other patient's view), or
// nil when it is not indexed.
func studyEntry(ctx context.Context, x Index, studyUID string) (dicomcodec.Dataset, error) {
	res, err := x.Search(ctx, &Query{Level: LevelStudy, StudyInstanceUID: studyUID, Limit: 1, IncludeAll: true})
	if err != nil {
		return nil, err
	}
	if len(res.Items) == 0 {
		return nil, nil
	}
	return res.Items[0], nil
}

// listedIdentities are the identities a study or instance entry names: its
// own, then the flag's others.
func listedIdentities(d dicomcodec.Dataset) []PatientIdentity {
	id, issuer := patientIdentity(d)
	others, _ := IdentityConflicts(d)
	return append([]PatientIdentity{{id, issuer}}, others...)
}

// restatedLatest is the record of recs' latest instance (by StoredAt, then
// SOP Instance UID) flagged with the other identities recs hold, in the
// order they arrived, then those of keep they do not hold, or without a
// flag when there are none; with the names of the patients, as their
// latest instance gives them (for keep: keepNames). recs is not changed.
func restatedLatest(recs []*InstanceRecord, keep []PatientIdentity, keepNames identityNames) *InstanceRecord {
	arrived := byArrival(recs)
	latest := *arrived[len(arrived)-1]
	id, issuer := patientIdentity(latest.Metadata)
	own := PatientIdentity{id, issuer}
	held, names := identitiesByArrival(recs, "")
	var others []PatientIdentity
	for _, p := range append(held, keep...) {
		if p != own && !slices.Contains(others, p) {
			others = append(others, p)
		}
		if _, known := names[p]; !known {
			if name, ok := keepNames[p]; ok {
				names[p] = name
			}
		}
	}
	latest.Metadata = withoutForeignFlag(latest.Metadata) // drops this gateway's flag, creator and names too
	if len(others) > 0 {
		setFlag(&latest, others, names)
	}
	return &latest
}

// identitiesByArrival are the patient identities recs hold, once each, in
// the order they arrived, with each patient's name as their latest
// instance gives it; the instance skip (a SOP Instance UID, or "") is left
// out.
func identitiesByArrival(recs []*InstanceRecord, skip string) ([]PatientIdentity, identityNames) {
	var ids []PatientIdentity
	names := identityNames{}
	for _, r := range byArrival(recs) {
		if r.SOPInstanceUID == skip {
			continue
		}
		id, issuer := patientIdentity(r.Metadata)
		if p := (PatientIdentity{id, issuer}); !slices.Contains(ids, p) {
			ids = append(ids, p)
		}
		names.addName(r.Metadata)
	}
	return ids, names
}

// byArrival is a copy of recs in the order the instances arrived (StoredAt,
// then SOP Instance UID).
func byArrival(recs []*InstanceRecord) []*InstanceRecord {
	out := slices.Clone(recs)
	slices.SortStableFunc(out, func(a, b *InstanceRecord) int {
		return cmp.Or(a.StoredAt.Compare(b.StoredAt), cmp.Compare(a.SOPInstanceUID, b.SOPInstanceUID))
	})
	return out
}

// rewriteUnchanged writes rec over its index entry with replace
// (ReplaceInstance when nil), under the instance's lease, if the entry
// still holds the same bytes in the same study; false when it changed
// (replaced, moved or deleted meanwhile).
func (d *Deleter) rewriteUnchanged(ctx context.Context, rec *InstanceRecord, replace func(*InstanceRecord) error) (bool, error) {
	unlock, err := d.Index.Lock(ctx, rec.SOPInstanceUID, deleteLockTTL)
	if err != nil {
		return false, fmt.Errorf("instance %s: lock: %w", rec.SOPInstanceUID, err)
	}
	defer unlock()
	cur, err := d.Index.GetInstance(ctx, rec.SOPInstanceUID)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if cur.SHA256 != rec.SHA256 || cur.Size != rec.Size || cur.StudyInstanceUID != rec.StudyInstanceUID || !cur.StoredAt.Equal(rec.StoredAt) {
		return false, nil
	}
	if replace == nil {
		return true, d.Index.ReplaceInstance(ctx, rec)
	}
	if err := replace(rec); err != nil {
		return false, err
	}
	return true, nil
}

// sameInstances reports whether a and b list the same instances with the
// same content.
func sameInstances(a, b []*InstanceRecord) bool {
	key := func(recs []*InstanceRecord) map[string]string {
		m := make(map[string]string, len(recs))
		for _, r := range recs {
			m[r.SOPInstanceUID] = r.SHA256
		}
		return m
	}
	return maps.Equal(key(a), key(b))
}

// auditRestatement records ActionIdentityRestated for a study whose listed
// identities r changed, marked incomplete with the error when the
// restatement gave up after that rewrite (failure): a failure to write it
// is logged, never returned (the delete is done and audited).
func (s *DeleteService) auditRestatement(ctx context.Context, caller Caller, studyUID string, r *IdentityRestatement, failure error) {
	if !r.Changed() || s.audit.auditor == nil {
		return
	}
	var ids []string
	pairs := func(ps []PatientIdentity) []map[string]string {
		out := make([]map[string]string, 0, len(ps))
		for _, p := range ps {
			out = append(out, map[string]string{"patient_id": p.ID, "issuer": p.Issuer})
			ids = appendNewIDs(ids, p.ID)
		}
		return out
	}
	ev := s.audit.event(caller, ActionIdentityRestated, OutcomeSuccess)
	ev.StudyUIDs = []string{studyUID}
	ev.Detail = map[string]any{
		"listed_before": pairs(r.Before), "listed_after": pairs(r.After), "flagged": len(r.After) > 1,
		"description": "instances deleted: the study is listed under the patient identities its instances still hold",
		"complete":    failure == nil,
	}
	if failure != nil {
		ev.Detail["error"] = failure.Error() // UIDs only
	}
	ev.PatientIDs = ids
	if err := auditDetached(ctx, s.audit.auditor, ev); err != nil {
		s.audit.logger.ErrorContext(ctx, "identity restatement not audited", LogKeyStudyUID, studyUID, LogKeyError, err.Error())
	}
}

package gateway

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// A study must never silently merge two patients. When an instance arrives
// for a study this gateway already holds under another patient identity
// (same Study Instance UID, different Patient ID or Issuer of Patient ID),
// it is still stored unchanged (its bytes are evidence), but its index entry
// carries a flag, in a private block of this gateway, that QIDO-RS returns
// with the study, the admin page shows, and the HTTP layer turns into a
// Warning; the conflict is audited with both identities. Every instance
// stored later in a flagged study inherits the flag, so the study stays
// flagged whichever instance is the latest (the study-level attributes are
// the latest instance's); an instance that replaces an indexed one
// (DuplicateReplace) is flagged from the study's other instances instead
// (checkReplacement). A delete in a flagged study restates it from the
// instances left (identity_restate.go).

// TagOriginalAttributesSequence records modified attributes' earlier
// values (PS3.3 C.12.1.1.9).
const TagOriginalAttributesSequence = "04000561"

// Tags of the identity conflict flag: the private creator of block
// (0009,10xx), the flag itself (LO, values: IdentityConflictValue, then
// the Patient ID and Issuer of Patient ID of each other identity the study
// holds, up to maxConflictIdentities) and the names of those identities.
// The three travel together (gatewayBlockTags).
const (
	TagGatewayPrivateCreator = "00090010"
	TagIdentityConflict      = "00091001"
	// TagIdentityConflictNames (PN) holds the Patient Name of each other
	// identity the flag names, in the flag's order (an empty value where
	// none is known; absent when none is), so that a search by that
	// patient's name finds the study as theirs (otherIdentityViews,
	// StudyPatientNames).
	TagIdentityConflictNames = "00091002"
	GatewayPrivateCreator    = "DICOM GATEWAY"
	IdentityConflictValue    = "IDENTITY CONFLICT"
	ActionIdentityConflict   = "identity.conflict"
	// ActionIdentityReceived records, at the receiving gateway, an
	// instance whose sender coerced its patient identity: before and after.
	ActionIdentityReceived = "identity.received"
)

// IdentityCheckedIndex is implemented by indexes that can make the write of
// a new instance conditional on the patient identities its study lists:
// both backends do. PutInstanceChecked is PutInstance, except that when
// the study's StudyIdentitySet is not studyIdentities (what the caller's
// identity check read; "" for a study not indexed yet) it writes nothing
// and returns ErrStudyIdentitiesChanged, unless the study lists exactly
// OwnIdentitySet(rec) (the check would have found what rec says). The
// comparison and the write are one transaction, so of two instances of
// two patients arriving in one study at the same moment the second is
// checked again against what the first wrote, instead of both missing the
// conflict, or the second's entry dropping the flag the first's set
// (indexNew). ReplaceInstanceChecked is ReplaceInstance on the same
// condition, without the OwnIdentitySet exception: a delete's restatement
// of a study (identity_restate.go) then never overwrites the entry of
// another patient's instance indexed since it listed the study. A checked
// replace may refuse (ErrInvalid) to move an instance to another study
// (Redis Cluster does).
type IdentityCheckedIndex interface {
	PutInstanceChecked(ctx context.Context, rec *InstanceRecord, studyIdentities string) (existing *InstanceRecord, created bool, err error)
	ReplaceInstanceChecked(ctx context.Context, rec *InstanceRecord, studyIdentities string) error
}

// ErrStudyIdentitiesChanged is IdentityCheckedIndex's answer to a write
// whose identity check read a study that has changed since.
var ErrStudyIdentitiesChanged = errors.New("the study's patient identities changed since they were read")

// StudyIdentitySet is the set of patient identities a study's entry (or
// the study-level attributes of the instance that becomes its latest)
// lists, its own and those its flag names, in one canonical string; ""
// for no entry. Two entries that list the same patients give the same
// string, whatever their order or the rest of their attributes.
func StudyIdentitySet(attrs dicomcodec.Dataset) string {
	if attrs == nil {
		return ""
	}
	return identitySet(listedIdentities(attrs))
}

// identitySet is the canonical string of the set of ids (sorted, once
// each); ids is reordered.
func identitySet(ids []PatientIdentity) string {
	slices.SortFunc(ids, func(a, b PatientIdentity) int {
		return cmp.Or(strings.Compare(a.ID, b.ID), strings.Compare(a.Issuer, b.Issuer))
	})
	var b strings.Builder
	for i, p := range ids {
		if i > 0 && p == ids[i-1] {
			continue
		}
		// Length-prefixed, so no value can pass for a separator.
		fmt.Fprintf(&b, "%d:%s%d:%s;", len(p.ID), p.ID, len(p.Issuer), p.Issuer)
	}
	return b.String()
}

// OwnIdentitySet is the StudyIdentitySet of a study that holds only rec's
// patient, when rec is not flagged; "" for a flagged rec. A checked write
// of rec into a study that lists exactly that set goes ahead whatever set
// its check read: checked again, rec would be found to fit the study as
// it is and stay unflagged. So same-patient instances that open a study
// together are not refused (each read it as new) and checked again.
func OwnIdentitySet(rec *InstanceRecord) string {
	if _, flagged := IdentityConflicts(rec.Metadata); flagged {
		return ""
	}
	id, issuer := patientIdentity(rec.Metadata)
	return identitySet([]PatientIdentity{{id, issuer}})
}

// identityCheck is what the identity check of one new instance read and
// decided, for indexNew.
type identityCheck struct {
	// read: the study's entry was read; studyIdentities is then its
	// StudyIdentitySet, which the index write is made conditional on.
	read            bool
	studyIdentities string
	// conflict, when set, is the identity the study was held under when
	// the instance brought another: audited once the instance is indexed.
	conflict *PatientIdentity
}

// maxIdentityChecks bounds the identity checks of one new instance whose
// study keeps changing under it (each retry needs another patient's
// instance indexed in the study meanwhile); past it the instance is
// indexed with its last check, and the log says so.
const maxIdentityChecks = 8

// indexNew checks rec's patient identity against its study and indexes it:
// conditionally on the identities the check read when the index can
// (IdentityCheckedIndex), checking again from the study as it is now when
// another patient's instance was indexed in it meanwhile. The conflict is
// audited once rec is indexed. A coercion its sender recorded is audited
// first, once. A write that failed but is found to have landed (its reply
// lost) is answered as an instance indexed already: the record found, not
// created.
func (in *Ingester) indexNew(ctx context.Context, rec *InstanceRecord) (*InstanceRecord, bool, error) {
	in.auditReceivedCoercion(ctx, rec)
	checked, conditional := in.Index.(IdentityCheckedIndex)
	arrived := rec.Metadata
	for attempt := 1; ; attempt++ {
		rec.Metadata = arrived // without the flag an earlier check set
		check := in.flagIdentityConflict(ctx, rec)
		var (
			got     *InstanceRecord
			created bool
			err     error
		)
		if conditional && check.read && attempt <= maxIdentityChecks {
			got, created, err = checked.PutInstanceChecked(ctx, IndexRecord(rec), check.studyIdentities)
			if errors.Is(err, ErrStudyIdentitiesChanged) {
				continue
			}
		} else {
			if conditional && check.read {
				in.logger().ErrorContext(ctx, "identity check gave up: the study kept changing; indexed with the last check",
					LogKeyStudyUID, rec.StudyInstanceUID, LogKeySOPUID, rec.SOPInstanceUID)
			}
			got, created, err = in.Index.PutInstance(ctx, IndexRecord(rec))
		}
		landed := err == nil && created
		if err != nil {
			// The write may have landed with its reply lost (Redis
			// restarted): ask again before deciding what to do with the
			// blob. Found, it is answered as an instance already indexed.
			cur, gerr := in.Index.GetInstance(ctx, rec.SOPInstanceUID)
			if gerr != nil || cur.SHA256 != rec.SHA256 || cur.Size != rec.Size {
				return nil, false, err
			}
			got, created, landed = cur, false, true
		}
		if landed && check.conflict != nil {
			in.auditConflict(ctx, rec, *check.conflict)
		}
		return got, created, nil
	}
}

// auditReceivedCoercion audits the last item of the instance's Original
// Attributes Sequence when its reason is COERCE and it changed the Patient
// ID: the receiving end's record of the mapping the sender applied, one
// event per instance, as stores are audited.
func (in *Ingester) auditReceivedCoercion(ctx context.Context, rec *InstanceRecord) {
	items := ItemsOf(rec.Metadata[TagOriginalAttributesSequence])
	if len(items) == 0 || in.Auditor == nil {
		return
	}
	last := items[len(items)-1]
	if strings.TrimSpace(last.String("04000565")) != "COERCE" {
		return
	}
	mods := ItemsOf(last["04000550"])
	if len(mods) == 0 {
		return
	}
	if _, ok := mods[0][dicomcodec.TagPatientID]; !ok {
		return
	}
	beforeID, beforeIssuer := patientIdentity(mods[0])
	afterID, afterIssuer := patientIdentity(rec.Metadata)
	ev := &AuditEvent{Time: in.now().UTC(), Actor: PrincipalFrom(ctx), Action: ActionIdentityReceived,
		Outcome: OutcomeSuccess, StudyUIDs: []string{rec.StudyInstanceUID}, PatientIDs: presentIDs(beforeID, afterID),
		Detail: map[string]any{
			"sop_instance_uid": rec.SOPInstanceUID, "modifying_system": strings.TrimSpace(last.String("04000563")),
			"modified_at":       strings.TrimSpace(last.String("04000562")),
			"before_patient_id": beforeID, "before_issuer": beforeIssuer,
			"after_patient_id": afterID, "after_issuer": afterIssuer,
		}}
	if err := auditDetached(ctx, in.Auditor, ev); err != nil {
		in.logger().ErrorContext(ctx, "received identity coercion not audited", LogKeyStudyUID, rec.StudyInstanceUID, LogKeyError, err.Error())
	}
}

// patientIdentity is a Patient ID with its issuer, as compared.
func patientIdentity(md dicomcodec.Dataset) (id, issuer string) {
	return strings.TrimSpace(md.String(dicomcodec.TagPatientID)), strings.TrimSpace(md.String(TagIssuerOfPatientID))
}

// PatientIdentity is a Patient ID with its Issuer of Patient ID.
type PatientIdentity struct{ ID, Issuer string }

// maxConflictIdentities bounds the other identities one flag names: a
// sender filing instances of ever more patients under one Study Instance
// UID must not grow the study's index entry without end. Beyond it the
// first identity the flag named and the most recent ones are kept; every
// conflict is audited whatever the flag keeps.
const maxConflictIdentities = 16

// IdentityConflicts returns the other patient identities a flagged study
// or instance names (the flag's values after IdentityConflictValue, in ID
// and issuer pairs), and whether it is flagged. Only this gateway's flag
// counts: a sender's own is dropped from the index record at ingest and
// reindex (withoutForeignFlag), and the block's private creator must be
// this gateway's.
func IdentityConflicts(d dicomcodec.Dataset) (others []PatientIdentity, flagged bool) {
	a, ok := d[TagIdentityConflict]
	if !ok || !readsAsFlag(a) || d.String(TagGatewayPrivateCreator) != GatewayPrivateCreator {
		return nil, false
	}
	for i := 1; i < len(a.Value); i += 2 {
		var p PatientIdentity
		p.ID, _ = a.Value[i].(string)
		if i+1 < len(a.Value) {
			p.Issuer, _ = a.Value[i+1].(string)
		}
		others = append(others, p)
	}
	return others, true
}

// readsAsFlag reports whether a value of (0009,1001) is worded as the flag.
func readsAsFlag(a dicomcodec.Attribute) bool {
	return len(a.Value) > 0 && a.Value[0] == IdentityConflictValue
}

// withoutForeignFlag is a header read from the bytes, for its index
// record, without a (0009,1001) that reads as this gateway's flag and
// without the gateway's private creator (and its block's names): the flag
// is the index's record of what it saw arrive, never the sender's claim
// (it decides which patients' searches list the study). d itself is left
// as it is; a copy is made only when there is something to drop.
func withoutForeignFlag(d dicomcodec.Dataset) dicomcodec.Dataset {
	a, ok := d[TagIdentityConflict]
	flag := ok && readsAsFlag(a)
	creator := d.String(TagGatewayPrivateCreator) == GatewayPrivateCreator
	if !flag && !creator {
		return d
	}
	d = maps.Clone(d)
	if flag {
		delete(d, TagIdentityConflict)
	}
	if creator {
		delete(d, TagGatewayPrivateCreator)
		delete(d, TagIdentityConflictNames)
	}
	return d
}

// StudyPatientIDs are the Patient IDs a study is found by: its own (the
// latest instance's, as every study-level attribute) and, when it is
// flagged for an identity conflict, every other patient's it names. A
// search by any of them then finds the study, with the flag that says why,
// instead of the first patient's study vanishing from that patient's
// searches when one instance of another patient arrives in it.
func StudyPatientIDs(attrs dicomcodec.Dataset) []string {
	var ids []string
	if id := attrs.String(dicomcodec.TagPatientID); id != "" {
		ids = append(ids, id)
	}
	others, _ := IdentityConflicts(attrs)
	for _, o := range others {
		if o.ID != "" && !slices.Contains(ids, o.ID) {
			ids = append(ids, o.ID)
		}
	}
	return ids
}

// StudyPatientNames is a dataset whose Patient Name holds every patient
// name a study is found by: its own (the latest instance's) and, when it is
// flagged, those the flag's names attribute gives for the other
// identities. An index lists the study under the keys of all of them
// (NameKeys and its kin), as it lists it under every StudyPatientIDs.
func StudyPatientNames(attrs dicomcodec.Dataset) dicomcodec.Dataset {
	own := attrs[dicomcodec.TagPatientName]
	names := conflictNames(attrs)
	if len(names) == 0 {
		return dicomcodec.Dataset{dicomcodec.TagPatientName: own}
	}
	all := dicomcodec.Attribute{VR: "PN", Value: slices.Clone(own.Value)}
	for _, n := range names {
		if n != (dicomcodec.PersonName{}) {
			all.Value = append(all.Value, n)
		}
	}
	return dicomcodec.Dataset{dicomcodec.TagPatientName: all}
}

// conflictNames are the names of the other identities a flagged study or
// instance names, aligned with IdentityConflicts' by position (an empty
// name where none is known or a value is not a name); nil when it is not
// flagged or carries no names.
func conflictNames(d dicomcodec.Dataset) []dicomcodec.PersonName {
	others, flagged := IdentityConflicts(d)
	a, ok := d[TagIdentityConflictNames]
	if !flagged || !ok {
		return nil
	}
	names := make([]dicomcodec.PersonName, len(others))
	for i := range min(len(names), len(a.Value)) {
		if pns := PersonNamesOf(dicomcodec.Attribute{VR: "PN", Value: a.Value[i : i+1]}); len(pns) == 1 {
			names[i] = pns[0]
		}
	}
	return names
}

// gatewayBlockTags are the attributes of the gateway's private block, which
// travel together (merge, project).
var gatewayBlockTags = []string{TagGatewayPrivateCreator, TagIdentityConflict, TagIdentityConflictNames}

// hasGatewayBlock reports whether d holds any attribute of the gateway's
// private block.
func hasGatewayBlock(d dicomcodec.Dataset) bool {
	for _, t := range gatewayBlockTags {
		if _, ok := d[t]; ok {
			return true
		}
	}
	return false
}

// identityNames are the patient names known for identities.
type identityNames map[PatientIdentity]dicomcodec.PersonName

// addName records the name of the patient of md under its identity, unless
// it has none.
func (n identityNames) addName(md dicomcodec.Dataset) {
	id, issuer := patientIdentity(md)
	if pns := PersonNamesOf(md[dicomcodec.TagPatientName]); len(pns) > 0 && pns[0] != (dicomcodec.PersonName{}) {
		n[PatientIdentity{id, issuer}] = pns[0]
	}
}

// namesOf are the names a study's or instance's entry d gives: its own
// patient's and the flag's others'.
func namesOf(d dicomcodec.Dataset) identityNames {
	n := identityNames{}
	n.addName(d)
	others, _ := IdentityConflicts(d)
	for i, name := range conflictNames(d) {
		if _, known := n[others[i]]; !known && name != (dicomcodec.PersonName{}) {
			n[others[i]] = name
		}
	}
	return n
}

// otherIdentityViews are a flagged study as each other patient it names is
// matched and shown: that patient's Patient ID, Issuer of Patient ID and,
// when the flag's names give it, Patient Name; none of the latest
// instance's other patient attributes (its name, birth date, sex, other
// IDs belong to another patient, so a search by one patient's ID and
// another's birth date must not match, and a result must not pair them);
// and a flag naming every identity but its own. nil when d is not flagged.
func otherIdentityViews(d dicomcodec.Dataset) []dicomcodec.Dataset {
	others, flagged := IdentityConflicts(d)
	if !flagged {
		return nil
	}
	all := listedIdentities(d)
	names := namesOf(d)
	views := make([]dicomcodec.Dataset, 0, len(others))
	for i := 1; i < len(all); i++ {
		view := withoutPatientAttributes(d)
		view[dicomcodec.TagPatientID] = loAttribute(all[i].ID)
		view[TagIssuerOfPatientID] = loAttribute(all[i].Issuer)
		if name, ok := names[all[i]]; ok {
			view[dicomcodec.TagPatientName] = dicomcodec.Attribute{VR: "PN", Value: []any{name}}
		}
		setBlock(view, slices.Delete(slices.Clone(all), i, i+1), names)
		views = append(views, view)
	}
	return views
}

// instanceRow is the result row of an instance: its study's row (or
// series'), the instance's own attributes over it, and the gateway's
// private block as the study holds it now, seen from the instance's
// patient: a flag naming every identity the study is listed under but the
// instance's, with their names. The instance's record keeps the flag it
// was indexed with, which a delete since may have made stale
// (identity_restate.go): it is never shown.
func instanceRow(study, inst dicomcodec.Dataset) dicomcodec.Dataset {
	id, issuer := patientIdentity(inst)
	own := PatientIdentity{id, issuer}
	if sid, sissuer := patientIdentity(study); own != (PatientIdentity{sid, sissuer}) {
		// Another patient's instance in the study: none of the study row's
		// patient attributes may fill in what the instance lacks.
		study = withoutPatientAttributes(study)
	}
	row := merge(study, inst)
	for _, t := range gatewayBlockTags {
		delete(row, t)
	}
	if _, flagged := IdentityConflicts(study); !flagged {
		return row
	}
	rest := slices.DeleteFunc(listedIdentities(study), func(p PatientIdentity) bool { return p == own })
	setBlock(row, capIdentities(rest), namesOf(study))
	return row
}

// withoutPatientAttributes is a copy of d without the attributes that
// describe the patient (the Patient and Patient Study modules: group 0010,
// Referenced Patient Sequence, Admitting Diagnoses Description), so that a
// row shown as another patient's carries none of them.
func withoutPatientAttributes(d dicomcodec.Dataset) dicomcodec.Dataset {
	d = maps.Clone(d)
	maps.DeleteFunc(d, func(tag string, _ dicomcodec.Attribute) bool {
		return strings.HasPrefix(tag, "0010") || tag == "00081120" || tag == "00081080"
	})
	return d
}

// conflictFlag is the flag's value naming others.
func conflictFlag(others []PatientIdentity) dicomcodec.Attribute {
	v := []any{IdentityConflictValue}
	for _, o := range others {
		v = append(v, o.ID, o.Issuer)
	}
	return dicomcodec.Attribute{VR: "LO", Value: v}
}

// capIdentities is others, or at most maxConflictIdentities of them: the
// first and the most recent.
func capIdentities(others []PatientIdentity) []PatientIdentity {
	if n := len(others); n > maxConflictIdentities {
		return append(others[:1:1], others[n-maxConflictIdentities+1:]...)
	}
	return others
}

// setBlock writes into d (changed in place) the gateway's private block
// flagging others, with the names known of them aligned (an empty value,
// null in DICOM JSON, for one not known). The names attribute is written
// even when no name is known: its absence marks a flag written by an
// earlier version, whose names are then looked up (namesFor).
func setBlock(d dicomcodec.Dataset, others []PatientIdentity, names identityNames) {
	d[TagGatewayPrivateCreator] = loAttribute(GatewayPrivateCreator)
	d[TagIdentityConflict] = conflictFlag(others)
	a := dicomcodec.Attribute{VR: "PN", Value: make([]any, 0, len(others))}
	for _, o := range others {
		if name, ok := names[o]; ok {
			a.Value = append(a.Value, name)
		} else {
			a.Value = append(a.Value, nil)
		}
	}
	d[TagIdentityConflictNames] = a
}

// loAttribute is an LO attribute of one value, empty when v is "".
func loAttribute(v string) dicomcodec.Attribute {
	if v == "" {
		return dicomcodec.Attribute{VR: "LO"}
	}
	return dicomcodec.Attribute{VR: "LO", Value: []any{v}}
}

// checkReplacement is indexNew's identity check for rec, which replaces an indexed
// instance, existing (DuplicateReplace): the coercion its sender recorded
// is audited, and rec is flagged when the study's other instances hold
// another patient identity. It is not compared with the study's latest
// instance, which may be existing itself: a corrected Patient ID is not
// another patient's arrival. A replacement that brings an identity other
// than existing's into a study holding others is audited as a conflict.
func (in *Ingester) checkReplacement(ctx context.Context, existing, rec *InstanceRecord) {
	if in.Index == nil {
		return
	}
	in.auditReceivedCoercion(ctx, rec)
	others, names := in.otherIdentities(ctx, rec)
	if len(others) == 0 {
		return
	}
	setFlag(rec, others, names)
	oldID, oldIssuer := patientIdentity(existing.Metadata)
	if newID, newIssuer := patientIdentity(rec.Metadata); newID != oldID || newIssuer != oldIssuer {
		in.auditConflict(ctx, rec, others[len(others)-1])
	}
}

// otherIdentities are the patient identities of rec's study, other than
// rec's own, held by its instances other than rec, in the order they
// arrived, with their names (each patient's latest instance's). The
// study's summary answers first: unflagged, every instance shares its
// identity, which is then the other one if the study holds more instances
// than rec's; only a flagged study's instances are listed. A failed read
// flags nothing, as in flagIdentityConflict.
func (in *Ingester) otherIdentities(ctx context.Context, rec *InstanceRecord) ([]PatientIdentity, identityNames) {
	held, err := studyEntry(ctx, in.Index, rec.StudyInstanceUID)
	if err != nil || held == nil {
		return nil, nil
	}
	id, issuer := patientIdentity(rec.Metadata)
	incoming := PatientIdentity{id, issuer}
	if _, flagged := IdentityConflicts(held); !flagged {
		heldID, heldIssuer := patientIdentity(held)
		if n, _ := numberOf(held, TagNumberOfStudyRelatedInstances); n <= 1 || (PatientIdentity{heldID, heldIssuer}) == incoming {
			return nil, nil
		}
		return []PatientIdentity{{heldID, heldIssuer}}, namesOf(held)
	}
	recs, err := in.Index.ListInstances(ctx, rec.StudyInstanceUID, "")
	if err != nil {
		return nil, nil
	}
	ids, names := identitiesByArrival(recs, rec.SOPInstanceUID)
	return slices.DeleteFunc(ids, func(p PatientIdentity) bool { return p == incoming }), names
}

// setFlag flags rec as held in a study with the other identities others
// (capIdentities), with the names known of them (TagIdentityConflictNames).
func setFlag(rec *InstanceRecord, others []PatientIdentity, names identityNames) {
	others = capIdentities(others)
	md := maps.Clone(rec.Metadata)
	setBlock(md, others, names)
	rec.Metadata = md
}

// flagIdentityConflict compares rec with the study it joins and flags it
// when the study is held under another patient identity, or is flagged
// already: the flag names every identity the study holds but rec's. It
// returns what it read, and the conflict for the caller to audit once rec
// is indexed. A failed lookup flags nothing: the conflict check must not
// make the index a second point of failure for ingest, and the next
// instance of the study is checked again.
func (in *Ingester) flagIdentityConflict(ctx context.Context, rec *InstanceRecord) identityCheck {
	held, err := studyEntry(ctx, in.Index, rec.StudyInstanceUID)
	if err != nil {
		return identityCheck{}
	}
	check := identityCheck{read: true, studyIdentities: StudyIdentitySet(held)}
	if held == nil {
		return check
	}
	heldID, heldIssuer := patientIdentity(held)
	newID, newIssuer := patientIdentity(rec.Metadata)
	heldOthers, flagged := IdentityConflicts(held)
	conflict := heldID != newID || heldIssuer != newIssuer
	if !conflict && !flagged {
		return check
	}
	// The held flag's identities, then the latest instance's: the first
	// named stays first, whatever arrives later.
	incoming := PatientIdentity{newID, newIssuer}
	var others []PatientIdentity
	for _, p := range append(heldOthers, PatientIdentity{heldID, heldIssuer}) {
		if p != incoming && !slices.Contains(others, p) {
			others = append(others, p)
		}
	}
	setFlag(rec, others, in.namesFor(ctx, rec.StudyInstanceUID, held, others))
	if conflict {
		check.conflict = &PatientIdentity{heldID, heldIssuer}
	}
	return check
}

// namesFor are the names of others, the identities a study's entry held
// names: from the entry, and, when the entry is flagged without names (a
// flag written by an earlier version), from the study's instances for
// those it does not name; once. A failed listing leaves them unnamed.
func (in *Ingester) namesFor(ctx context.Context, studyUID string, held dicomcodec.Dataset, others []PatientIdentity) identityNames {
	names := namesOf(held)
	_, flagged := IdentityConflicts(held)
	if _, named := held[TagIdentityConflictNames]; !flagged || named {
		return names
	}
	missing := slices.DeleteFunc(slices.Clone(others), func(p PatientIdentity) bool { _, ok := names[p]; return ok })
	if len(missing) == 0 {
		return names
	}
	recs, err := in.Index.ListInstances(ctx, studyUID, "")
	if err != nil {
		return names
	}
	_, listed := identitiesByArrival(recs, "")
	for _, p := range missing {
		if name, ok := listed[p]; ok {
			names[p] = name
		}
	}
	return names
}

// auditConflict records identity.conflict: rec arrived in a study held
// under the identity held.
func (in *Ingester) auditConflict(ctx context.Context, rec *InstanceRecord, held PatientIdentity) {
	if in.Auditor == nil {
		return
	}
	newID, newIssuer := patientIdentity(rec.Metadata)
	ev := &AuditEvent{Time: in.now().UTC(), Actor: PrincipalFrom(ctx), Action: ActionIdentityConflict,
		Outcome: OutcomeFailure, StudyUIDs: []string{rec.StudyInstanceUID}, PatientIDs: presentIDs(held.ID, newID),
		Detail: map[string]any{
			"sop_instance_uid": rec.SOPInstanceUID, "series_uid": rec.SeriesInstanceUID,
			"held_patient_id": held.ID, "held_issuer": held.Issuer,
			"incoming_patient_id": newID, "incoming_issuer": newIssuer,
			"description": "instance stored and flagged: the study is held under another patient identity",
		}}
	if err := auditDetached(ctx, in.Auditor, ev); err != nil {
		in.logger().ErrorContext(ctx, "identity conflict not audited", LogKeyStudyUID, rec.StudyInstanceUID, LogKeyError, err.Error())
	}
}

func presentIDs(vs ...string) []string {
	var out []string
	for _, v := range vs {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}

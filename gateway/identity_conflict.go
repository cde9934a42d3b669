package gateway

import (
	"context"
	"maps"
	"slices"
	"strings"
	"time"

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
// the latest instance's).

// TagOriginalAttributesSequence records modified attributes' earlier
// values (PS3.3 C.12.1.1.9).
const TagOriginalAttributesSequence = "04000561"

// Tags of the identity conflict flag: the private creator of block
// (0009,10xx) and the flag itself (LO, values: IdentityConflictValue, the
// other Patient ID, its Issuer of Patient ID).
const (
	TagGatewayPrivateCreator = "00090010"
	TagIdentityConflict      = "00091001"
	GatewayPrivateCreator    = "DICOM GATEWAY"
	IdentityConflictValue    = "IDENTITY CONFLICT"
	ActionIdentityConflict   = "identity.conflict"
	// ActionIdentityReceived records, at the receiving gateway, an
	// instance whose sender coerced its patient identity: before and after.
	ActionIdentityReceived = "identity.received"
)

// checkIdentity is ingest's identity hook, run before an instance is
// indexed: the coercion a sender recorded is audited, and a conflict with
// the study's identity is flagged.
func (in *Ingester) checkIdentity(ctx context.Context, rec *InstanceRecord) {
	if in.Index == nil {
		return
	}
	in.auditReceivedCoercion(ctx, rec)
	in.flagIdentityConflict(ctx, rec)
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
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := in.Auditor.Record(actx, ev); err != nil {
		in.logger().ErrorContext(ctx, "received identity coercion not audited", LogKeyStudyUID, rec.StudyInstanceUID, LogKeyError, err.Error())
	}
}

// patientIdentity is a Patient ID with its issuer, as compared.
func patientIdentity(md dicomcodec.Dataset) (id, issuer string) {
	return strings.TrimSpace(md.String(dicomcodec.TagPatientID)), strings.TrimSpace(md.String(TagIssuerOfPatientID))
}

// IdentityConflictOf returns the other patient identity a flagged study or
// instance names, and whether it is flagged.
func IdentityConflictOf(d dicomcodec.Dataset) (otherID, otherIssuer string, flagged bool) {
	a, ok := d[TagIdentityConflict]
	if !ok || len(a.Value) == 0 || a.Value[0] != IdentityConflictValue {
		return "", "", false
	}
	if len(a.Value) > 1 {
		otherID, _ = a.Value[1].(string)
	}
	if len(a.Value) > 2 {
		otherIssuer, _ = a.Value[2].(string)
	}
	return otherID, otherIssuer, true
}

// StudyPatientIDs are the Patient IDs a study is found by: its own (the
// latest instance's, as every study-level attribute) and, when it is
// flagged for an identity conflict, the other patient's. A search by either
// patient then finds the study, with the flag that says why, instead of
// the first patient's study vanishing from that patient's searches when
// one instance of another patient arrives in it.
func StudyPatientIDs(attrs dicomcodec.Dataset) []string {
	var ids []string
	if id := attrs.String(dicomcodec.TagPatientID); id != "" {
		ids = append(ids, id)
	}
	if other, _, flagged := IdentityConflictOf(attrs); flagged && other != "" && !slices.Contains(ids, other) {
		ids = append(ids, other)
	}
	return ids
}

// otherIdentityView is d as the other patient of its identity conflict is
// matched: the flag's Patient ID and Issuer of Patient ID in place of d's
// own. ok is false when d is not flagged.
func otherIdentityView(d dicomcodec.Dataset) (view dicomcodec.Dataset, ok bool) {
	otherID, otherIssuer, flagged := IdentityConflictOf(d)
	if !flagged {
		return nil, false
	}
	view = maps.Clone(d)
	view[dicomcodec.TagPatientID] = textAttribute("LO", otherID)
	view[TagIssuerOfPatientID] = textAttribute("LO", otherIssuer)
	return view, true
}

func textAttribute(vr, v string) dicomcodec.Attribute {
	if v == "" {
		return dicomcodec.Attribute{VR: vr}
	}
	return dicomcodec.Attribute{VR: vr, Value: []any{v}}
}

// StudyCarriesNationalID is CarriesNationalID for a study summary: a study
// flagged for an identity conflict carries the other patient's NHS number
// too, when the flag names it with a national issuer.
func StudyCarriesNationalID(d dicomcodec.Dataset, nhs string) bool {
	if CarriesNationalID(d, nhs) {
		return true
	}
	view, ok := otherIdentityView(d)
	return ok && CarriesNationalID(view, nhs)
}

// flagIdentityConflict compares rec with the study it joins and flags it
// (and audits the conflict) when the study is held under another patient
// identity, or is flagged already. A failed lookup flags nothing: the
// conflict check must not make the index a second point of failure for
// ingest, and the next instance of the study is checked again.
func (in *Ingester) flagIdentityConflict(ctx context.Context, rec *InstanceRecord) {
	q := &Query{Level: LevelStudy, StudyInstanceUID: rec.StudyInstanceUID, Limit: 1, IncludeAll: true}
	res, err := in.Index.Search(ctx, q)
	if err != nil || len(res.Items) == 0 {
		return
	}
	held := res.Items[0]
	heldID, heldIssuer := patientIdentity(held)
	newID, newIssuer := patientIdentity(rec.Metadata)
	otherID, otherIssuer, flagged := IdentityConflictOf(held)
	conflict := heldID != newID || heldIssuer != newIssuer
	if conflict {
		otherID, otherIssuer = heldID, heldIssuer
	}
	if !conflict && !flagged {
		return
	}
	if conflict && otherID == newID && otherIssuer == newIssuer {
		// The study is flagged as holding the newcomer's identity too.
		otherID, otherIssuer, _ = IdentityConflictOf(held)
	}
	md := make(dicomcodec.Dataset, len(rec.Metadata)+2)
	for t, a := range rec.Metadata {
		md[t] = a
	}
	md[TagGatewayPrivateCreator] = dicomcodec.Attribute{VR: "LO", Value: []any{GatewayPrivateCreator}}
	md[TagIdentityConflict] = dicomcodec.Attribute{VR: "LO", Value: []any{IdentityConflictValue, otherID, otherIssuer}}
	rec.Metadata = md
	if !conflict || in.Auditor == nil {
		return
	}
	ev := &AuditEvent{Time: in.now().UTC(), Actor: PrincipalFrom(ctx), Action: ActionIdentityConflict,
		Outcome: OutcomeFailure, StudyUIDs: []string{rec.StudyInstanceUID}, PatientIDs: presentIDs(heldID, newID),
		Detail: map[string]any{
			"sop_instance_uid": rec.SOPInstanceUID, "series_uid": rec.SeriesInstanceUID,
			"held_patient_id": heldID, "held_issuer": heldIssuer,
			"incoming_patient_id": newID, "incoming_issuer": newIssuer,
			"description": "instance stored and flagged: the study is held under another patient identity",
		}}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := in.Auditor.Record(actx, ev); err != nil {
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

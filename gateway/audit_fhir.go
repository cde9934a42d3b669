package gateway

import (
	"encoding/base64"
	"encoding/json"
	"net/netip"
	"sort"
	"time"
)

// Code systems of FHIR R4 AuditEvent (https://hl7.org/fhir/R4/auditevent.html)
// and of the DICOM audit vocabulary (PS3.16 DCM, used by PS3.15 Annex A.5).
const (
	FHIRSystemDCM             = "http://dicom.nema.org/resources/ontology/DCM"
	FHIRSystemSourceType      = "http://terminology.hl7.org/CodeSystem/security-source-type"
	FHIRSystemEntityType      = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
	FHIRSystemObjectRole      = "http://terminology.hl7.org/CodeSystem/object-role"
	FHIRSystemDICOMUID        = "urn:dicom:uid"
	FHIRSystemGatewayActor    = "urn:dicom-gateway:principal"
	FHIRSystemGatewayTransfer = "urn:dicom-gateway:transfer"
)

// FHIRCoding is a FHIR Coding.
type FHIRCoding struct {
	System  string `json:"system,omitempty"`
	Code    string `json:"code,omitempty"`
	Display string `json:"display,omitempty"`
}

// FHIRCodeableConcept is a FHIR CodeableConcept.
type FHIRCodeableConcept struct {
	Coding []FHIRCoding `json:"coding,omitempty"`
	Text   string       `json:"text,omitempty"`
}

// FHIRIdentifier is a FHIR Identifier.
type FHIRIdentifier struct {
	Type   *FHIRCodeableConcept `json:"type,omitempty"`
	System string               `json:"system,omitempty"`
	Value  string               `json:"value,omitempty"`
}

// FHIRReference is a FHIR Reference; the gateway refers by identifier and
// display only, having no FHIR server to point at.
type FHIRReference struct {
	Identifier *FHIRIdentifier `json:"identifier,omitempty"`
	Display    string          `json:"display,omitempty"`
}

// FHIRAuditEvent is a FHIR R4 AuditEvent resource, with the elements the
// gateway fills.
type FHIRAuditEvent struct {
	ResourceType string            `json:"resourceType"`
	ID           string            `json:"id,omitempty"`
	Type         FHIRCoding        `json:"type"`
	Subtype      []FHIRCoding      `json:"subtype,omitempty"`
	Action       string            `json:"action,omitempty"`
	Recorded     string            `json:"recorded"`
	Outcome      string            `json:"outcome,omitempty"`
	OutcomeDesc  string            `json:"outcomeDesc,omitempty"`
	Agent        []FHIRAuditAgent  `json:"agent"`
	Source       FHIRAuditSource   `json:"source"`
	Entity       []FHIRAuditEntity `json:"entity,omitempty"`
}

// FHIRAuditAgent is AuditEvent.agent.
type FHIRAuditAgent struct {
	Type      *FHIRCodeableConcept  `json:"type,omitempty"`
	Role      []FHIRCodeableConcept `json:"role,omitempty"`
	Who       *FHIRReference        `json:"who,omitempty"`
	Name      string                `json:"name,omitempty"`
	Requestor bool                  `json:"requestor"`
	Network   *FHIRAuditNetwork     `json:"network,omitempty"`
}

// FHIRAuditNetwork is AuditEvent.agent.network; Type 1 is a machine name, 2
// an IP address.
type FHIRAuditNetwork struct {
	Address string `json:"address,omitempty"`
	Type    string `json:"type,omitempty"`
}

// FHIRAuditSource is AuditEvent.source.
type FHIRAuditSource struct {
	Site     string        `json:"site,omitempty"`
	Observer FHIRReference `json:"observer"`
	Type     []FHIRCoding  `json:"type,omitempty"`
}

// FHIRAuditEntity is AuditEvent.entity. Name and Query are never both set
// (invariant sev-1).
type FHIRAuditEntity struct {
	What        *FHIRReference          `json:"what,omitempty"`
	Type        *FHIRCoding             `json:"type,omitempty"`
	Role        *FHIRCoding             `json:"role,omitempty"`
	Name        string                  `json:"name,omitempty"`
	Description string                  `json:"description,omitempty"`
	Query       string                  `json:"query,omitempty"`
	Detail      []FHIRAuditEntityDetail `json:"detail,omitempty"`
}

// FHIRAuditEntityDetail is AuditEvent.entity.detail.
type FHIRAuditEntityDetail struct {
	Type        string `json:"type"`
	ValueString string `json:"valueString"`
}

// FHIRBundle is a FHIR R4 Bundle of type searchset.
type FHIRBundle struct {
	ResourceType string            `json:"resourceType"`
	Type         string            `json:"type"`
	Timestamp    string            `json:"timestamp,omitempty"`
	Link         []FHIRBundleLink  `json:"link,omitempty"`
	Entry        []FHIRBundleEntry `json:"entry,omitempty"`
}

// FHIRBundleLink is Bundle.link: relation "self" or "next".
type FHIRBundleLink struct {
	Relation string `json:"relation"`
	URL      string `json:"url"`
}

// FHIRBundleEntry is Bundle.entry.
type FHIRBundleEntry struct {
	Resource *FHIRAuditEvent   `json:"resource"`
	Search   *FHIRBundleSearch `json:"search,omitempty"`
}

// FHIRBundleSearch is Bundle.entry.search.
type FHIRBundleSearch struct {
	Mode string `json:"mode"`
}

func dcm(code, display string) FHIRCoding {
	return FHIRCoding{System: FHIRSystemDCM, Code: code, Display: display}
}

// DICOM audit event IDs (PS3.16 CID 400 / PS3.15 A.5.3), role IDs (CID 402)
// and participant object ID types (CID 404) used in the conversion.
var (
	dcmApplicationActivity  = dcm("110100", "Application Activity")
	dcmAuditLogUsed         = dcm("110101", "Audit Log Used")
	dcmBeginTransferring    = dcm("110102", "Begin Transferring DICOM Instances")
	dcmInstancesTransferred = dcm("110104", "DICOM Instances Transferred")
	dcmStudyDeleted         = dcm("110105", "DICOM Study Deleted")
	dcmQuery                = dcm("110112", "Query")
	dcmSecurityAlert        = dcm("110113", "Security Alert")
	dcmUserAuthentication   = dcm("110114", "User Authentication")
	dcmLogin                = dcm("110122", "Login")
	dcmRestrictedFunction   = dcm("110132", "Use of a restricted function")
	dcmApplication          = dcm("110150", "Application")
	dcmDestinationRole      = dcm("110152", "Destination Role ID")
	dcmSourceRole           = dcm("110153", "Source Role ID")
	dcmStudyInstanceUID     = dcm("110180", "Study Instance UID")
)

// auditKind says how one gateway action is expressed in the DICOM audit
// vocabulary: the event ID, an optional subtype, the FHIR action code
// (C R U D E), and the roles of the requesting actor and of this gateway.
type auditKind struct {
	typ       FHIRCoding
	subtype   *FHIRCoding
	action    string
	actorRole *FHIRCoding
	ownRole   FHIRCoding
}

// auditKinds follows PS3.15 A.5.3: a STOW-RS upload is "DICOM Instances
// Transferred" with action C, the sender in the source role; a WADO-RS read
// is the same event with action R, the reader in the destination role.
var auditKinds = map[string]auditKind{
	ActionStore:            {dcmInstancesTransferred, nil, "C", &dcmSourceRole, dcmDestinationRole},
	ActionQuery:            {dcmQuery, nil, "E", &dcmSourceRole, dcmDestinationRole},
	ActionRetrieve:         {dcmInstancesTransferred, nil, "R", &dcmDestinationRole, dcmSourceRole},
	ActionDelete:           {dcmStudyDeleted, nil, "D", nil, dcmApplication},
	ActionTransferCreated:  {dcmBeginTransferring, nil, "E", nil, dcmSourceRole},
	ActionTransferStarted:  {dcmBeginTransferring, nil, "E", nil, dcmSourceRole},
	ActionTransferRetried:  {dcmBeginTransferring, nil, "E", nil, dcmSourceRole},
	ActionTransferComplete: {dcmInstancesTransferred, nil, "R", nil, dcmSourceRole},
	ActionTransferVerified: {dcmInstancesTransferred, nil, "R", nil, dcmSourceRole},
	ActionTransferFailed:   {dcmInstancesTransferred, nil, "R", nil, dcmSourceRole},
	ActionTransferCancel:   {dcmApplicationActivity, nil, "E", nil, dcmSourceRole},
	ActionAuthFailure:      {dcmUserAuthentication, &dcmLogin, "E", nil, dcmApplication},
	ActionAccessDenied:     {dcmSecurityAlert, &dcmRestrictedFunction, "E", nil, dcmApplication},
	ActionAuditUsed:        {dcmAuditLogUsed, nil, "R", nil, dcmApplication},
	ActionAdmin:            {dcmApplicationActivity, nil, "E", nil, dcmApplication},
}

// fhirOutcome maps audit outcomes to AuditEvent.outcome (0 success, 4 minor
// failure, 8 serious failure).
var fhirOutcome = map[string]string{OutcomeSuccess: "0", OutcomeFailure: "4", OutcomeError: "8"}

// FHIRAuditEventOf converts one audit record to a FHIR R4 AuditEvent.
func FHIRAuditEventOf(ev *AuditEvent) *FHIRAuditEvent {
	kind, ok := auditKinds[ev.Action]
	if !ok {
		kind = auditKinds[ActionAdmin]
	}
	out := &FHIRAuditEvent{
		ResourceType: "AuditEvent",
		ID:           ev.ID,
		Type:         kind.typ,
		Action:       kind.action,
		Recorded:     ev.Time.UTC().Format(time.RFC3339Nano),
		Outcome:      fhirOutcome[ev.Outcome],
		Source: FHIRAuditSource{
			Site:     ev.Gateway,
			Observer: FHIRReference{Display: ev.Gateway},
			Type:     []FHIRCoding{{System: FHIRSystemSourceType, Code: "4", Display: "Application Server"}},
		},
	}
	if out.Source.Observer.Display == "" {
		out.Source.Observer.Display = "gateway"
	}
	if kind.subtype != nil {
		out.Subtype = []FHIRCoding{*kind.subtype}
	}
	// Subtype also carries the gateway's own action name, so that nothing
	// is lost when several actions share one DICOM event ID.
	out.Subtype = append(out.Subtype, FHIRCoding{System: "urn:dicom-gateway:action", Code: ev.Action})
	if reason, ok := ev.Detail["reason"].(string); ok && ev.Outcome != OutcomeSuccess {
		out.OutcomeDesc = reason
	}

	actor := FHIRAuditAgent{
		Who: &FHIRReference{
			Identifier: &FHIRIdentifier{System: FHIRSystemGatewayActor, Value: ev.Actor.Name},
			Display:    ev.Actor.Name,
		},
		Name:      ev.Actor.Name,
		Requestor: true,
	}
	if kind.actorRole != nil {
		actor.Type = &FHIRCodeableConcept{Coding: []FHIRCoding{*kind.actorRole}}
	}
	for _, r := range ev.Actor.Roles {
		actor.Role = append(actor.Role, FHIRCodeableConcept{Text: string(r)})
	}
	if ev.Actor.Address != "" {
		typ := "1"
		if _, err := netip.ParseAddr(ev.Actor.Address); err == nil {
			typ = "2"
		}
		actor.Network = &FHIRAuditNetwork{Address: ev.Actor.Address, Type: typ}
	}
	self := FHIRAuditAgent{
		Type:      &FHIRCodeableConcept{Coding: []FHIRCoding{kind.ownRole}},
		Who:       &FHIRReference{Display: out.Source.Observer.Display},
		Name:      out.Source.Observer.Display,
		Requestor: false,
	}
	out.Agent = []FHIRAuditAgent{actor, self}
	if peer, ok := ev.Detail["destination"].(string); ok && peer != "" {
		out.Agent = append(out.Agent, FHIRAuditAgent{
			Type: &FHIRCodeableConcept{Coding: []FHIRCoding{dcmDestinationRole}},
			Who:  &FHIRReference{Display: peer},
			Name: peer,
		})
	}

	for _, id := range ev.PatientIDs {
		out.Entity = append(out.Entity, FHIRAuditEntity{
			What: &FHIRReference{Identifier: &FHIRIdentifier{Value: id}},
			Type: &FHIRCoding{System: FHIRSystemEntityType, Code: "1", Display: "Person"},
			Role: &FHIRCoding{System: FHIRSystemObjectRole, Code: "1", Display: "Patient"},
		})
	}
	for _, uid := range ev.StudyUIDs {
		out.Entity = append(out.Entity, FHIRAuditEntity{
			What: &FHIRReference{Identifier: &FHIRIdentifier{
				Type:   &FHIRCodeableConcept{Coding: []FHIRCoding{dcmStudyInstanceUID}},
				System: FHIRSystemDICOMUID, Value: "urn:oid:" + uid,
			}},
			Type: &FHIRCoding{System: FHIRSystemEntityType, Code: "2", Display: "System Object"},
			Role: &FHIRCoding{System: FHIRSystemObjectRole, Code: "3", Display: "Report"},
		})
	}
	if id, ok := ev.Detail["transfer_id"].(string); ok && id != "" {
		out.Entity = append(out.Entity, FHIRAuditEntity{
			What: &FHIRReference{Identifier: &FHIRIdentifier{System: FHIRSystemGatewayTransfer, Value: id}},
			Type: &FHIRCoding{System: FHIRSystemEntityType, Code: "2", Display: "System Object"},
			Role: &FHIRCoding{System: FHIRSystemObjectRole, Code: "20", Display: "Job"},
		})
	}
	if ev.Action == ActionQuery {
		q := FHIRAuditEntity{
			Type: &FHIRCoding{System: FHIRSystemEntityType, Code: "2", Display: "System Object"},
			Role: &FHIRCoding{System: FHIRSystemObjectRole, Code: "24", Display: "Query"},
		}
		if s, ok := ev.Detail["query"].(string); ok {
			q.Query = base64.StdEncoding.EncodeToString([]byte(s))
		}
		out.Entity = append(out.Entity, q)
	}
	if details := fhirDetails(ev.Detail); len(details) > 0 {
		out.Entity = append(out.Entity, FHIRAuditEntity{
			Type:        &FHIRCoding{System: FHIRSystemEntityType, Code: "4", Display: "Other"},
			Description: "gateway event detail",
			Detail:      details,
		})
	}
	return out
}

// fhirDetails turns the detail object into entity.detail entries, sorted by
// key; non-string values are carried as their JSON.
func fhirDetails(detail map[string]any) []FHIRAuditEntityDetail {
	keys := make([]string, 0, len(detail))
	for k := range detail {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []FHIRAuditEntityDetail
	for _, k := range keys {
		v, ok := detail[k].(string)
		if !ok {
			raw, err := json.Marshal(detail[k])
			if err != nil {
				continue
			}
			v = string(raw)
		}
		if v != "" {
			out = append(out, FHIRAuditEntityDetail{Type: k, ValueString: v})
		}
	}
	return out
}

// FHIRAuditBundle converts a page of audit records to a FHIR R4 searchset
// Bundle. selfURL and nextURL, when not empty, become its self and next links.
func FHIRAuditBundle(events []*AuditEvent, selfURL, nextURL string, now time.Time) *FHIRBundle {
	b := &FHIRBundle{ResourceType: "Bundle", Type: "searchset", Timestamp: now.UTC().Format(time.RFC3339Nano)}
	if selfURL != "" {
		b.Link = append(b.Link, FHIRBundleLink{Relation: "self", URL: selfURL})
	}
	if nextURL != "" {
		b.Link = append(b.Link, FHIRBundleLink{Relation: "next", URL: nextURL})
	}
	for _, ev := range events {
		b.Entry = append(b.Entry, FHIRBundleEntry{Resource: FHIRAuditEventOf(ev), Search: &FHIRBundleSearch{Mode: "match"}})
	}
	return b
}

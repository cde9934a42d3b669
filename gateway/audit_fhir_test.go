package gateway_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
)

// fhirElements lists, per FHIR R4 datatype or backbone element used by
// AuditEvent and Bundle, the element names it may hold and their types
// (https://hl7.org/fhir/R4/auditevent.html, bundle.html, datatypes.html).
// "" marks a primitive.
var fhirElements = map[string]map[string]string{
	"Bundle":       {"resourceType": "", "id": "", "meta": "", "type": "", "timestamp": "", "total": "", "link": "BundleLink", "entry": "BundleEntry"},
	"BundleLink":   {"relation": "", "url": ""},
	"BundleEntry":  {"link": "BundleLink", "fullUrl": "", "resource": "AuditEvent", "search": "BundleSearch"},
	"BundleSearch": {"mode": "", "score": ""},
	"AuditEvent": {
		"resourceType": "", "id": "", "meta": "", "implicitRules": "", "language": "", "text": "", "contained": "",
		"extension": "", "modifierExtension": "", "type": "Coding", "subtype": "Coding", "action": "", "period": "",
		"recorded": "", "outcome": "", "outcomeDesc": "", "purposeOfEvent": "CodeableConcept", "agent": "Agent",
		"source": "Source", "entity": "Entity",
	},
	"Agent": {
		"type": "CodeableConcept", "role": "CodeableConcept", "who": "Reference", "altId": "", "name": "",
		"requestor": "", "location": "Reference", "policy": "", "media": "Coding", "network": "Network",
		"purposeOfUse": "CodeableConcept",
	},
	"Network": {"address": "", "type": ""},
	"Source":  {"site": "", "observer": "Reference", "type": "Coding"},
	"Entity": {
		"what": "Reference", "type": "Coding", "role": "Coding", "lifecycle": "Coding", "securityLabel": "Coding",
		"name": "", "description": "", "query": "", "detail": "EntityDetail",
	},
	"EntityDetail":    {"type": "", "valueString": "", "valueBase64Binary": ""},
	"Coding":          {"system": "", "version": "", "code": "", "display": "", "userSelected": ""},
	"CodeableConcept": {"coding": "Coding", "text": ""},
	"Reference":       {"reference": "", "type": "", "identifier": "Identifier", "display": ""},
	"Identifier":      {"use": "", "type": "CodeableConcept", "system": "", "value": "", "period": "", "assigner": "Reference"},
}

var (
	fhirInstant = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$`)
	fhirID      = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)
)

// validateFHIR checks v, decoded JSON of FHIR type typ: only known elements,
// no empty values (ele-1), and recursion into complex types.
func validateFHIR(path, typ string, v any) []string {
	obj, ok := v.(map[string]any)
	if !ok {
		return []string{path + ": not an object"}
	}
	if len(obj) == 0 {
		return []string{path + ": empty object (ele-1)"}
	}
	var errs []string
	for k, val := range obj {
		sub, known := fhirElements[typ][k]
		if !known {
			errs = append(errs, fmt.Sprintf("%s.%s: no such element in %s", path, k, typ))
			continue
		}
		items := []any{val}
		if arr, isArr := val.([]any); isArr {
			if len(arr) == 0 {
				errs = append(errs, path+"."+k+": empty array")
			}
			items = arr
		}
		for i, item := range items {
			p := fmt.Sprintf("%s.%s[%d]", path, k, i)
			if sub == "" {
				if s, isStr := item.(string); isStr && s == "" {
					errs = append(errs, p+": empty string (ele-1)")
				}
				continue
			}
			errs = append(errs, validateFHIR(p, sub, item)...)
		}
	}
	return errs
}

// validateAuditEvent checks the AuditEvent rules beyond structure:
// cardinalities, required bindings, invariants.
func validateAuditEvent(path string, ae map[string]any) []string {
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, path+": "+fmt.Sprintf(format, args...)) }
	if ae["resourceType"] != "AuditEvent" {
		fail("resourceType %v", ae["resourceType"])
	}
	if id, _ := ae["id"].(string); !fhirID.MatchString(id) {
		fail("id %q does not match the FHIR id type", id)
	}
	typ, _ := ae["type"].(map[string]any)
	if typ["system"] != gateway.FHIRSystemDCM || typ["code"] == nil || typ["display"] == nil {
		fail("type %v: want a DICOM (DCM) event ID", typ)
	} else if code, _ := typ["code"].(string); code < "110100" || code > "110114" {
		fail("type code %s is not a DICOM audit event ID (110100-110114)", code)
	}
	if rec, _ := ae["recorded"].(string); !fhirInstant.MatchString(rec) {
		fail("recorded %q is not an instant", rec)
	}
	if a, ok := ae["action"]; ok && !slices.Contains([]any{"C", "R", "U", "D", "E"}, a) {
		fail("action %v not in the required value set", a)
	}
	if o, ok := ae["outcome"]; ok && !slices.Contains([]any{"0", "4", "8", "12"}, o) {
		fail("outcome %v not in the required value set", o)
	}
	agents, _ := ae["agent"].([]any)
	if len(agents) == 0 {
		fail("agent is required (1..*)")
	}
	requestors := 0
	for i, a := range agents {
		agent, _ := a.(map[string]any)
		r, ok := agent["requestor"].(bool)
		if !ok {
			fail("agent[%d].requestor is required (1..1 boolean)", i)
		}
		if r {
			requestors++
		}
		if n, ok := agent["network"].(map[string]any); ok && !slices.Contains([]any{"1", "2", "3", "4", "5"}, n["type"]) {
			fail("agent[%d].network.type %v not in the required value set", i, n["type"])
		}
	}
	if requestors != 1 {
		fail("%d requesting agents, want 1", requestors)
	}
	src, _ := ae["source"].(map[string]any)
	if src["observer"] == nil {
		fail("source.observer is required (1..1)")
	}
	entities, _ := ae["entity"].([]any)
	for i, e := range entities {
		entity, _ := e.(map[string]any)
		if entity["name"] != nil && entity["query"] != nil {
			fail("entity[%d] has both name and query (sev-1)", i)
		}
		if q, ok := entity["query"].(string); ok {
			if _, err := base64.StdEncoding.DecodeString(q); err != nil {
				fail("entity[%d].query is not base64Binary", i)
			}
		}
	}
	return errs
}

func fhirTestEvents() []*gateway.AuditEvent {
	t0 := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	actor := gateway.Principal{Name: "viewer-1", Roles: []gateway.Role{gateway.RoleRead}, Address: "10.0.0.7", Method: "token"}
	var evs []*gateway.AuditEvent
	for i, action := range []string{
		gateway.ActionStore, gateway.ActionQuery, gateway.ActionRetrieve, gateway.ActionDelete,
		gateway.ActionTransferCreated, gateway.ActionTransferStarted, gateway.ActionTransferComplete,
		gateway.ActionTransferFailed, gateway.ActionTransferCancel, gateway.ActionTransferRetried,
		gateway.ActionTransferVerified, gateway.ActionAuthFailure, gateway.ActionAccessDenied,
		gateway.ActionAdmin, gateway.ActionAuditUsed, "something.new",
	} {
		ev := &gateway.AuditEvent{
			ID: gateway.AuditRecordID(int64(i + 1)), Seq: int64(i + 1), Time: t0.Add(time.Duration(i) * time.Second),
			Gateway: "hampshire", Actor: actor, Action: action, Outcome: gateway.OutcomeSuccess,
			StudyUIDs: []string{"1.2.826.0.1.3680043.8.498.1"}, PatientIDs: []string{"PAT-0001"},
			Detail: map[string]any{"route": "/dicomweb/studies", "count": 2},
		}
		switch action {
		case gateway.ActionQuery:
			ev.Detail["query"] = "PatientID=PAT-0001&limit=10"
		case gateway.ActionAuthFailure, gateway.ActionAccessDenied:
			ev.Outcome, ev.Detail["reason"] = gateway.OutcomeFailure, "unknown token"
			ev.StudyUIDs, ev.PatientIDs = nil, nil
			ev.Actor = gateway.Principal{Name: "anonymous", Address: "gw.example.nhs.uk"}
		case gateway.ActionTransferFailed:
			ev.Outcome = gateway.OutcomeError
		}
		if len(action) > 9 && action[:9] == "transfer." {
			ev.Detail["transfer_id"], ev.Detail["destination"] = "tr-1", "surrey"
		}
		evs = append(evs, ev)
	}
	return evs
}

func TestFHIRAuditBundleValidates(t *testing.T) {
	evs := fhirTestEvents()
	b := gateway.FHIRAuditBundle(evs, "https://gw/api/v1/audit?format=fhir", "https://gw/api/v1/audit?format=fhir&next=x", time.Now())
	raw, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	errs := validateFHIR("Bundle", "Bundle", doc)
	if doc["resourceType"] != "Bundle" || doc["type"] != "searchset" {
		errs = append(errs, fmt.Sprintf("Bundle resourceType %v type %v", doc["resourceType"], doc["type"]))
	}
	entries, _ := doc["entry"].([]any)
	if got, want := len(entries), len(evs); got != want {
		t.Fatalf("%d entries, want %d", got, want)
	}
	for i, e := range entries {
		ae, _ := e.(map[string]any)["resource"].(map[string]any)
		errs = append(errs, validateAuditEvent(fmt.Sprintf("entry[%d](%s)", i, evs[i].Action), ae)...)
	}
	for _, e := range errs {
		t.Error(e)
	}
}

func TestFHIRAuditEventCodes(t *testing.T) {
	byAction := map[string]*gateway.FHIRAuditEvent{}
	for _, ev := range fhirTestEvents() {
		byAction[ev.Action] = gateway.FHIRAuditEventOf(ev)
	}
	for _, tt := range []struct {
		action, code, fhirAction, outcome string
	}{
		{gateway.ActionStore, "110104", "C", "0"},
		{gateway.ActionQuery, "110112", "E", "0"},
		{gateway.ActionRetrieve, "110104", "R", "0"},
		{gateway.ActionDelete, "110105", "D", "0"},
		{gateway.ActionTransferCreated, "110102", "E", "0"},
		{gateway.ActionTransferComplete, "110104", "R", "0"},
		{gateway.ActionTransferFailed, "110104", "R", "8"},
		{gateway.ActionAuthFailure, "110114", "E", "4"},
		{gateway.ActionAccessDenied, "110113", "E", "4"},
		{gateway.ActionAuditUsed, "110101", "R", "0"},
		{gateway.ActionAdmin, "110100", "E", "0"},
	} {
		ae := byAction[tt.action]
		if got, want := ae.Type.Code, tt.code; got != want {
			t.Errorf("%s: type %v, want %v", tt.action, got, want)
		}
		if got, want := ae.Action, tt.fhirAction; got != want {
			t.Errorf("%s: action %v, want %v", tt.action, got, want)
		}
		if got, want := ae.Outcome, tt.outcome; got != want {
			t.Errorf("%s: outcome %v, want %v", tt.action, got, want)
		}
	}

	store := byAction[gateway.ActionStore]
	if got, want := store.Agent[0].Who.Display, "viewer-1"; got != want || !store.Agent[0].Requestor {
		t.Errorf("requesting agent %+v, want %s", store.Agent[0], want)
	}
	if got, want := store.Agent[0].Network.Type, "2"; got != want {
		t.Errorf("network type for an IP %v, want %v", got, want)
	}
	if got, want := byAction[gateway.ActionAuthFailure].Agent[0].Network.Type, "1"; got != want {
		t.Errorf("network type for a host name %v, want %v", got, want)
	}
	if got, want := store.Source.Observer.Display, "hampshire"; got != want {
		t.Errorf("source.observer %v, want %v", got, want)
	}
	var patient, study bool
	for _, e := range store.Entity {
		switch {
		case e.Role != nil && e.Role.Code == "1":
			patient = e.What.Identifier.Value == "PAT-0001" && e.Type.Code == "1"
		case e.Role != nil && e.Role.Code == "3":
			study = e.What.Identifier.Value == "urn:oid:1.2.826.0.1.3680043.8.498.1" &&
				e.What.Identifier.Type.Coding[0].Code == "110180"
		}
	}
	if !patient || !study {
		t.Errorf("store entities %+v: want the patient (role 1) and the study (role 3, 110180)", store.Entity)
	}
	var query string
	for _, e := range byAction[gateway.ActionQuery].Entity {
		if e.Role != nil && e.Role.Code == "24" {
			b, _ := base64.StdEncoding.DecodeString(e.Query)
			query = string(b)
		}
	}
	if got, want := query, "PatientID=PAT-0001&limit=10"; got != want {
		t.Errorf("query entity %q, want %q", got, want)
	}
	if got, want := byAction[gateway.ActionAuthFailure].OutcomeDesc, "unknown token"; got != want {
		t.Errorf("outcomeDesc %q, want %q", got, want)
	}
}

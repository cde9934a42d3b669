package gateway

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// TestRestatedLatest: the record restateStudy writes is the instance that
// arrived last (not the last UID), flagged with the other identities in
// the order they arrived, once each, at most maxConflictIdentities of them
// (the first and the most recent), or unflagged when every instance left
// is its patient's; the records it was given are not changed.
func TestRestatedLatest(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	rec := func(sop string, at int, pid string, flagged ...PatientIdentity) *InstanceRecord {
		r := &InstanceRecord{StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.1", SOPInstanceUID: sop,
			StoredAt: t0.Add(time.Duration(at) * time.Second),
			Metadata: dicomcodec.Dataset{dicomcodec.TagPatientID: loAttribute(pid), TagIssuerOfPatientID: loAttribute("SURREY")}}
		if len(flagged) > 0 {
			setFlag(r, flagged, nil)
		}
		return r
	}
	ids := func(r *InstanceRecord) (own string, others []string, flagged bool) {
		ps, flagged := IdentityConflicts(r.Metadata)
		for _, p := range ps {
			others = append(others, p.ID)
		}
		return r.Metadata.String(dicomcodec.TagPatientID), others, flagged
	}

	// UIDs sort against the order of arrival: C (9) came last, then B, A first.
	recs := []*InstanceRecord{
		rec("1.2.3.1.9", 3, "C300", PatientIdentity{"A100", "SURREY"}, PatientIdentity{"B200", "SURREY"}),
		rec("1.2.3.1.1", 1, "A100"),
		rec("1.2.3.1.5", 2, "B200", PatientIdentity{"A100", "SURREY"}),
		rec("1.2.3.1.2", 4, "B200", PatientIdentity{"A100", "SURREY"}, PatientIdentity{"C300", "SURREY"}),
	}
	given := maps.Clone(recs[3].Metadata)
	got := restatedLatest(recs, nil, nil)
	if own, others, flagged := ids(got); got.SOPInstanceUID != "1.2.3.1.2" || own != "B200" || !flagged || !slices.Equal(others, []string{"A100", "C300"}) {
		t.Errorf("latest %s: %s flagged %v naming %v, want 1.2.3.1.2: B200 naming [A100 C300]", got.SOPInstanceUID, own, flagged, others)
	}
	if got.Metadata.String(TagGatewayPrivateCreator) != GatewayPrivateCreator {
		t.Errorf("the flag's private creator is missing: %v", got.Metadata)
	}
	if !reflect.DeepEqual(recs[3].Metadata, given) {
		t.Errorf("the record given was changed: %v", recs[3].Metadata)
	}

	// B's instances deleted: A and C are left, C last, flagged naming A only.
	got = restatedLatest([]*InstanceRecord{recs[0], recs[1]}, nil, nil)
	if own, others, _ := ids(got); own != "C300" || !slices.Equal(others, []string{"A100"}) {
		t.Errorf("A and C left: %s naming %v, want C300 naming [A100]", own, others)
	}
	// Only A's: the flag and its private creator go.
	alone := rec("1.2.3.1.7", 5, "A100", PatientIdentity{"B200", "SURREY"})
	got = restatedLatest([]*InstanceRecord{recs[1], alone}, nil, nil)
	if _, flagged := IdentityConflicts(got.Metadata); flagged || got.Metadata.String(TagGatewayPrivateCreator) != "" {
		t.Errorf("A's alone: still flagged %v, creator %q", flagged, got.Metadata.String(TagGatewayPrivateCreator))
	}
	if _, flagged := IdentityConflicts(alone.Metadata); !flagged {
		t.Errorf("the record given lost its flag")
	}

	// More identities than a flag names: the first and the most recent.
	var many []*InstanceRecord
	for i := range maxConflictIdentities + 3 {
		many = append(many, rec(fmt.Sprintf("1.2.3.1.%d", 100+i), i, fmt.Sprintf("P%02d", i)))
	}
	_, others, _ := ids(restatedLatest(many, nil, nil))
	if len(others) != maxConflictIdentities || others[0] != "P00" || others[1] != "P03" || others[len(others)-1] != fmt.Sprintf("P%02d", maxConflictIdentities+1) {
		t.Errorf("%d identities named: %v", len(others), others)
	}
}

package gateway_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// TestValidateUID: a leading zero in a component (seen from an ultrasound
// vendor) is the one PS3.5 9.1 rule tolerated, and reported by
// UIDDeviation; everything that keeps a UID safe as a storage key and in a
// URL is still refused.
func TestValidateUID(t *testing.T) {
	for _, tt := range []struct {
		uid       string
		ok        bool
		deviation bool
	}{
		{"1.2.840.10008.5.1.4.1.1.2", true, false},
		{"1.2.0.3", true, false}, // a lone 0 is a valid component
		{"0", true, false},
		{"1.02.3", true, true},
		{"1.2.840.113619.2.55.3.0604688119.1", true, true},
		{"01.2", true, true},
		{"1.2.00", true, true},
		{strings.Repeat("1", 64), true, false},
		{"1.2." + strings.Repeat("0", 60), true, true},
		{"", false, false},
		{strings.Repeat("1", 65), false, false},
		{"1.2." + strings.Repeat("0", 61), false, false},
		{"1..2", false, false}, {".1.2", false, false}, {"1.2.", false, false}, {".", false, false},
		{"1.2/../3", false, false}, {"1.2%2F3", false, false}, {"1.2\x003", false, false},
		{"1.2.3 ", false, false}, {" 1.2.3", false, false}, {"+1.2", false, false}, {"-1.2", false, false},
		{"1.2.٣", false, false}, {"1.2.e3", false, false}, {"1.2\n", false, false},
	} {
		err := gateway.ValidateUID(tt.uid)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateUID(%q) = %v, want ok=%v", tt.uid, err, tt.ok)
		}
		if err != nil && !errors.Is(err, gateway.ErrInvalid) {
			t.Errorf("ValidateUID(%q) = %v, not ErrInvalid", tt.uid, err)
		}
		if tt.ok {
			if got := dicomcodec.UIDDeviation(tt.uid) != ""; got != tt.deviation {
				t.Errorf("UIDDeviation(%q) reported=%v, want %v", tt.uid, got, tt.deviation)
			}
		}
	}
}

// TestInstanceKeyWithLeadingZero: a tolerated UID makes a key that
// ParseInstanceKey (reindex) reads back.
func TestInstanceKeyWithLeadingZero(t *testing.T) {
	study, series, sop := "1.2.840.0113.1", "1.2.840.0113.1.01", "1.2.840.0113.1.01.007"
	key := gateway.InstanceKey(study, series, sop)
	if want := "studies/1.2.840.0113.1/series/1.2.840.0113.1.01/instances/1.2.840.0113.1.01.007.dcm"; key != want {
		t.Fatalf("key %q, want %q", key, want)
	}
	st, se, so, ok := gateway.ParseInstanceKey(key)
	if !ok || st != study || se != series || so != sop {
		t.Fatalf("ParseInstanceKey(%q) = %q %q %q %v", key, st, se, so, ok)
	}
	rec := &gateway.InstanceRecord{SOPClassUID: "1.2.840.10008.5.1.4.1.1.6.1", SOPInstanceUID: sop, StudyInstanceUID: study, SeriesInstanceUID: series}
	if got := rec.UIDDeviations(); len(got) != 3 || !strings.Contains(got[0], "SOP Instance UID "+sop) {
		t.Errorf("UIDDeviations() = %q, want SOP Instance, Study and Series UIDs named", got)
	}
}

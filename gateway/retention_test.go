package gateway_test

import (
	"errors"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
)

// TestRetentionPolicyValidate: a policy read from configuration is refused
// with ErrInvalid for negative limits and for rules without a name or
// modality or with a name used twice; Enabled says whether it can delete.
func TestRetentionPolicyValidate(t *testing.T) {
	for _, tt := range []struct {
		name    string
		p       gateway.RetentionPolicy
		ok      bool
		enabled bool
	}{
		{"none", gateway.RetentionPolicy{}, true, false},
		{"age", gateway.RetentionPolicy{MaxAge: time.Hour}, true, true},
		{"bytes", gateway.RetentionPolicy{MaxBytes: 1}, true, true},
		{"rule only", gateway.RetentionPolicy{Rules: []gateway.RetentionRule{{Name: "ct", Modality: "CT", MaxAge: time.Hour}}}, true, true},
		{"rule keeping for ever", gateway.RetentionPolicy{Rules: []gateway.RetentionRule{{Name: "ct", Modality: "CT"}}}, true, false},
		{"negative age", gateway.RetentionPolicy{MaxAge: -1}, false, false},
		{"negative bytes", gateway.RetentionPolicy{MaxBytes: -1}, false, true},
		{"negative batch", gateway.RetentionPolicy{MaxAge: time.Hour, BatchSize: -1}, false, true},
		{"rule without modality", gateway.RetentionPolicy{Rules: []gateway.RetentionRule{{Name: "ct", MaxAge: time.Hour}}}, false, true},
		{"rule without name", gateway.RetentionPolicy{Rules: []gateway.RetentionRule{{Modality: "CT", MaxAge: time.Hour}}}, false, true},
		{"name twice", gateway.RetentionPolicy{Rules: []gateway.RetentionRule{{Name: "a", Modality: "CT"}, {Name: "a", Modality: "MR"}}}, false, false},
	} {
		err := tt.p.Validate()
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, gateway.ErrInvalid)) {
			t.Errorf("%s: Validate() = %v, want ok=%v (ErrInvalid otherwise)", tt.name, err, tt.ok)
		}
		if tt.ok && tt.p.Enabled() != tt.enabled {
			t.Errorf("%s: Enabled() = %v, want %v", tt.name, tt.p.Enabled(), tt.enabled)
		}
	}
}

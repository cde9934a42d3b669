package gateway_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
)

func chainTestEvent() *gateway.AuditEvent {
	return &gateway.AuditEvent{
		ID: gateway.AuditRecordID(2), Seq: 2, Time: time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC),
		Gateway: "hampshire", Actor: gateway.Principal{Name: "pacs-1", Roles: []gateway.Role{gateway.RoleStore}},
		Action: gateway.ActionStore, Outcome: gateway.OutcomeSuccess,
		StudyUIDs: []string{"1.2.3"}, PatientIDs: []string{"PAT-1"},
		Detail:   map[string]any{"z": 1, "a": map[string]any{"y": true, "b": nil}},
		PrevHash: "ab", Hash: "ignored",
	}
}

// TestAuditCanonical pins the canonical form: it is a storage format, and a
// change to it would break every stored chain.
func TestAuditCanonical(t *testing.T) {
	got, err := gateway.AuditCanonical(chainTestEvent())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"action":"store","actor":{"name":"pacs-1","roles":["store"]},"detail":{"a":{"b":null,"y":true},"z":1},` +
		`"gateway":"hampshire","id":"0000000000000002","outcome":"success","patient_ids":["PAT-1"],"prev_hash":"ab",` +
		`"seq":2,"study_uids":["1.2.3"],"time":"2026-01-02T03:04:05.0000006Z"}`
	if string(got) != want {
		t.Fatalf("canonical form\n got %s\nwant %s", got, want)
	}
	h, err := gateway.AuditHash(chainTestEvent())
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(append([]byte("ab"), want...))
	if got, want := h, hex.EncodeToString(sum[:]); got != want {
		t.Fatalf("AuditHash=%v, want %v", got, want)
	}
}

// TestAuditHashSurvivesStorage checks that a sealed record decoded from its
// stored JSON hashes to the same value, large integers included.
func TestAuditHashSurvivesStorage(t *testing.T) {
	ev := chainTestEvent()
	ev.Detail["big"] = int64(1)<<62 + 1
	ev.Detail["float"] = 0.1
	raw, err := gateway.SealAuditEvent(ev, 7, "cafe", nil)
	if err != nil {
		t.Fatal(err)
	}
	back, err := gateway.DecodeAuditEvent(raw)
	if err != nil {
		t.Fatal(err)
	}
	h, err := gateway.AuditHash(back)
	if err != nil {
		t.Fatal(err)
	}
	if h != ev.Hash || back.Hash != ev.Hash {
		t.Fatalf("hash after storage %s (stored %s), want %s", h, back.Hash, ev.Hash)
	}
}

func TestAuditCursor(t *testing.T) {
	for _, n := range []int64{0, 1, 1 << 40} {
		got, err := gateway.DecodeAuditCursor(gateway.EncodeAuditCursor(n))
		if err != nil || got != n {
			t.Errorf("cursor round trip of %d = %d, %v", n, got, err)
		}
	}
	for _, bad := range []string{"x", "YTE6", "YTI6MQ", "%%%"} {
		if _, err := gateway.DecodeAuditCursor(bad); !errors.Is(err, gateway.ErrInvalid) {
			t.Errorf("DecodeAuditCursor(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestAuditFilterMatch(t *testing.T) {
	ev := chainTestEvent()
	for _, tt := range []struct {
		f    gateway.AuditFilter
		want bool
	}{
		{gateway.AuditFilter{}, true},
		{gateway.AuditFilter{StudyUID: "1.2.3", PatientID: "PAT-1", Actor: "pacs-1", Action: gateway.ActionStore}, true},
		{gateway.AuditFilter{StudyUID: "1.2.4"}, false},
		{gateway.AuditFilter{PatientID: "PAT-2"}, false},
		{gateway.AuditFilter{Actor: "viewer"}, false},
		{gateway.AuditFilter{Action: gateway.ActionQuery}, false},
		{gateway.AuditFilter{Since: ev.Time}, true},
		{gateway.AuditFilter{Since: ev.Time.Add(time.Nanosecond)}, false},
		{gateway.AuditFilter{Until: ev.Time}, false},
		{gateway.AuditFilter{Until: ev.Time.Add(time.Nanosecond)}, true},
	} {
		if got := tt.f.Match(ev); got != tt.want {
			t.Errorf("%+v.Match = %v, want %v", tt.f, got, tt.want)
		}
	}
}

// auditCanonicalSlow is the definition of the canonical form: Marshal,
// decode with UseNumber, Marshal again (maps sort their keys).
func auditCanonicalSlow(ev *gateway.AuditEvent) ([]byte, error) {
	c := *ev
	c.Hash = ""
	raw, err := json.Marshal(&c)
	if err != nil {
		return nil, err
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// TestAuditCanonicalMatchesDefinition compares the direct encoder with the
// definition, before and after a trip through storage, on awkward values.
func TestAuditCanonicalMatchesDefinition(t *testing.T) {
	type point struct {
		X int     `json:"x"`
		Y float64 `json:"y,omitempty"`
	}
	var nilMap map[string]any
	details := []map[string]any{
		nil,
		{},
		{"s": "a<b>&c\u2028", "bad": "x\xff\xfey", "\xffkey": 1, "é": 2, "E": 3},
		{"n": json.Number("12345678901234567890"), "f": 0.1, "f32": float32(1.5), "neg": -7, "u": uint64(1) << 63, "b": false, "nil": nil},
		{"nested": map[string]any{"z": []any{1, "2", nil, map[string]any{}}, "a": []any{}}, "nilmap": nilMap},
		{"struct": point{X: 1}, "strs": []string{"a", "b"}, "ss": map[string]string{"k": "v"}, "ptr": &point{Y: 2.5}, "bytes": []byte("hi")},
	}
	for i, d := range details {
		ev := chainTestEvent()
		ev.Detail = d
		ev.Actor.Address = "10.0.0.1\xff"
		ev.StudyUIDs = nil
		if i%2 == 1 {
			ev.PatientIDs, ev.PrevHash = nil, ""
		}
		want, err := auditCanonicalSlow(ev)
		if err != nil {
			t.Fatal(err)
		}
		got, err := gateway.AuditCanonical(ev)
		if err != nil {
			t.Fatalf("detail %d: %v", i, err)
		}
		if string(got) != string(want) {
			t.Errorf("detail %d:\n got %s\nwant %s", i, got, want)
		}
		raw, err := gateway.SealAuditEvent(ev, 3, "prev", nil)
		if err != nil {
			t.Fatal(err)
		}
		back, err := gateway.DecodeAuditEvent(raw)
		if err != nil {
			t.Fatal(err)
		}
		if h, err := gateway.AuditHash(back); err != nil || h != ev.Hash {
			t.Errorf("detail %d: hash after storage %s, %v; want %s", i, h, err, ev.Hash)
		}
	}
}

func BenchmarkAuditHash(b *testing.B) {
	ev := chainTestEvent()
	for b.Loop() {
		if _, err := gateway.AuditHash(ev); err != nil {
			b.Fatal(err)
		}
	}
}

package gateway_test

import (
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/bolt"
)

func routed(modality, institution string) *gateway.InstanceRecord {
	return &gateway.InstanceRecord{
		StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.1", SOPInstanceUID: "1.2.3.1.1",
		Metadata: dicomcodec.Dataset{
			dicomcodec.TagModality: {VR: "CS", Value: []any{modality}},
			"00080080":             {VR: "LO", Value: []any{institution}},
		},
	}
}

func TestRouteRuleMatches(t *testing.T) {
	rule := gateway.RouteRule{
		Name: "ct", Modality: []string{"CT", "MR"}, Source: []string{"pacs-1"},
		Match: map[string]string{"InstitutionName": "Hampshire*"}, Destinations: []string{"surrey"},
	}
	for _, tt := range []struct {
		rec    *gateway.InstanceRecord
		source string
		want   bool
	}{
		{routed("CT", "Hampshire General"), "pacs-1", true},
		{routed("MR", "Hampshire"), "pacs-1", true},
		{routed("US", "Hampshire General"), "pacs-1", false},
		{routed("CT", "Surrey Royal"), "pacs-1", false},
		{routed("CT", "Hampshire General"), "pacs-2", false},
	} {
		if got := rule.Matches(tt.rec, tt.source); got != tt.want {
			t.Errorf("Matches(%s, %s) = %v, want %v", tt.rec.Metadata.String(dicomcodec.TagModality), tt.source, got, tt.want)
		}
	}
	peers := []gateway.Peer{{Name: "surrey", URL: "http://s/dicomweb"}}
	if err := rule.Validate(peers); err != nil {
		t.Errorf("Validate: %v", err)
	}
	bad := rule
	bad.Destinations = []string{"wales"}
	if err := bad.Validate(peers); err == nil {
		t.Error("Validate accepted an unknown destination")
	}
	bad = rule
	bad.Match = map[string]string{"NoSuchKeyword": "x"}
	if err := bad.Validate(peers); err == nil {
		t.Error("Validate accepted an unknown attribute")
	}
	// A rule that coerces the identity for a peer that de-identifies: its
	// transfers failed with a false "local copy is corrupt".
	bad = rule
	bad.Coerce = &gateway.CoerceRule{To: gateway.CoerceNational}
	research := []gateway.Peer{{Name: "surrey", URL: "http://s/dicomweb", Deidentify: &gateway.DeidentifyRule{Profile: gateway.ProfileBasic}}}
	if err := bad.Validate(research); err == nil || !strings.Contains(err.Error(), "deidentify") {
		t.Errorf("Validate of coerce towards a de-identifying peer: %v, want a refusal", err)
	}
}

// fakeClock is an injected clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// TestRouterSettles: instances of one study arriving over time become one
// transfer per destination, handed out only after the settle time has
// passed since the last of them; an instance after that starts a new one.
func TestRouterSettles(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)}
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	q, err := bolt.NewQueue(db, gateway.QueueOptions{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	peers := []gateway.Peer{{Name: "surrey", URL: "http://s/dicomweb"}, {Name: "wales", URL: "http://w/dicomweb"}}
	tr := &gateway.Transfers{Name: "hampshire", Queue: q, Peers: peers, Now: clock.Now}
	r := &gateway.Router{Transfers: tr, Now: clock.Now, Rules: []gateway.RouteRule{
		{Name: "ct", Modality: []string{"CT"}, Destinations: []string{"surrey"}, SettleTime: time.Minute},
		{Name: "all", Destinations: []string{"surrey", "wales"}, Priority: gateway.PriorityUrgent, SettleTime: 50 * time.Second},
	}}
	ctx := t.Context()
	claim := func() *gateway.Lease {
		t.Helper()
		l, err := q.Claim(ctx, "w", 0)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	for range 3 {
		if err := r.Ingested(ctx, routed("CT", "Hampshire"), "pacs-1"); err != nil {
			t.Fatal(err)
		}
		clock.Add(40 * time.Second)
		if l := claim(); l != nil {
			t.Fatalf("a transfer was handed out before its study settled: %s", l.TransferID)
		}
	}
	all, err := q.List(ctx, gateway.TransferFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(all), 2; got != want {
		t.Fatalf("%d transfers, want one per destination (%d)", got, want)
	}
	for _, x := range all {
		if x.Priority != gateway.PriorityUrgent || x.CreatedBy != "route:ct" && x.CreatedBy != "route:all" {
			t.Errorf("transfer %s to %s: priority %s created by %s", x.ID, x.Destination, x.Priority, x.CreatedBy)
		}
	}
	clock.Add(21 * time.Second) // 61 s after the last instance
	got := map[string]bool{}
	for l := claim(); l != nil; l = claim() {
		got[l.TransferID] = true
	}
	if len(got) != 2 {
		t.Fatalf("%d transfers handed out after settling, want 2", len(got))
	}
	if err := r.Ingested(ctx, routed("CT", "Hampshire"), "pacs-1"); err != nil {
		t.Fatal(err)
	}
	all, _ = q.List(ctx, gateway.TransferFilter{})
	if got, want := len(all), 4; got != want {
		t.Fatalf("%d transfers after a late instance, want %d", got, want)
	}
}

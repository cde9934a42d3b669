package dicomweb_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	bbolt "go.etcd.io/bbolt"

	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
	"github.com/dicom-gateway/gateway/storage/bolt"
	"github.com/dicom-gateway/gateway/storage/filesystem"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// switchAuditor passes events to a real audit log until fail is set, then
// fails as an unreachable log would: a fault the real log cannot produce on
// demand.
type switchAuditor struct {
	next gateway.Auditor
	fail atomic.Bool
}

func (a *switchAuditor) Record(ctx context.Context, ev *gateway.AuditEvent) error {
	if a.fail.Load() {
		return fmt.Errorf("audit store unreachable: %w", gateway.ErrUnavailable)
	}
	return a.next.Record(ctx, ev)
}

// auditGateway is a gateway with auth, embedded storage and a real bbolt
// audit log.
type auditGateway struct {
	srv     *httptest.Server
	db      *bolt.DB
	log     gateway.AuditLog
	auditor *switchAuditor
}

// Tokens of the audit API tests, by principal name.
var auditTokens = map[string]struct {
	token string
	roles []gateway.Role
}{
	"pacs-1":  {"pacs-token", []gateway.Role{gateway.RoleStore}},
	"viewer":  {"viewer-token", []gateway.Role{gateway.RoleRead}},
	"admin-1": {"admin-token", []gateway.Role{gateway.RoleAdmin}},
}

func newAuditGateway(t *testing.T) *auditGateway {
	t.Helper()
	b := backendtest.Open(t, backendtest.Embedded, backendtest.Options{GatewayName: "hampshire"})
	blobs, index, log, db := b.Blobs, b.Index, b.AuditLog, b.DB
	var cfg dicomweb.AuthConfig
	for name, tok := range auditTokens {
		sum := sha256.Sum256([]byte(tok.token))
		cfg.Tokens = append(cfg.Tokens, dicomweb.TokenConfig{Name: name, SHA256: hex.EncodeToString(sum[:]), Roles: tok.roles})
	}
	auth, err := dicomweb.NewAuthenticator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	auditor := &switchAuditor{next: log}
	s := testWiring{Config: dicomweb.Config{Auth: auth}, ServiceDeps: gateway.ServiceDeps{Name: "hampshire", Blobs: blobs, Index: index, Auditor: auditor, AuditLog: log, Ingester: &gateway.Ingester{Blobs: blobs, Index: index}}}.server()
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return &auditGateway{srv: srv, db: db, log: log, auditor: auditor}
}

// do sends a request as principal ("" = no credentials) and returns the
// status, headers and body.
func (g *auditGateway) do(t *testing.T, principal, method, path, contentType string, body io.Reader, accept string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, g.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if principal != "" {
		req.Header.Set("Authorization", "Bearer "+auditTokens[principal].token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

func (g *auditGateway) stowOne(t *testing.T, sop int) int {
	t.Helper()
	body, boundary := multipartBody(t, dicomPart(makeInstance(testStudy, testSeries, testSOP(sop), 4, 4, 1)))
	status, _, _ := g.do(t, "pacs-1", http.MethodPost, "/dicomweb/studies",
		`multipart/related; type="application/dicom"; boundary=`+boundary, body, "application/dicom+json")
	return status
}

func (g *auditGateway) qido(t *testing.T) int {
	status, _, _ := g.do(t, "viewer", http.MethodGet, "/dicomweb/studies?PatientID=PID-4242", "", nil, "application/dicom+json")
	return status
}

func (g *auditGateway) wado(t *testing.T) int {
	status, _, _ := g.do(t, "viewer", http.MethodGet, "/dicomweb/studies/"+testStudy+"/metadata", "", nil, "application/dicom+json")
	return status
}

// auditAnswer is the JSON body of GET /api/v1/audit.
type auditAnswer struct {
	Events []gateway.AuditEvent `json:"events"`
	Next   *string              `json:"next"`
}

func (g *auditGateway) audit(t *testing.T, query string) auditAnswer {
	t.Helper()
	status, _, body := g.do(t, "admin-1", http.MethodGet, "/api/v1/audit?"+query, "", nil, "")
	if status != http.StatusOK {
		t.Fatalf("GET /api/v1/audit?%s: status %d: %s", query, status, body)
	}
	var a auditAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		t.Fatalf("audit answer: %v: %s", err, body)
	}
	return a
}

func findEvent(evs []gateway.AuditEvent, action, actor string) *gateway.AuditEvent {
	for i := range evs {
		if evs[i].Action == action && evs[i].Actor.Name == actor {
			return &evs[i]
		}
	}
	return nil
}

// TestAuditAPIRecordsEveryAccess drives STOW, QIDO, WADO, a bad token and a
// missing role through the HTTP surface, then reads them back as an admin.
func TestAuditAPIRecordsEveryAccess(t *testing.T) {
	g := newAuditGateway(t)
	if got := g.stowOne(t, 0); got != http.StatusOK {
		t.Fatalf("STOW status %d", got)
	}
	if got := g.qido(t); got != http.StatusOK {
		t.Fatalf("QIDO status %d", got)
	}
	if got := g.wado(t); got != http.StatusOK {
		t.Fatalf("WADO status %d", got)
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, g.srv.URL+"/dicomweb/studies", nil)
	req.Header.Set("Authorization", "Bearer wrong-token")
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("bad token: status %d", resp.StatusCode)
	}
	if status, _, _ := g.do(t, "viewer", http.MethodGet, "/api/v1/audit", "", nil, ""); status != http.StatusForbidden {
		t.Fatalf("audit as a reader: status %d, want 403", status)
	}

	all := g.audit(t, "limit=1000").Events
	for _, tt := range []struct {
		action, actor string
		patient       bool
	}{
		{gateway.ActionStore, "pacs-1", true},
		{gateway.ActionQuery, "viewer", false},
		{gateway.ActionRetrieve, "viewer", true},
		{gateway.ActionAuthFailure, "anonymous", false},
		{gateway.ActionAccessDenied, "viewer", false},
	} {
		ev := findEvent(all, tt.action, tt.actor)
		if ev == nil {
			t.Errorf("no %s event by %s in %+v", tt.action, tt.actor, all)
			continue
		}
		if ev.Gateway != "hampshire" || ev.Time.IsZero() || ev.Hash == "" {
			t.Errorf("%s event lacks chain fields: %+v", tt.action, ev)
		}
		if tt.patient && (!slices.Contains(ev.PatientIDs, "PID-4242") || !slices.Contains(ev.StudyUIDs, testStudy)) {
			t.Errorf("%s event: patients %v studies %v, want PID-4242 and %s", tt.action, ev.PatientIDs, ev.StudyUIDs, testStudy)
		}
	}

	// Filters reach the log, and the query above was itself audited.
	byPatient := g.audit(t, "patient_id=PID-4242").Events
	for _, ev := range byPatient {
		if !slices.Contains(ev.PatientIDs, "PID-4242") {
			t.Errorf("patient_id filter returned %+v", ev)
		}
	}
	if findEvent(byPatient, gateway.ActionStore, "pacs-1") == nil || findEvent(byPatient, gateway.ActionRetrieve, "viewer") == nil {
		t.Errorf("patient_id=PID-4242 lacks the store or retrieve: %+v", byPatient)
	}
	used := g.audit(t, "action=audit.used&actor=admin-1").Events
	if len(used) < 2 {
		t.Fatalf("%d audit.used events, want the two queries before", len(used))
	}
	if got, want := used[1].PatientIDs, []string{"PID-4242"}; !slices.Equal(got, want) {
		t.Errorf("audit.used for a patient query names patients %v, want %v", got, want)
	}
}

func TestAuditAPIPagingAndFHIR(t *testing.T) {
	g := newAuditGateway(t)
	for i := range 3 {
		if got := g.stowOne(t, i); got != http.StatusOK {
			t.Fatalf("STOW status %d", got)
		}
	}
	var ids []string
	query := "action=store&limit=2"
	for range 10 {
		a := g.audit(t, query)
		for _, ev := range a.Events {
			ids = append(ids, ev.ID)
		}
		if a.Next == nil {
			break
		}
		query = "action=store&limit=2&next=" + url.QueryEscape(*a.Next)
	}
	if got, want := len(ids), 3; got != want {
		t.Fatalf("paged store events %v, want %d", ids, want)
	}

	status, header, body := g.do(t, "admin-1", http.MethodGet, "/api/v1/audit?format=fhir&action=store&limit=2", "", nil, "")
	if status != http.StatusOK {
		t.Fatalf("FHIR status %d: %s", status, body)
	}
	if ct := header.Get("Content-Type"); !strings.HasPrefix(ct, "application/fhir+json") {
		t.Errorf("Content-Type %q, want application/fhir+json", ct)
	}
	var bundle gateway.FHIRBundle
	if err := json.Unmarshal(body, &bundle); err != nil {
		t.Fatal(err)
	}
	if bundle.ResourceType != "Bundle" || bundle.Type != "searchset" || len(bundle.Entry) != 2 {
		t.Fatalf("bundle %s %s with %d entries, want a searchset of 2", bundle.ResourceType, bundle.Type, len(bundle.Entry))
	}
	ae := bundle.Entry[0].Resource
	if ae.Type.Code != "110104" || ae.Action != "C" || ae.Agent[0].Name != "pacs-1" {
		t.Errorf("first AuditEvent %+v", ae)
	}
	var next string
	for _, l := range bundle.Link {
		if l.Relation == "next" {
			next = l.URL
		}
	}
	u, err := url.Parse(next)
	if err != nil || u.Query().Get("next") == "" || u.Query().Get("format") != "fhir" {
		t.Fatalf("next link %q", next)
	}
	status, _, body = g.do(t, "admin-1", http.MethodGet, u.RequestURI(), "", nil, "")
	if err := json.Unmarshal(body, &bundle); status != http.StatusOK || err != nil || len(bundle.Entry) != 1 {
		t.Fatalf("next page: status %d, %d entries, %v", status, len(bundle.Entry), err)
	}
}

func TestAuditAPIRejectsBadParameters(t *testing.T) {
	g := newAuditGateway(t)
	for _, q := range []string{
		"since=yesterday", "until=2026-13-01", "limit=0", "limit=abc", "limit=1001", "next=garbage", "format=xml",
	} {
		status, _, body := g.do(t, "admin-1", http.MethodGet, "/api/v1/audit?"+q, "", nil, "")
		if status != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400: %s", q, status, body)
		}
	}
	for _, q := range []string{"since=2026-01-01", "since=2026-01-01T10:00:00Z&until=2026-01-02T00:00:00%2B01:00", "limit=1000"} {
		if status, _, body := g.do(t, "admin-1", http.MethodGet, "/api/v1/audit?"+q, "", nil, ""); status != http.StatusOK {
			t.Errorf("%s: status %d, want 200: %s", q, status, body)
		}
	}
}

func TestAuditAPIVerify(t *testing.T) {
	g := newAuditGateway(t)
	for i := range 3 {
		if got := g.stowOne(t, i); got != http.StatusOK {
			t.Fatalf("STOW status %d", got)
		}
	}
	verify := func() gateway.VerifyResult {
		status, _, body := g.do(t, "admin-1", http.MethodGet, "/api/v1/audit/verify", "", nil, "")
		if status != http.StatusOK {
			t.Fatalf("verify status %d: %s", status, body)
		}
		var res gateway.VerifyResult
		if err := json.Unmarshal(body, &res); err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := verify(); !res.OK || res.Records != 3 {
		t.Fatalf("verify = %+v, want ok with 3 records", res)
	}
	// Someone with the data directory rewrites the second STOW's outcome.
	err := g.db.Bolt().Update(func(tx *bbolt.Tx) error {
		recs := tx.Bucket([]byte("audit")).Bucket([]byte("records"))
		key := []byte{0, 0, 0, 0, 0, 0, 0, 2}
		return recs.Put(key, []byte(strings.Replace(string(recs.Get(key)), `"outcome":"success"`, `"outcome":"failure"`, 1)))
	})
	if err != nil {
		t.Fatal(err)
	}
	res := verify()
	if res.OK || res.FirstBroken != gateway.AuditRecordID(2) || res.Reason == "" {
		t.Fatalf("verify after tampering = %+v, want record 2 named", res)
	}
	// Each verification was audited, after the records it checked.
	used, err := g.log.Query(t.Context(), gateway.AuditFilter{Action: gateway.ActionAuditUsed})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(used.Events), 2; got != want {
		t.Fatalf("%d audit.used events, want %d", got, want)
	}
	if got := used.Events[1].Detail["first_broken"]; got != gateway.AuditRecordID(2) {
		t.Errorf("audit of the failed verification: first_broken %v", got)
	}
}

// TestAuditFailsClosed: with the audit log unreachable, requests that read
// or write patient data, and reads of the audit log itself, are refused with
// 503 rather than served unaudited.
func TestAuditFailsClosed(t *testing.T) {
	g := newAuditGateway(t)
	if got := g.stowOne(t, 0); got != http.StatusOK {
		t.Fatalf("STOW status %d", got)
	}
	before, err := g.log.Verify(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	g.auditor.fail.Store(true)
	for _, tt := range []struct {
		name string
		do   func(t *testing.T) int
	}{
		{"STOW", func(t *testing.T) int { return g.stowOne(t, 1) }},
		{"QIDO", g.qido},
		{"WADO", g.wado},
		{"audit query", func(t *testing.T) int {
			s, _, _ := g.do(t, "admin-1", http.MethodGet, "/api/v1/audit", "", nil, "")
			return s
		}},
		{"audit verify", func(t *testing.T) int {
			s, _, _ := g.do(t, "admin-1", http.MethodGet, "/api/v1/audit/verify", "", nil, "")
			return s
		}},
	} {
		if got, want := tt.do(t), http.StatusServiceUnavailable; got != want {
			t.Errorf("%s with the audit log down: status %d, want %d", tt.name, got, want)
		}
	}
	after, err := g.log.Verify(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !after.OK || after.Records != before.Records {
		t.Errorf("audit log went from %+v to %+v while down", before, after)
	}
	g.auditor.fail.Store(false)
	if got := g.stowOne(t, 1); got != http.StatusOK {
		t.Errorf("STOW after the audit log came back: status %d", got)
	}
}

// discardAuditor accepts every event without storing it: the baseline of
// BenchmarkStowAudit.
type discardAuditor struct{}

func (discardAuditor) Record(context.Context, *gateway.AuditEvent) error { return nil }

// BenchmarkStowAudit measures STOW-RS of small instances by 8 concurrent
// clients with the Redis audit log and with auditing discarded, in one run,
// so that the cost of auditing is the ratio of the two.
func BenchmarkStowAudit(b *testing.B) {
	for _, mode := range []string{"none", "redis"} {
		b.Run("audit="+mode, func(b *testing.B) {
			dir := b.TempDir()
			blobs, err := filesystem.New(filepath.Join(dir, "blobs"))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { blobs.Close() })
			db, err := bolt.Open(filepath.Join(dir, "state.db"))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { db.Close() })
			index, err := bolt.NewIndex(db)
			if err != nil {
				b.Fatal(err)
			}
			var auditor gateway.Auditor = discardAuditor{}
			if mode == "redis" {
				c, err := redis.Open(storagetest.RedisURL(b), storagetest.RedisPrefix(b))
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { c.Close() })
				auditor = redis.NewAuditLog(c, "bench")
			}
			s := testWiring{ServiceDeps: gateway.ServiceDeps{Name: "bench", Blobs: blobs, Index: index, Auditor: auditor, Ingester: &gateway.Ingester{Blobs: blobs, Index: index, Auditor: auditor}}}.server()
			srv := httptest.NewServer(s.Handler())
			b.Cleanup(srv.Close)
			b.ResetTimer()
			stowConcurrently(b, srv.URL, 8, func(i int) (io.Reader, string) {
				body, boundary := multipartBody(b, dicomPart(makeInstance(testStudy, testSeries, testSOP(i+1), 16, 16, 1)))
				return body, `multipart/related; type="application/dicom"; boundary=` + boundary
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "instances/s")
		})
	}
}

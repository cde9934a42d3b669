package dicomweb_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/bolt"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// newQIDOServer serves the query fixture of storagetest from a bbolt index
// with a real bbolt audit log.
func newQIDOServer(t *testing.T, auditor gateway.Auditor) (*httptest.Server, *bolt.AuditLog) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	index, err := bolt.NewIndex(db)
	if err != nil {
		t.Fatal(err)
	}
	storagetest.LoadQueryFixture(t, index)
	audit, err := bolt.NewAuditLog(db, "test")
	if err != nil {
		t.Fatal(err)
	}
	w := testWiring{ServiceDeps: gateway.ServiceDeps{Name: "test", Index: index, Auditor: audit, AuditLog: audit}}
	if auditor != nil {
		w.Auditor = auditor
	}
	srv := httptest.NewServer(w.server().Handler())
	t.Cleanup(srv.Close)
	return srv, audit
}

func qidoGet(t *testing.T, srv *httptest.Server, path string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/dicom+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// qidoJSON is the generic shape of a DICOM JSON answer.
type qidoJSON []map[string]struct {
	VR    string `json:"vr"`
	Value []any  `json:"Value"`
}

func decodeQIDO(t *testing.T, body []byte) qidoJSON {
	t.Helper()
	var out qidoJSON
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("body is not a DICOM JSON array: %v\n%s", err, body)
	}
	return out
}

func TestQIDOSearchResources(t *testing.T) {
	srv, _ := newQIDOServer(t, nil)
	for _, tt := range []struct {
		path string
		tag  string
		want []string
	}{
		{"/dicomweb/studies?PatientID=P001", "0020000D", []string{"1.2.826.0.1.5", "1.2.826.0.1.1"}},
		{"/dicomweb/series?Modality=SR", "0020000E", []string{"1.2.826.0.1.1.2"}},
		{"/dicomweb/instances?Rows=512", "00080018", []string{"1.2.826.0.1.1.1.2"}},
		{"/dicomweb/studies/1.2.826.0.1.1/series", "0020000E", []string{"1.2.826.0.1.1.1", "1.2.826.0.1.1.2"}},
		{"/dicomweb/studies/1.2.826.0.1.1/instances?InstanceNumber=1", "00080018", []string{"1.2.826.0.1.1.1.1", "1.2.826.0.1.1.2.1"}},
		{"/dicomweb/studies/1.2.826.0.1.1/series/1.2.826.0.1.1.1/instances", "00080018", []string{"1.2.826.0.1.1.1.1", "1.2.826.0.1.1.1.2"}},
		{"/dicomweb/studies?PatientName=M%C3%BCller*", "0020000D", []string{"1.2.826.0.1.3"}},
		{"/dicomweb/studies?PatientName=Müller^Hans", "0020000D", []string{"1.2.826.0.1.3"}},
	} {
		t.Run(tt.path, func(t *testing.T) {
			resp, body := qidoGet(t, srv, tt.path)
			if got, want := resp.StatusCode, http.StatusOK; got != want {
				t.Fatalf("status=%d, want %d: %s", got, want, body)
			}
			if got, want := resp.Header.Get("Content-Type"), "application/dicom+json"; got != want {
				t.Errorf("Content-Type=%q, want %q", got, want)
			}
			var got []string
			for _, item := range decodeQIDO(t, body) {
				got = append(got, fmt.Sprint(item[tt.tag].Value[0]))
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestQIDOJSONShape(t *testing.T) {
	srv, _ := newQIDOServer(t, nil)
	resp, body := qidoGet(t, srv, "/dicomweb/studies?StudyInstanceUID=1.2.826.0.1.4")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status=%d: %s", resp.StatusCode, body)
	}
	items := decodeQIDO(t, body)
	if len(items) != 1 {
		t.Fatalf("%d items, want 1", len(items))
	}
	d := items[0]
	if got, want := d["00081190"].Value[0], srv.URL+"/dicomweb/studies/1.2.826.0.1.4"; got != want {
		t.Errorf("RetrieveURL=%v, want %v", got, want)
	}
	if got, want := d["00081190"].VR, "UR"; got != want {
		t.Errorf("RetrieveURL vr=%q, want %q", got, want)
	}
	pn, ok := d["00100010"].Value[0].(map[string]any)
	if !ok {
		t.Fatalf("PatientName value is %T, want a PN object", d["00100010"].Value[0])
	}
	if got, want := pn["Ideographic"], "山田^太郎"; got != want {
		t.Errorf("PatientName Ideographic=%v, want %v", got, want)
	}
	if got, want := d["00201208"].Value[0], float64(1); got != want {
		t.Errorf("NumberOfStudyRelatedInstances=%v (%T), want the JSON number %v", got, got, want)
	}
	if got, want := d["00080061"].Value, []any{"US"}; !slices.Equal(got, want) {
		t.Errorf("ModalitiesInStudy=%v, want %v", got, want)
	}
	if !strings.Contains(string(body), "山田") {
		t.Errorf("body escapes UTF-8 names: %s", body)
	}

	resp, body = qidoGet(t, srv, "/dicomweb/studies/1.2.826.0.1.1/series/1.2.826.0.1.1.1/instances?InstanceNumber=2")
	items = decodeQIDO(t, body)
	if resp.StatusCode != http.StatusOK || len(items) != 1 {
		t.Fatalf("status=%d, %d items: %s", resp.StatusCode, len(items), body)
	}
	want := srv.URL + "/dicomweb/studies/1.2.826.0.1.1/series/1.2.826.0.1.1.1/instances/1.2.826.0.1.1.1.2"
	if got := items[0]["00081190"].Value[0]; got != want {
		t.Errorf("instance RetrieveURL=%v, want %v", got, want)
	}
}

func TestQIDOEmptyResultIsEmptyArray(t *testing.T) {
	srv, _ := newQIDOServer(t, nil)
	for _, path := range []string{"/dicomweb/studies?PatientID=NOBODY", "/dicomweb/studies/1.2.999/series", "/dicomweb/studies/1.2.999/series/1.2.999.1/instances"} {
		resp, body := qidoGet(t, srv, path)
		if got, want := resp.StatusCode, http.StatusOK; got != want {
			t.Errorf("%s: status=%d, want %d", path, got, want)
		}
		if got, want := strings.TrimSpace(string(body)), "[]"; got != want {
			t.Errorf("%s: body=%q, want %q", path, got, want)
		}
	}
}

func TestQIDOBadRequests(t *testing.T) {
	srv, _ := newQIDOServer(t, nil)
	for _, tt := range []struct {
		query   string
		message string // part of the error message
	}{
		{"StudyDate=2020", "StudyDate"},
		{"StudyDate=20201301", "not a valid date"},
		{"StudyDate=20200101-20190101", "range starts after it ends"},
		{"StudyDate=-", "at least one bound"},
		{"StudyDate=2020*", "wildcards"},
		{"StudyTime=2500", "StudyTime"},
		{"limit=ten", "limit"},
		{"limit=-1", "limit"},
		{"offset=1.5", "offset"},
		{"StudyInstanceUID=1.2.abc", "StudyInstanceUID"},
		{"StudyInstanceUID=1.2.3%5C1..4", "StudyInstanceUID"},
		{"fuzzymatching=maybe", "fuzzymatching"},
		{"NumberOfStudyRelatedInstances=many", "not a number"},
		{"ReferencedStudySequence=x", "sequence"},
		{"PatientName=%zz", "query string"},
		{"PatientID=P001;PatientSex=M", "query string"},
	} {
		t.Run(tt.query, func(t *testing.T) {
			resp, body := qidoGet(t, srv, "/dicomweb/studies?"+tt.query)
			if got, want := resp.StatusCode, http.StatusBadRequest; got != want {
				t.Fatalf("status=%d, want %d: %s", got, want, body)
			}
			var e struct{ Error string }
			if err := json.Unmarshal(body, &e); err != nil || !strings.Contains(e.Error, tt.message) {
				t.Fatalf("error=%q (%v), want it to mention %q", e.Error, err, tt.message)
			}
		})
	}
	resp, body := qidoGet(t, srv, "/dicomweb/studies/1.2..3/series") // (a leading zero, 1.2.03, is tolerated: vendor UIDs)
	if got, want := resp.StatusCode, http.StatusBadRequest; got != want {
		t.Fatalf("bad study UID in path: status=%d, want %d: %s", got, want, body)
	}
}

func TestQIDOWarnings(t *testing.T) {
	srv, _ := newQIDOServer(t, nil)
	for _, tt := range []struct {
		query  string
		count  int
		warned string // part of a Warning header, "" = none
	}{
		{"PatientID=P001", 2, ""},
		{"PatientID=P001&frobnicate=1", 2, "frobnicate"},
		{"Modality=CT", 6, "Modality: not a study-level attribute"},
		{"includefield=NoSuchKeyword", 6, "NoSuchKeyword"},
		{"limit=2", 2, "There are 4 additional results that can be requested"},
		{"limit=20000", 6, "reduced to the maximum 10000"},
		{"limit=6", 6, ""},
	} {
		t.Run(tt.query, func(t *testing.T) {
			resp, body := qidoGet(t, srv, "/dicomweb/studies?"+tt.query)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status=%d: %s", resp.StatusCode, body)
			}
			if got := len(decodeQIDO(t, body)); got != tt.count {
				t.Errorf("%d results, want %d", got, tt.count)
			}
			warnings := strings.Join(resp.Header.Values("Warning"), "\n")
			if tt.warned == "" && warnings != "" {
				t.Errorf("Warning=%q, want none", warnings)
			}
			if tt.warned != "" && !strings.Contains(warnings, tt.warned) {
				t.Errorf("Warning=%q, want it to mention %q", warnings, tt.warned)
			}
			if warnings != "" && !strings.HasPrefix(resp.Header.Get("Warning"), `299 `) {
				t.Errorf("Warning=%q, want code 299", resp.Header.Get("Warning"))
			}
		})
	}
}

func TestQIDOIncludeField(t *testing.T) {
	srv, _ := newQIDOServer(t, nil)
	for _, tt := range []struct {
		query string
		tag   string
		want  bool
	}{
		{"", "00081030", false},
		{"includefield=StudyDescription", "00081030", true},
		{"includefield=00081030", "00081030", true},
		{"includefield=all", "00081030", true},
		{"includefield=PatientSex&includefield=StudyDescription", "00081030", true},
	} {
		_, body := qidoGet(t, srv, "/dicomweb/studies?StudyInstanceUID=1.2.826.0.1.1&"+tt.query)
		items := decodeQIDO(t, body)
		if len(items) != 1 {
			t.Fatalf("%s: %d items, want 1", tt.query, len(items))
		}
		if _, got := items[0][tt.tag]; got != tt.want {
			t.Errorf("%s: has %s=%v, want %v", tt.query, tt.tag, got, tt.want)
		}
	}
}

func TestQIDOAudit(t *testing.T) {
	srv, audit := newQIDOServer(t, nil)
	resp, body := qidoGet(t, srv, "/dicomweb/studies?PatientName=Smith*")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status=%d: %s", resp.StatusCode, body)
	}
	page, err := audit.Query(t.Context(), gateway.AuditFilter{Action: gateway.ActionQuery})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(page.Events), 1; got != want {
		t.Fatalf("%d query events, want %d", got, want)
	}
	ev := page.Events[0]
	if got, want := ev.StudyUIDs, []string{"1.2.826.0.1.5", "1.2.826.0.1.1"}; !slices.Equal(got, want) {
		t.Errorf("StudyUIDs=%v, want %v", got, want)
	}
	if got, want := ev.PatientIDs, []string{"P001"}; !slices.Equal(got, want) {
		t.Errorf("PatientIDs=%v, want %v", got, want)
	}
	detail, _ := json.Marshal(ev.Detail)
	if strings.Contains(strings.ToUpper(string(detail)), "SMITH") {
		t.Errorf("audit detail carries the searched name: %s", detail)
	}
}

// failingAuditor is a fault a real audit log cannot produce on demand.
type failingAuditor struct{}

func (failingAuditor) Record(context.Context, *gateway.AuditEvent) error {
	return fmt.Errorf("audit disk full: %w", gateway.ErrUnavailable)
}

func TestQIDOAuditFailureRefuses(t *testing.T) {
	srv, _ := newQIDOServer(t, failingAuditor{})
	resp, body := qidoGet(t, srv, "/dicomweb/studies?PatientID=P001")
	if got, want := resp.StatusCode, http.StatusServiceUnavailable; got != want {
		t.Fatalf("status=%d, want %d", got, want)
	}
	if strings.Contains(string(body), "P001") || strings.Contains(string(body), "Smith") {
		t.Fatalf("patient data served unaudited: %s", body)
	}
}

func TestQIDONeverServerError(t *testing.T) {
	srv, _ := newQIDOServer(t, nil)
	for _, q := range []string{
		"PatientName=***", "PatientName=%3F%3F%3F%3F", "StudyDate=00000000", "00100010=", "0010001=x", "FFFFFFFF=1",
		"00081110.00081155.00081150=1.2", "a.b.c.d.e=1", "PatientName=%00", "limit=99999999999999999999",
		"StudyTime=1.5", "StudyTime=120000.1234567", "includefield=00081110.00081155", "ModalitiesInStudy=%5C%5C",
		"PatientID=" + strings.Repeat("x", 10000), "StudyDate=20200229", "StudyDate=20210229", "00020010=1",
	} {
		resp, body := qidoGet(t, srv, "/dicomweb/studies?"+q)
		if resp.StatusCode >= 500 {
			t.Errorf("%s: status=%d: %s", q, resp.StatusCode, body)
		}
	}
}

// TestQIDOPaginationWarning checks the PS3.18 8.3.4.4.1 Warning of a page
// cut by limit, with the service's host as warn-agent and the real count of
// the matches left, on both index backends.
func TestQIDOPaginationWarning(t *testing.T) {
	for _, backend := range []string{"bolt", "redis"} {
		t.Run(backend, func(t *testing.T) {
			var index gateway.Index
			if backend == "redis" {
				c, err := redis.Open(storagetest.RedisURL(t), storagetest.RedisPrefix(t))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				index = redis.NewIndex(c)
			} else {
				db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { db.Close() })
				if index, err = bolt.NewIndex(db); err != nil {
					t.Fatal(err)
				}
			}
			storagetest.LoadQueryFixture(t, index)
			srv := httptest.NewServer(testWiring{ServiceDeps: gateway.ServiceDeps{Name: "test", Index: index}}.server().Handler())
			t.Cleanup(srv.Close)
			host := strings.TrimPrefix(srv.URL, "http://")
			for _, tt := range []struct {
				path string
				want string // the Warning header, "" = none
			}{
				{"/dicomweb/studies?limit=2", `299 ` + host + ` "There are 4 additional results that can be requested"`},
				{"/dicomweb/studies?limit=2&offset=3", `299 ` + host + ` "There are 1 additional results that can be requested"`},
				{"/dicomweb/studies?limit=2&offset=4", ""},
				{"/dicomweb/instances?limit=5", `299 ` + host + ` "There are 4 additional results that can be requested"`},
				{"/dicomweb/studies?PatientID=NOBODY&limit=1", ""},
			} {
				resp, body := qidoGet(t, srv, tt.path)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("%s: status=%d: %s", tt.path, resp.StatusCode, body)
				}
				if got := strings.Join(resp.Header.Values("Warning"), "\n"); got != tt.want {
					t.Errorf("%s: Warning=%q, want %q", tt.path, got, tt.want)
				}
			}
			// No match is 200 with an empty array, not 204 (CP-2473).
			resp, body := qidoGet(t, srv, "/dicomweb/studies?PatientID=NOBODY")
			if resp.StatusCode != http.StatusOK || string(body) != "[]" || resp.Header.Get("Content-Type") != "application/dicom+json" {
				t.Errorf("no match: status=%d Content-Type=%q body=%q, want 200 application/dicom+json []", resp.StatusCode, resp.Header.Get("Content-Type"), body)
			}
		})
	}
}

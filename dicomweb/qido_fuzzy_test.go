package dicomweb_test

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/bolt"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// fuzzyStudy is added to the query fixture: its referring physician is
// Philips, which Phillips (P412 both) finds only by Soundex code.
const fuzzyStudy = "1.2.826.0.1.77"

// TestQIDOFuzzyMatching runs fuzzymatching=true over HTTP on both backends:
// misspelt patient and referring physician names are found by their
// Soundex code, only with fuzzymatching=true, and no Warning says fuzzy
// matching is unsupported (every PN attribute is fuzzy-matched; the
// parameter has no effect on other attributes, which PS3.18 does not make a
// reason to warn).
func TestQIDOFuzzyMatching(t *testing.T) {
	for _, backend := range []string{"bolt", "redis"} {
		t.Run(backend, func(t *testing.T) {
			var index gateway.Index
			switch backend {
			case "bolt":
				db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { db.Close() })
				if index, err = bolt.NewIndex(db); err != nil {
					t.Fatal(err)
				}
			case "redis":
				c, err := redis.Open(storagetest.RedisURL(t), storagetest.RedisPrefix(t))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				index = redis.NewIndex(c)
			}
			storagetest.LoadQueryFixture(t, index)
			rec := storagetest.Record(fuzzyStudy, fuzzyStudy+".1", fuzzyStudy+".1.1", map[string]any{
				dicomcodec.TagPatientName: dicomcodec.PersonName{Alphabetic: "Evans^Mary"},
				dicomcodec.TagPatientID:   "P077",
				dicomcodec.TagStudyDate:   "20180101",
				"00080090":                dicomcodec.PersonName{Alphabetic: "Philips^Anna"},
				"00081030":                "KNEE",
			})
			if _, _, err := index.PutInstance(t.Context(), rec); err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(testWiring{ServiceDeps: gateway.ServiceDeps{Name: "test", Index: index}}.server().Handler())
			t.Cleanup(srv.Close)
			for _, tt := range []struct {
				query string
				want  []string // study UIDs in order
			}{
				{"PatientName=smyth&fuzzymatching=true", []string{"1.2.826.0.1.5", "1.2.826.0.1.2", "1.2.826.0.1.1"}},
				{"PatientName=smyth", nil},
				{"PatientName=evens%5Emery&fuzzymatching=true", []string{fuzzyStudy}},
				{"ReferringPhysicianName=phillips&fuzzymatching=true", []string{fuzzyStudy}},
				{"ReferringPhysicianName=phillips", nil},
				{"ReferringPhysicianName=phillips&PatientName=evans&fuzzymatching=true", []string{fuzzyStudy}},
				// fuzzymatching has no effect on other attributes.
				{"StudyDescription=KNEE&fuzzymatching=true", []string{fuzzyStudy}},
				{"StudyDescription=KNE&fuzzymatching=true", nil},
			} {
				resp, body := qidoGet(t, srv, "/dicomweb/studies?"+tt.query)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("%s: status=%d: %s", tt.query, resp.StatusCode, body)
				}
				var got []string
				for _, d := range decodeQIDO(t, body) {
					got = append(got, d["0020000D"].Value[0].(string))
				}
				if !slices.Equal(got, tt.want) {
					t.Errorf("%s: studies %v, want %v", tt.query, got, tt.want)
				}
				if w := strings.Join(resp.Header.Values("Warning"), "\n"); strings.Contains(w, "fuzzymatching") {
					t.Errorf("%s: Warning=%q, want no fuzzymatching warning", tt.query, w)
				}
			}
		})
	}
}

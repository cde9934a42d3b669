package dicomweb_test

import (
	"net/http"
	"testing"
)

// TestStowContentLocation: a STOW-RS response that created resources in
// one study carries Content-Location, the study's URL (the response's
// RetrieveURL), also when the study is not in the request URL; one that
// stored instances of several studies has no single resource to name and
// carries none; nor does one that stored nothing.
func TestStowContentLocation(t *testing.T) {
	const otherStudy, otherSeries = "1.2.826.0.1.3680043.10.1.2", "1.2.826.0.1.3680043.10.1.2.1"
	for _, b := range stowBackends {
		t.Run(b.name, func(t *testing.T) {
			s := newStowServer(t, b, nil)
			studyURL := s.srv.URL + "/dicomweb/studies/" + testStudy
			for _, path := range []string{"/dicomweb/studies", "/dicomweb/studies/" + testStudy} {
				res := s.stow(t, path, dicomPart(makeInstance(testStudy, testSeries, testSOP(len(path)), 4, 4, 1)))
				if res.status != http.StatusOK {
					t.Fatalf("POST %s: status %d: %s", path, res.status, res.body)
				}
				if got := res.header.Get("Content-Location"); got != studyURL {
					t.Errorf("POST %s: Content-Location %q, want %q", path, got, studyURL)
				}
				if got := res.ds["00081190"].Value; len(got) != 1 || got[0] != studyURL {
					t.Errorf("POST %s: RetrieveURL %v, want the Content-Location", path, got)
				}
			}
			// Several studies in one request: no single resource.
			res := s.stow(t, "/dicomweb/studies",
				dicomPart(makeInstance(testStudy, testSeries, testSOP(20), 4, 4, 1)),
				dicomPart(makeInstance(otherStudy, otherSeries, testSOP(21), 4, 4, 1)))
			if res.status != http.StatusOK || res.referenced() != 2 {
				t.Fatalf("two studies: status %d: %s", res.status, res.body)
			}
			if got, ok := res.header["Content-Location"]; ok {
				t.Errorf("two studies: Content-Location %q, want none", got)
			}
			// Stored in one study with another refused (202): the study stored.
			res = s.stow(t, "/dicomweb/studies/"+testStudy,
				dicomPart(makeInstance(testStudy, testSeries, testSOP(22), 4, 4, 1)),
				dicomPart(makeInstance(otherStudy, otherSeries, testSOP(23), 4, 4, 1)))
			if res.status != http.StatusAccepted {
				t.Fatalf("one refused: status %d: %s", res.status, res.body)
			}
			if got := res.header.Get("Content-Location"); got != studyURL {
				t.Errorf("one refused: Content-Location %q, want %q", got, studyURL)
			}
			// Nothing stored (409): nothing created, no Content-Location.
			res = s.stow(t, "/dicomweb/studies/"+testStudy, dicomPart(makeInstance(otherStudy, otherSeries, testSOP(24), 4, 4, 1)))
			if res.status != http.StatusConflict {
				t.Fatalf("all refused: status %d: %s", res.status, res.body)
			}
			if got, ok := res.header["Content-Location"]; ok {
				t.Errorf("all refused: Content-Location %q, want none", got)
			}
		})
	}
}

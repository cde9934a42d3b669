package dicomweb_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
)

// withPreamble returns a copy of data whose first bytes are p.
func withPreamble(data []byte, p string) []byte {
	out := bytes.Clone(data)
	copy(out, p)
	return out
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// elfHeader is the start of a 64-bit little-endian ELF executable header.
const elfHeader = "\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00"

// TestStowExecutablePreambleRefused checks CVE-2019-11687 under the default
// policy: an instance whose preamble is an executable header is refused
// with a 0xC000 FailureReason and a text naming the format, and nothing is
// stored; a TIFF dual-format preamble is stored unchanged.
func TestStowExecutablePreambleRefused(t *testing.T) {
	for _, b := range stowBackends {
		t.Run(b.name, func(t *testing.T) {
			s := newStowServer(t, b, nil)
			for i, p := range []string{elfHeader, "MZ\x90\x00\x03\x00\x00\x00", "\xcf\xfa\xed\xfe\x07\x00\x00\x01", "#!/bin/sh\nrm -rf ~\n"} {
				res := s.stow(t, "/dicomweb/studies", dicomPart(withPreamble(makeInstance(testStudy, testSeries, testSOP(i), 2, 2, 1), p)))
				if got := res.failureReasons(); res.status != http.StatusConflict || len(got) != 1 || got[0]&0xF000 != 0xC000 {
					t.Errorf("preamble %q: status %d, reasons %x, want 409 with one 0xCxxx FailureReason: %s", p[:2], res.status, got, res.body)
				}
				if !strings.Contains(string(res.body), "CVE-2019-11687") {
					t.Errorf("preamble %q: the answer does not say why: %s", p[:2], res.body)
				}
				if _, err := s.index.GetInstance(t.Context(), testSOP(i)); err == nil {
					t.Errorf("preamble %q: the instance was stored", p[:2])
				}
			}
			for i, p := range []string{"II*\x00\x08\x00\x00\x00", "MM\x00*\x00\x00\x00\x08"} {
				data := withPreamble(makeInstance(testStudy, testSeries, testSOP(10+i), 2, 2, 1), p)
				if res := s.stow(t, "/dicomweb/studies", dicomPart(data)); res.status != http.StatusOK {
					t.Fatalf("TIFF preamble %q: status %d: %s", p[:4], res.status, res.body)
				}
				if got, _ := s.storedBytes(t, testSOP(10+i)); !bytes.Equal(got, data) {
					t.Errorf("TIFF preamble %q: stored bytes differ from the original", p[:4])
				}
			}
		})
	}
}

// TestStowExecutablePreambleZeroed checks the zero policy: the instance is
// stored with 128 zero bytes in place of the preamble and otherwise
// unchanged, the index holds the SHA-256 of the stored bytes, and the audit
// log the SHA-256 of the file as it arrived.
func TestStowExecutablePreambleZeroed(t *testing.T) {
	for _, b := range stowBackends {
		t.Run(b.name, func(t *testing.T) {
			s := newStowServer(t, b, func(s *testWiring) {
				s.Ingester.PreamblePolicy = gateway.PreambleZero
				s.Ingester.Auditor = s.Auditor
			})
			original := withPreamble(makeInstance(testStudy, testSeries, testSOP(0), 64, 64, 7), elfHeader)
			if res := s.stow(t, "/dicomweb/studies", dicomPart(original)); res.status != http.StatusOK {
				t.Fatalf("status %d: %s", res.status, res.body)
			}
			want := append(make([]byte, 128), original[128:]...)
			got, rec := s.storedBytes(t, testSOP(0))
			if !bytes.Equal(got, want) {
				t.Fatalf("stored %d bytes, want the original with a zeroed preamble (%d bytes); first bytes %q", len(got), len(want), got[:8])
			}
			if rec.SHA256 != sha(want) {
				t.Errorf("index SHA-256 %s, want that of the stored (zeroed) bytes %s", rec.SHA256, sha(want))
			}
			var found bool
			for _, ev := range s.audit.events {
				if ev.Detail["original_sha256"] == sha(original) && ev.Detail["stored_sha256"] == sha(want) && ev.Detail["preamble"] == "ELF" {
					found = true
				}
			}
			if !found {
				t.Errorf("no audit event with the original SHA-256 %s: %+v", sha(original), s.audit.events)
			}
			// The same polyglot again is the same stored instance, not a conflict.
			if res := s.stow(t, "/dicomweb/studies", dicomPart(original)); res.status != http.StatusOK {
				t.Errorf("the same file again: status %d: %s", res.status, res.body)
			}
		})
	}
}

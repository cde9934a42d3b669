package dicomcodec_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/internal/dicomjsontest"
	"github.com/dicom-gateway/gateway/internal/testcorpus"
)

// parseFile parses a whole file: the header with ParseHeader and the rest
// through Tail, as ingest does.
func parseFile(t testing.TB, data []byte) (*dicomcodec.Header, *dicomcodec.PixelDataLayout, error) {
	t.Helper()
	h, err := dicomcodec.ParseHeader(bytes.NewReader(data), dicomcodec.HeaderLimits{})
	if err != nil {
		return nil, nil, err
	}
	if h.HeaderLength > int64(len(data)) {
		t.Fatalf("HeaderLength %d beyond the %d bytes of input", h.HeaderLength, len(data))
	}
	tail := h.Tail()
	// Feed the tail in small uneven pieces: the scanner must not depend on
	// how the stream is cut.
	rest := data[h.HeaderLength:]
	for i := 0; len(rest) > 0; i++ {
		n := min(len(rest), 1+(i*7919)%4099)
		if _, err := tail.Write(rest[:n]); err != nil {
			return h, nil, err
		}
		rest = rest[n:]
	}
	layout, err := tail.Finish()
	return h, layout, err
}

// TestParseHeaderCorpus parses every corpus file: well-formed Part 10 files
// parse completely, malformed ones fail with one of the codec's data errors (each of which
// gateway maps to a STOW failure reason: TestFromCodec),
// and nothing panics.
func TestParseHeaderCorpus(t *testing.T) {
	for _, f := range testcorpus.Files(t) {
		t.Run(f.Name, func(t *testing.T) {
			data, err := os.ReadFile(f.Path)
			if err != nil {
				t.Fatal(err)
			}
			h, layout, err := parseFile(t, data)
			noPart10 := strings.Contains(f.TransferSyntax, "no meta")
			if err != nil {
				if !isDataError(err) {
					t.Fatalf("error %v (%T) is not one of the codec's data errors", err, err)
				}
				if !f.Malformed && !noPart10 {
					t.Fatalf("well-formed file refused: %v", err)
				}
				return
			}
			if noPart10 {
				t.Fatalf("file without a Part 10 header accepted")
			}
			if strings.Contains(f.Note, "truncated") || strings.Contains(f.Note, "cut") || strings.Contains(f.Note, "ends early") {
				t.Fatalf("truncated file accepted")
			}
			if h.TransferSyntaxUID == "" {
				t.Errorf("TransferSyntaxUID is empty")
			}
			if layout != nil {
				for i, fr := range layout.Frames {
					for _, r := range fr {
						if r.Offset < layout.ValueOffset || r.Offset+r.Length > int64(len(data)) {
							t.Fatalf("frame %d range %+v outside the pixel data", i+1, r)
						}
					}
				}
				if !layout.Encapsulated && layout.ValueOffset+layout.ValueLength > int64(len(data)) {
					t.Fatalf("pixel data value %+v beyond the end", layout)
				}
			}
		})
	}
}

// TestParseHeaderMatchesDcm2json compares the Dataset of every corpus file
// dcmtk can convert with dcm2json's DICOM JSON, the reference
// implementation of PS3.18 F.2 on this machine.
func TestParseHeaderMatchesDcm2json(t *testing.T) {
	if _, err := exec.LookPath("dcm2json"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("dcm2json (Debian package dcmtk) is not installed; scripts/testenv.sh installs it")
		}
		t.Skip("dcm2json (dcmtk) not installed")
	}
	for _, f := range testcorpus.Files(t) {
		data, err := os.ReadFile(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		h, _, err := parseFile(t, data)
		if err != nil {
			continue
		}
		out, err := exec.CommandContext(t.Context(), "dcm2json", f.Path).Output()
		if err != nil {
			continue // dcmtk cannot convert it (e.g. ISO 2022 IR 87 without iconv support)
		}
		t.Run(f.Name, func(t *testing.T) {
			var want map[string]any
			if err := json.Unmarshal(out, &want); err != nil {
				t.Skipf("dcm2json output is not JSON: %v", err)
			}
			b, err := json.Marshal(h.Dataset)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if diffs := dicomjsontest.Diff(got, want); len(diffs) > 0 {
				t.Errorf("%d differences from dcm2json:\n%s", len(diffs), strings.Join(diffs[:min(len(diffs), 20)], "\n"))
			}
		})
	}
}

// isDataError reports whether err is one of the codec's verdicts on the data
// (ParseHeader's and the TailScanner's), not a read error.
func isDataError(err error) bool {
	return errors.Is(err, dicomcodec.ErrMalformed) || errors.Is(err, dicomcodec.ErrLimit) ||
		errors.Is(err, dicomcodec.ErrUnsupportedTransferSyntax)
}

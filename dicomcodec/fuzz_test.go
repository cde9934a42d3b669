package dicomcodec_test

import (
	"os"
	"testing"

	"github.com/dicom-gateway/gateway/internal/testcorpus"
)

// FuzzParseHeader feeds arbitrary bytes to ParseHeader and the TailScanner,
// seeded from every corpus file (as archive/zip's fuzz test seeds from
// testdata): any outcome but a data error (isDataError) or success is a bug, and so
// is a panic or an unbounded allocation (the limits are small here).
func FuzzParseHeader(f *testing.F) {
	for _, file := range testcorpus.Files(f) {
		if file.Bytes > 256<<10 {
			continue
		}
		data, err := os.ReadFile(file.Path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	// A deflated instance with pixel data: its tail is inflated by Tail.
	deflated, _ := deflatedInstance(f, 1024, 1)
	f.Add(deflated)
	f.Fuzz(func(t *testing.T, data []byte) {
		h, layout, err := parseFile(t, data)
		if err != nil {
			if !isDataError(err) {
				t.Fatalf("error %v (%T) is not one of the codec's data errors", err, err)
			}
			return
		}
		if h.HeaderLength > int64(len(data)) {
			t.Fatalf("HeaderLength %d > %d", h.HeaderLength, len(data))
		}
		if layout != nil {
			for _, fr := range layout.Frames {
				for _, r := range fr {
					if r.Offset < 0 || r.Length < 0 || r.Offset+r.Length > int64(len(data)) {
						t.Fatalf("frame range %+v outside %d bytes", r, len(data))
					}
				}
			}
		}
	})
}

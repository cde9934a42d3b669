// Package testcorpus gives tests the shared real-world DICOM corpus
// (../shared/testdata/corpus next to the module root) without copying it into
// the repository. Outside CI a missing corpus skips the test with a message;
// under CI=true it fails, so the corpus can never silently drop out of a run.
package testcorpus

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// File is one row of MANIFEST.tsv.
type File struct {
	Path string // absolute path of the file
	Name string // file name as listed in the manifest
	// Malformed is true for rows the manifest marks MALFORMED, EDGE or NOT
	// DICOM: inputs a gateway may refuse (with a reason) and must never crash on.
	Malformed      bool
	SOPClass       string // the manifest's sop_class column, as written there
	TransferSyntax string // the manifest's transfer_syntax column
	Charset        string // the manifest's charset column
	Bytes          int64  // file size according to the manifest
	Note           string // the manifest's note column
}

// Dir returns the corpus directory: ../shared/testdata/corpus relative to
// the directory holding go.mod, found by walking up from the working
// directory (the package under test). It skips the test when the corpus is
// absent, or fails it when CI=true.
func Dir(t testing.TB) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatalf("testcorpus: %v", err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			corpus := filepath.Join(filepath.Dir(dir), "shared", "testdata", "corpus")
			if _, err := os.Stat(filepath.Join(corpus, "MANIFEST.tsv")); err == nil {
				return corpus
			}
			missing(t, "no MANIFEST.tsv in "+corpus)
			return ""
		}
		if filepath.Dir(dir) == dir {
			missing(t, "no go.mod above "+wd)
			return ""
		}
	}
}

func missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("testcorpus: DICOM corpus missing (%s)", why)
	}
	t.Skipf("testcorpus: DICOM corpus missing (%s); it lives in ../shared/testdata/corpus next to the module root", why)
}

// Files returns every file listed in MANIFEST.tsv, in manifest order.
func Files(t testing.TB) []File {
	t.Helper()
	dir := Dir(t)
	f, err := os.Open(filepath.Join(dir, "MANIFEST.tsv"))
	if err != nil {
		t.Fatalf("testcorpus: %v", err)
	}
	defer f.Close()
	var files []File
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var cols map[string]int
	for sc.Scan() {
		fields := strings.Split(sc.Text(), "\t")
		if cols == nil {
			cols = map[string]int{}
			for i, name := range fields {
				cols[name] = i
			}
			if _, ok := cols["file"]; !ok {
				t.Fatalf("testcorpus: MANIFEST.tsv has no file column")
			}
			continue
		}
		get := func(name string) string {
			if i, ok := cols[name]; ok && i < len(fields) {
				return fields[i]
			}
			return ""
		}
		name := get("file")
		if name == "" {
			continue
		}
		note := get("note")
		size, _ := strconv.ParseInt(get("bytes"), 10, 64)
		files = append(files, File{
			Path:           filepath.Join(dir, name),
			Name:           name,
			Malformed:      strings.Contains(note, "MALFORMED") || strings.Contains(note, "EDGE") || strings.Contains(note, "NOT DICOM"),
			SOPClass:       get("sop_class"),
			TransferSyntax: get("transfer_syntax"),
			Charset:        get("charset"),
			Bytes:          size,
			Note:           note,
		})
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("testcorpus: read MANIFEST.tsv: %v", err)
	}
	if len(files) == 0 {
		t.Fatalf("testcorpus: MANIFEST.tsv lists no files")
	}
	return files
}

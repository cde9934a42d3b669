package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/internal/synth"
)

// TestStoreSkipsFilesThatAreNotDICOM sends a directory holding two
// instances, a README and a licence (as a study exported from a PACS or
// unpacked from a download looks): the text files are skipped and counted,
// not reported as failed instances.
func TestStoreSkipsFilesThatAreNotDICOM(t *testing.T) {
	m := MustRunMain(t, testConfig(t), nil)
	dir := t.TempDir()
	insts := synth.Study(synth.StudySpec{Seed: 41, InstancesPerSeries: 2})
	for i, in := range insts {
		var buf bytes.Buffer
		if _, err := in.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		sub := filepath.Join(dir, "series", string(rune('a'+i)))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sub, "IM0001"), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// One text file longer than 132 bytes (something sits at byte 128),
	// one shorter, one empty.
	for name, text := range map[string]string{
		"README.md":        strings.Repeat("This study was exported for teaching. ", 10),
		"LICENSE":          "CC-BY-4.0\n",
		"series/.DS_Store": "",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	var stdout, stderr bytes.Buffer
	err := runStore(t.Context(), []string{"--url", "http://" + m.Addr + "/dicomweb", dir}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("store: %v\n%s", err, stdout.String())
	}
	if got, want := strings.SplitN(stdout.String(), "\n", 2)[0], "stored 2, failed 0, skipped 3 (not DICOM: no DICM at byte 128)"; got != want {
		t.Errorf("summary %q, want %q", got, want)
	}
	if !strings.Contains(stdout.String(), "skipped "+filepath.Join(dir, "README.md")) {
		t.Errorf("summary does not name the skipped README:\n%s", stdout.String())
	}

	// A file named on the command line is sent whatever it holds, so that
	// the gateway's refusal says why.
	stdout.Reset()
	err = runStore(t.Context(), []string{"--url", "http://" + m.Addr + "/dicomweb", filepath.Join(dir, "README.md")}, &stdout, &stderr)
	if err == nil || !strings.HasPrefix(stdout.String(), "stored 0, failed 1, skipped 0") {
		t.Errorf("store README.md: err=%v, summary:\n%s", err, stdout.String())
	}
}

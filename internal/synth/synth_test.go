package synth

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
)

func TestInstanceParses(t *testing.T) {
	in := Study(StudySpec{Seed: 42, Patient: 2, Rows: 16, Columns: 8, Frames: 3})[0]
	var buf bytes.Buffer
	n, err := in.WriteTo(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := n, in.Size(); got != want {
		t.Fatalf("wrote %d bytes, Size()=%d", got, want)
	}
	ds, err := dicom.Parse(bytes.NewReader(buf.Bytes()), n, nil, dicom.SkipPixelData())
	if err != nil {
		t.Fatal(err)
	}
	for tg, want := range map[tag.Tag]string{
		tag.SOPInstanceUID:   in.SOPInstanceUID,
		tag.StudyInstanceUID: in.StudyInstanceUID,
		tag.PatientName:      "Müller^Jürgen",
		tag.NumberOfFrames:   "3",
	} {
		el, err := ds.FindElementByTag(tg)
		if err != nil {
			t.Fatalf("%v: %v", tg, err)
		}
		if got := el.Value.GetValue().([]string)[0]; got != want {
			t.Errorf("%v = %q, want %q", tg, got, want)
		}
	}
	var again bytes.Buffer
	if _, err := in.WriteTo(&again); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("two writes of one instance differ")
	}
	if dcmdump, err := exec.LookPath("dcmdump"); err == nil {
		p := filepath.Join(t.TempDir(), "x.dcm")
		if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(dcmdump, "-E", p).CombinedOutput(); err != nil || bytes.Contains(out, []byte("E: ")) {
			t.Errorf("dcmdump rejects the instance: %v\n%s", err, out)
		}
	}
}

func TestStudyUIDsValidAndDistinct(t *testing.T) {
	insts := Study(StudySpec{Seed: 7, Series: 3, InstancesPerSeries: 4})
	if got, want := len(insts), 12; got != want {
		t.Fatalf("%d instances, want %d", got, want)
	}
	seen := map[string]bool{}
	for _, in := range insts {
		if seen[in.SOPInstanceUID] {
			t.Errorf("duplicate SOP Instance UID %s", in.SOPInstanceUID)
		}
		seen[in.SOPInstanceUID] = true
		if in.StudyInstanceUID != insts[0].StudyInstanceUID {
			t.Errorf("study UID differs within a study")
		}
	}
}

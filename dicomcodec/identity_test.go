package dicomcodec_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/internal/synth"
)

func encode(t testing.TB, in synth.Instance) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := in.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func rewrite(t *testing.T, src []byte, e dicomcodec.IdentityEdit) ([]byte, error) {
	t.Helper()
	var out bytes.Buffer
	n, err := dicomcodec.RewriteIdentity(&out, bytes.NewReader(src), e)
	if err == nil && n != int64(out.Len()) {
		t.Fatalf("RewriteIdentity returned %d, wrote %d", n, out.Len())
	}
	return out.Bytes(), err
}

func parse(t *testing.T, b []byte) dicomcodec.Dataset {
	t.Helper()
	h, err := dicomcodec.ParseHeader(bytes.NewReader(b), dicomcodec.HeaderLimits{})
	if err != nil {
		t.Fatalf("rewritten instance does not parse: %v", err)
	}
	return h.Dataset
}

// TestRewriteIdentity: the identity attributes change, everything else,
// the other patient IDs and the pixel data included, stays byte for byte.
func TestRewriteIdentity(t *testing.T) {
	base := synth.Instance{PatientName: "Doe^Jane", PatientID: "H123", IssuerOfPatientID: "HAMPSHIRE",
		OtherPatientIDs: []synth.OtherPatientID{{ID: "9434765919", Issuer: "NHS"}}, StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.1",
		SOPInstanceUID: "1.2.3.1.1", Rows: 16, Columns: 16, PixelSeed: 7}
	for name, in := range map[string]synth.Instance{
		"defined lengths": base,
		"undefined lengths": func() synth.Instance {
			x := base
			x.UndefinedLengthSequences = true
			return x
		}(),
		"issuer absent": func() synth.Instance {
			x := base
			x.IssuerOfPatientID = ""
			return x
		}(),
	} {
		t.Run(name, func(t *testing.T) {
			src := encode(t, in)
			out, err := rewrite(t, src, dicomcodec.IdentityEdit{ExpectPatientID: "H123", PatientID: "S7", Issuer: "SURREY"})
			if err != nil {
				t.Fatal(err)
			}
			ds := parse(t, out)
			if got := ds.String(dicomcodec.TagPatientID); got != "S7" {
				t.Errorf("PatientID = %q, want S7", got)
			}
			if got := ds.String("00100021"); got != "SURREY" {
				t.Errorf("IssuerOfPatientID = %q, want SURREY", got)
			}
			if items := itemsOf(ds["00101002"]); len(items) != 1 || items[0].String("00100020") != "9434765919" {
				t.Errorf("Other Patient IDs after rewrite = %v", ds["00101002"])
			}
			before := parse(t, src)
			for tag, a := range before {
				if tag == dicomcodec.TagPatientID || tag == "00100021" {
					continue
				}
				if got := ds[tag]; !sameJSON(got, a) {
					t.Errorf("%s changed: %v → %v", tag, a, got)
				}
			}
			px := in.PixelBytes()
			if !bytes.Equal(out[len(out)-int(px):], src[len(src)-int(px):]) {
				t.Error("pixel data changed")
			}
		})
	}
}

// itemsOf returns the items of a sequence attribute.
func itemsOf(a dicomcodec.Attribute) []dicomcodec.Dataset {
	var out []dicomcodec.Dataset
	for _, v := range a.Value {
		if d, ok := v.(dicomcodec.Dataset); ok {
			out = append(out, d)
		}
	}
	return out
}

func sameJSON(a, b dicomcodec.Attribute) bool {
	var x, y bytes.Buffer
	x.Write(dicomcodec.AppendDatasetJSON(nil, dicomcodec.Dataset{"00000000": a}, ""))
	y.Write(dicomcodec.AppendDatasetJSON(nil, dicomcodec.Dataset{"00000000": b}, ""))
	return bytes.Equal(x.Bytes(), y.Bytes())
}

// implicitInstance is a small Implicit VR Little Endian instance with an
// undefined-length sequence before the patient group.
func implicitInstance(patientID string) []byte {
	el := func(b []byte, tag uint32, v string) []byte {
		if len(v)%2 == 1 {
			v += " "
		}
		b = binary.LittleEndian.AppendUint16(b, uint16(tag>>16))
		b = binary.LittleEndian.AppendUint16(b, uint16(tag))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(v)))
		return append(b, v...)
	}
	meta := []byte{}
	metaEl := func(tag uint32, vr, v string) {
		if len(v)%2 == 1 {
			v += "\x00"
		}
		meta = binary.LittleEndian.AppendUint16(meta, uint16(tag>>16))
		meta = binary.LittleEndian.AppendUint16(meta, uint16(tag))
		meta = append(meta, vr...)
		meta = binary.LittleEndian.AppendUint16(meta, uint16(len(v)))
		meta = append(meta, v...)
	}
	metaEl(0x00020002, "UI", "1.2.840.10008.5.1.4.1.1.7")
	metaEl(0x00020003, "UI", "1.2.3.4.5")
	metaEl(0x00020010, "UI", "1.2.840.10008.1.2")
	b := append(make([]byte, 128), "DICM"...)
	b = append(b, 0x02, 0, 0, 0, 'U', 'L', 4, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(meta)))
	b = append(b, meta...)
	b = el(b, 0x00080016, "1.2.840.10008.5.1.4.1.1.7")
	b = el(b, 0x00080018, "1.2.3.4.5")
	// (0008,1110) undefined length, one undefined-length item.
	b = append(b, 0x08, 0, 0x10, 0x11, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, 0xFF, 0, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF)
	b = el(b, 0x00081150, "1.2.840.10008.3.1.2.3.1")
	b = append(b, 0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0, 0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0)
	b = el(b, 0x00100010, "Doe^John")
	if patientID != "" {
		b = el(b, 0x00100020, patientID)
	}
	b = el(b, 0x0020000D, "1.2.3")
	b = el(b, 0x0020000E, "1.2.3.1")
	return b
}

func TestRewriteIdentityImplicitVR(t *testing.T) {
	src := implicitInstance("H1")
	out, err := rewrite(t, src, dicomcodec.IdentityEdit{ExpectPatientID: "H1", PatientID: "9434765919", Issuer: "NHS"})
	if err != nil {
		t.Fatal(err)
	}
	ds := parse(t, out)
	if ds.String(dicomcodec.TagPatientID) != "9434765919" || ds.String("00100021") != "NHS" {
		t.Fatalf("identity after rewrite = %q/%q; dataset %v", ds.String(dicomcodec.TagPatientID), ds.String("00100021"), ds)
	}
	if ds.String("0020000E") != "1.2.3.1" || len(itemsOf(ds["00081110"])) != 1 {
		t.Errorf("attributes around the edit lost: %v", ds)
	}
	// Without a Patient ID the elements are inserted in tag order.
	out, err = rewrite(t, implicitInstance(""), dicomcodec.IdentityEdit{PatientID: "S7", Issuer: "SURREY"})
	if err != nil {
		t.Fatal(err)
	}
	if ds := parse(t, out); ds.String(dicomcodec.TagPatientID) != "S7" || ds.String("00100021") != "SURREY" {
		t.Errorf("inserted identity = %q/%q", ds.String(dicomcodec.TagPatientID), ds.String("00100021"))
	}
}

func TestRewriteIdentityRefuses(t *testing.T) {
	good := encode(t, synth.Instance{PatientID: "H123", StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.1", SOPInstanceUID: "1.2.3.1.1"})
	bigEndian := bytes.Replace(good, []byte("1.2.840.10008.1.2.1\x00"), []byte("1.2.840.10008.1.2.2\x00"), 1)
	for name, tt := range map[string]struct {
		src  []byte
		edit dicomcodec.IdentityEdit
		want error
	}{
		"other patient":   {good, dicomcodec.IdentityEdit{ExpectPatientID: "H999", PatientID: "S7"}, dicomcodec.ErrIdentityMismatch},
		"big endian":      {bigEndian, dicomcodec.IdentityEdit{ExpectPatientID: "H123", PatientID: "S7"}, dicomcodec.ErrUnsupportedTransferSyntax},
		"not DICOM":       {[]byte("hello"), dicomcodec.IdentityEdit{PatientID: "S7"}, dicomcodec.ErrMalformed},
		"truncated":       {good[:200], dicomcodec.IdentityEdit{ExpectPatientID: "H123", PatientID: "S7"}, dicomcodec.ErrMalformed},
		"ID too long":     {good, dicomcodec.IdentityEdit{ExpectPatientID: "H123", PatientID: string(bytes.Repeat([]byte("1"), 65))}, dicomcodec.ErrInvalidInput},
		"empty target ID": {good, dicomcodec.IdentityEdit{ExpectPatientID: "H123"}, dicomcodec.ErrInvalidInput},
	} {
		_, err := dicomcodec.RewriteIdentity(io.Discard, bytes.NewReader(tt.src), tt.edit)
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: err = %v, want %v", name, err, tt.want)
		}
	}
}

// TestRewriteIdentityRecordsOriginal: with a modifying system the change is
// recorded in the Original Attributes Sequence, appended to on each hop.
func TestRewriteIdentityRecordsOriginal(t *testing.T) {
	src := encode(t, synth.Instance{PatientID: "H123", IssuerOfPatientID: "HAMPSHIRE", StudyInstanceUID: "1.2.3",
		SeriesInstanceUID: "1.2.3.1", SOPInstanceUID: "1.2.3.1.1", Rows: 8, Columns: 8, PixelSeed: 3})
	hop1, err := rewrite(t, src, dicomcodec.IdentityEdit{ExpectPatientID: "H123", PatientID: "9434765919", Issuer: "NHS",
		ModifyingSystem: "hampshire", ModifiedAt: "20261205010000+0000"})
	if err != nil {
		t.Fatal(err)
	}
	hop2, err := rewrite(t, hop1, dicomcodec.IdentityEdit{ExpectPatientID: "9434765919", PatientID: "S7", Issuer: "SURREY",
		ModifyingSystem: "relay", ModifiedAt: "20261205020000+0000"})
	if err != nil {
		t.Fatal(err)
	}
	ds := parse(t, hop2)
	items := itemsOf(ds["04000561"])
	if len(items) != 2 {
		t.Fatalf("Original Attributes Sequence has %d items, want 2", len(items))
	}
	for i, want := range []struct{ system, id, issuer string }{{"hampshire", "H123", "HAMPSHIRE"}, {"relay", "9434765919", "NHS"}} {
		it := items[i]
		mod := itemsOf(it["04000550"])
		if it.String("04000563") != want.system || it.String("04000565") != "COERCE" || len(mod) != 1 ||
			mod[0].String(dicomcodec.TagPatientID) != want.id || mod[0].String("00100021") != want.issuer {
			t.Errorf("item %d = %v, want %+v", i, it, want)
		}
	}
	if ds.String(dicomcodec.TagPatientID) != "S7" {
		t.Errorf("PatientID = %q", ds.String(dicomcodec.TagPatientID))
	}
	px := int(synth.Instance{Rows: 8, Columns: 8}.PixelBytes())
	if !bytes.Equal(hop2[len(hop2)-px:], src[len(src)-px:]) {
		t.Error("pixel data changed")
	}
}

// FuzzRewriteIdentity: whatever the input, RewriteIdentity returns an error
// or output whose length it reports, and never panics; an input the header
// reader accepts keeps being accepted after the rewrite.
func FuzzRewriteIdentity(f *testing.F) {
	for _, in := range []synth.Instance{
		{PatientID: "H1", StudyInstanceUID: "1.2", SeriesInstanceUID: "1.2.1", SOPInstanceUID: "1.2.1.1", Rows: 2, Columns: 2},
		{PatientID: "H1", IssuerOfPatientID: "X", OtherPatientIDs: []synth.OtherPatientID{{ID: "1", Issuer: "NHS"}}, UndefinedLengthSequences: true,
			StudyInstanceUID: "1.2", SeriesInstanceUID: "1.2.1", SOPInstanceUID: "1.2.1.1", Rows: 2, Columns: 2},
	} {
		var b bytes.Buffer
		in.WriteTo(&b)
		f.Add(b.Bytes())
	}
	f.Add(implicitInstance("H1"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var out bytes.Buffer
		n, err := dicomcodec.RewriteIdentity(&out, bytes.NewReader(data), dicomcodec.IdentityEdit{ExpectPatientID: "H1", PatientID: "S2", Issuer: "Y",
			ModifyingSystem: "fuzz", ModifiedAt: "20260101000000+0000"})
		if err != nil {
			return
		}
		if n != int64(out.Len()) {
			t.Fatalf("reported %d bytes, wrote %d", n, out.Len())
		}
		if _, perr := dicomcodec.ParseHeader(bytes.NewReader(data), dicomcodec.HeaderLimits{}); perr == nil {
			if _, err := dicomcodec.ParseHeader(bytes.NewReader(out.Bytes()), dicomcodec.HeaderLimits{}); err != nil {
				t.Fatalf("input parses, rewritten output does not: %v", err)
			}
		}
	})
}

// TestRewriteIdentityStreams: a 256 MiB instance goes through the rewriter
// with the heap growing by a few buffers, not by the instance.
func TestRewriteIdentityStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 256 MiB")
	}
	in := synth.Instance{PatientID: "H1", StudyInstanceUID: "1.2", SeriesInstanceUID: "1.2.1", SOPInstanceUID: "1.2.1.1",
		Rows: 2048, Columns: 2048, Frames: 32} // 256 MiB of pixel data
	src := in.Reader()
	defer src.Close()
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	peak := uint64(0)
	w := &sampler{every: 16 << 20, sample: func() {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		peak = max(peak, m.HeapAlloc)
	}}
	n, err := dicomcodec.RewriteIdentity(w, src, dicomcodec.IdentityEdit{ExpectPatientID: "H1", PatientID: "S2", Issuer: "Y",
		ModifyingSystem: "test", ModifiedAt: "20260101000000+0000"})
	if err != nil {
		t.Fatal(err)
	}
	if n < in.Size() {
		t.Fatalf("wrote %d bytes, instance is %d", n, in.Size())
	}
	if grew := int64(peak) - int64(before.HeapAlloc); grew > 32<<20 {
		t.Errorf("heap grew by %d MiB while rewriting a %d MiB instance: not streaming", grew>>20, in.Size()>>20)
	}
}

// sampler discards what it is written, calling sample every so many bytes.
type sampler struct {
	every, n int64
	sample   func()
}

func (s *sampler) Write(p []byte) (int, error) {
	s.n += int64(len(p))
	if s.n >= s.every {
		s.n = 0
		s.sample()
	}
	return len(p), nil
}

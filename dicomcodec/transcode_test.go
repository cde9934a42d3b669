package dicomcodec_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/internal/dicomjsontest"
	"github.com/dicom-gateway/gateway/internal/synth"
	"github.com/dicom-gateway/gateway/internal/testcorpus"
)

// TestTranscodeToExplicitLE transcodes every Implicit VR Little Endian and
// Explicit VR Big Endian file of the corpus and the synthetic implicit case
// (defined- and undefined-length sequences, nested; private elements; a
// group length) and checks that the result parses as Explicit VR Little
// Endian with the same dataset, the same Pixel Data (byte-swapped in 16-bit
// words from big endian OW), and (when dcmtk is installed) the same
// dcm2json output as the original.
func TestTranscodeToExplicitLE(t *testing.T) {
	type input struct {
		name string
		data []byte
	}
	var inputs []input
	for _, c := range synth.MetadataCases() {
		if strings.Contains(c.Name, "implicit") {
			inputs = append(inputs, input{c.Name, c.Data})
		}
	}
	for _, f := range testcorpus.Files(t) {
		data, err := os.ReadFile(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		if h, err := dicomcodec.ParseHeader(bytes.NewReader(data), dicomcodec.HeaderLimits{}); err == nil &&
			(h.TransferSyntaxUID == dicomcodec.TSImplicitLE || h.TransferSyntaxUID == dicomcodec.TSExplicitBE) {
			inputs = append(inputs, input{f.Name, data})
		}
	}
	if len(inputs) < 3 {
		t.Fatalf("only %d implicit VR inputs", len(inputs))
	}
	dcm2json, _ := exec.LookPath("dcm2json")
	for _, in := range inputs {
		t.Run(in.name, func(t *testing.T) {
			var out bytes.Buffer
			n, err := dicomcodec.TranscodeToExplicitLE(&out, bytes.NewReader(in.data))
			if err != nil {
				t.Fatal(err)
			}
			if n != int64(out.Len()) {
				t.Fatalf("returned %d bytes, wrote %d", n, out.Len())
			}
			orig, err := dicomcodec.ParseHeader(bytes.NewReader(in.data), dicomcodec.HeaderLimits{})
			if err != nil {
				t.Fatal(err)
			}
			got, err := dicomcodec.ParseHeader(bytes.NewReader(out.Bytes()), dicomcodec.HeaderLimits{})
			if err != nil {
				t.Fatalf("transcoded instance does not parse: %v", err)
			}
			if got.TransferSyntaxUID != dicomcodec.TSExplicitLE {
				t.Fatalf("transcoded syntax %s", got.TransferSyntaxUID)
			}
			if a, b := datasetJSON(t, orig.Dataset), datasetJSON(t, got.Dataset); a != b {
				t.Errorf("dataset changed:\n orig %.600s\n got  %.600s", a, b)
			}
			if (orig.PixelData == nil) != (got.PixelData == nil) {
				t.Fatalf("pixel data present before %v, after %v", orig.PixelData != nil, got.PixelData != nil)
			}
			if orig.PixelData != nil {
				op, gp := orig.PixelData, got.PixelData
				want := bytes.Clone(in.data[op.ValueOffset : op.ValueOffset+op.ValueLength])
				if orig.TransferSyntaxUID == dicomcodec.TSExplicitBE && orig.Dataset[dicomcodec.TagPixelData].VR == "OW" {
					for i := 0; i+1 < len(want); i += 2 {
						want[i], want[i+1] = want[i+1], want[i]
					}
				}
				if op.ValueLength != gp.ValueLength || !bytes.Equal(want, out.Bytes()[gp.ValueOffset:gp.ValueOffset+gp.ValueLength]) {
					t.Fatal("Pixel Data differs after the transcode")
				}
			}
			if dcm2json == "" {
				return
			}
			want, err1 := runDcm2json(t, dcm2json, in.data)
			have, err2 := runDcm2json(t, dcm2json, out.Bytes())
			if err1 != nil {
				t.Skipf("dcm2json cannot read the original: %v", err1)
			}
			if err2 != nil {
				t.Fatalf("dcm2json cannot read the transcoded instance: %v", err2)
			}
			if diffs := dicomjsontest.Diff(have, want); len(diffs) > 0 {
				t.Errorf("dcm2json differs after the transcode:\n%s", strings.Join(diffs, "\n"))
			}
		})
	}
}

// datasetJSON is ds as JSON without group lengths (the transcode drops
// them).
func datasetJSON(t *testing.T, ds dicomcodec.Dataset) string {
	t.Helper()
	clean := dicomcodec.Dataset{}
	for k, v := range ds {
		if !strings.HasSuffix(k, "0000") {
			clean[k] = v
		}
	}
	b, err := json.Marshal(clean)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func runDcm2json(t *testing.T, bin string, data []byte) (map[string]any, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "in.dcm")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(t.Context(), bin, path).Output()
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		return nil, err
	}
	for k := range m {
		if strings.HasSuffix(k, "0000") {
			delete(m, k)
		}
	}
	return m, nil
}

// TestTranscodeEdges: a value too long for its VR's 16-bit length becomes
// UN with its bytes intact; malformed or non-implicit input is ErrMalformed,
// never a panic.
func TestTranscodeEdges(t *testing.T) {
	implicit := synthImplicit(t)
	t.Run("LongValueBecomesUN", func(t *testing.T) {
		long := bytes.Repeat([]byte("x"), 70000)
		el := binary.LittleEndian.AppendUint16(nil, 0x0040)
		el = binary.LittleEndian.AppendUint16(el, 0x1400) // Requested Procedure Comments, LT
		el = binary.LittleEndian.AppendUint32(el, uint32(len(long)))
		el = append(el, long...)
		data := insertBeforePixelData(t, implicit, el)
		var out bytes.Buffer
		if _, err := dicomcodec.TranscodeToExplicitLE(&out, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		i := bytes.Index(out.Bytes(), []byte{0x40, 0x00, 0x00, 0x14})
		if i < 0 || string(out.Bytes()[i+4:i+6]) != "UN" || binary.LittleEndian.Uint32(out.Bytes()[i+8:]) != 70000 ||
			!bytes.Equal(out.Bytes()[i+12:i+12+70000], long) {
			t.Fatal("a 70,000-byte LT value was not written as UN with its bytes")
		}
		// Read back, the UN is read with the dictionary's VR (PS3.5 6.2.2),
		// so the metadata is the same as the original's.
		orig, err := dicomcodec.ParseHeader(bytes.NewReader(data), dicomcodec.HeaderLimits{})
		if err != nil {
			t.Fatal(err)
		}
		if h, err := dicomcodec.ParseHeader(bytes.NewReader(out.Bytes()), dicomcodec.HeaderLimits{}); err != nil || h.Dataset["00401400"].VR != "LT" ||
			datasetJSON(t, dicomcodec.Dataset{"00401400": h.Dataset["00401400"]}) != datasetJSON(t, dicomcodec.Dataset{"00401400": orig.Dataset["00401400"]}) {
			t.Fatalf("output: err %v, (0040,1400) read back differs from the original's", err)
		}
		if _, err := dicomcodec.ParseHeader(bytes.NewReader(out.Bytes()), dicomcodec.HeaderLimits{}); err != nil {
			t.Fatalf("output does not parse: %v", err)
		}
	})
	for name, data := range map[string][]byte{
		"Truncated":       implicit[:len(implicit)-5],
		"TruncatedHeader": implicit[:200],
		"NoDICM":          append(make([]byte, 128), "DICX"...),
		"Explicit":        synth.MetadataCases()[0].Data,
		"Empty":           nil,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := dicomcodec.TranscodeToExplicitLE(&bytes.Buffer{}, bytes.NewReader(data))
			if !errors.Is(err, dicomcodec.ErrMalformed) {
				t.Fatalf("err=%v, want ErrMalformed", err)
			}
		})
	}
	if !dicomcodec.CanTranscode(dicomcodec.TSImplicitLE, dicomcodec.TSExplicitLE) || !dicomcodec.CanTranscode(dicomcodec.TSExplicitBE, dicomcodec.TSExplicitLE) ||
		dicomcodec.CanTranscode(dicomcodec.TSExplicitLE, dicomcodec.TSImplicitLE) || dicomcodec.CanTranscode(dicomcodec.TSJPEGBaseline, dicomcodec.TSExplicitLE) {
		t.Fatal("CanTranscode offers something other than implicit LE or explicit BE → explicit LE")
	}
}

func synthImplicit(t testing.TB) []byte {
	for _, c := range synth.MetadataCases() {
		if strings.Contains(c.Name, "implicit") {
			return c.Data
		}
	}
	t.Fatal("no implicit synthetic case")
	return nil
}

// insertBeforePixelData inserts el (an implicit element, tag below Pixel
// Data and above every other tag of the synthetic case) before Pixel Data.
func insertBeforePixelData(t *testing.T, data, el []byte) []byte {
	i := bytes.Index(data, []byte{0xE0, 0x7F, 0x10, 0x00})
	if i < 0 {
		t.Fatal("no Pixel Data")
	}
	return append(append(append([]byte(nil), data[:i]...), el...), data[i:]...)
}

// TestTranscodeStreams: a 256 MiB implicit instance transcodes with a few
// MiB allocated in all, so memory does not grow with the pixel data.
func TestTranscodeStreams(t *testing.T) {
	implicit := synthImplicit(t)
	i := bytes.Index(implicit, []byte{0xE0, 0x7F, 0x10, 0x00})
	const pixels = 256 << 20
	head := binary.LittleEndian.AppendUint32(append([]byte(nil), implicit[:i+4]...), pixels)
	in := io.MultiReader(bytes.NewReader(head), io.LimitReader(zeros{}, pixels))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	n, err := dicomcodec.TranscodeToExplicitLE(io.Discard, in)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if n < pixels {
		t.Fatalf("wrote %d bytes, want more than %d", n, pixels)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
		t.Fatalf("allocated %d MiB to transcode a %d MiB instance", alloc>>20, pixels>>20)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// FuzzTranscode: any input ends in an error or an output that parses as
// Explicit VR Little Endian, never a panic, and the output stays within a
// few times the input (headers grow by at most 4 bytes, and each item and
// sequence gains an 8-byte delimiter). Seeds: the implicit and big endian
// files of the corpus.
func FuzzTranscode(f *testing.F) {
	f.Add(synthImplicit(f))
	for _, file := range testcorpus.Files(f) {
		if file.Bytes > 256<<10 {
			continue
		}
		data, err := os.ReadFile(file.Path)
		if err != nil {
			f.Fatal(err)
		}
		if h, err := dicomcodec.ParseHeader(bytes.NewReader(data), dicomcodec.HeaderLimits{}); err == nil && dicomcodec.CanTranscode(h.TransferSyntaxUID, dicomcodec.TSExplicitLE) {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var out bytes.Buffer
		n, err := dicomcodec.TranscodeToExplicitLE(&out, bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, dicomcodec.ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		if n != int64(out.Len()) || n > 3*int64(len(data))+64 {
			t.Fatalf("%d bytes in, %d out (reported %d)", len(data), out.Len(), n)
		}
		if _, err := dicomcodec.ParseHeader(bytes.NewReader(data), dicomcodec.HeaderLimits{}); err != nil {
			return // the input was not a valid instance; the output need not be either
		}
		if _, err := dicomcodec.ParseHeader(bytes.NewReader(out.Bytes()), dicomcodec.HeaderLimits{}); err != nil {
			t.Fatalf("a valid instance transcoded into one that does not parse: %v", err)
		}
	})
}

// TestSwapBytes16: words are swapped whatever the reads' sizes and
// alignment (iotest.OneByteReader splits every word).
func TestSwapBytes16(t *testing.T) {
	in := make([]byte, 100001)
	for i := range in {
		in[i] = byte(i * 7)
	}
	want := bytes.Clone(in)
	for i := 0; i+1 < len(want); i += 2 {
		want[i], want[i+1] = want[i+1], want[i]
	}
	for name, r := range map[string]io.Reader{
		"whole":    bytes.NewReader(in),
		"one byte": iotest.OneByteReader(bytes.NewReader(in)),
		"half":     iotest.HalfReader(bytes.NewReader(in)),
	} {
		got, err := io.ReadAll(iotest.OneByteReader(dicomcodec.SwapBytes16(io.NopCloser(r))))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes, err %v; want %d swapped bytes", name, len(got), err, len(want))
		}
	}
}

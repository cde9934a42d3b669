package main

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/internal/synth"
)

// The cheap pieces of the transfer benchmark; the proxy itself is tested in
// internal/wanproxy, the whole benchmark only by running it.

func TestTransferDataSpreadsSlicesOverStudies(t *testing.T) {
	data := transferData(4, 409, 8)
	if got, want := len(data), 410; got != want {
		t.Fatalf("%d instances, want %d (409 slices + 1 big)", got, want)
	}
	perStudy := map[string]int{}
	sops := map[string]bool{}
	for _, in := range data {
		perStudy[in.StudyInstanceUID]++
		if sops[in.SOPInstanceUID] {
			t.Fatalf("SOP Instance UID %s twice", in.SOPInstanceUID)
		}
		sops[in.SOPInstanceUID] = true
	}
	if got, want := len(perStudy), 5; got != want {
		t.Fatalf("%d studies, want %d", got, want)
	}
	for study, n := range perStudy {
		if study == synth.UID(5, 1) {
			if n != 1 {
				t.Errorf("the big study has %d instances, want 1", n)
			}
		} else if n != 102 && n != 103 {
			t.Errorf("study %s has %d slices, want 102 or 103", study, n)
		}
	}
	if got, want := data[len(data)-1].PixelBytes(), int64(8<<20); got != want {
		t.Errorf("big instance has %d bytes of pixel data, want %d (-big-mib 8)", got, want)
	}
	if got := len(transferData(2, 40, 0)); got != 40 {
		t.Errorf("-big-mib 0: %d instances, want 40 (no big study)", got)
	}
}

func TestPatternReaderYieldsExactlyN(t *testing.T) {
	for _, n := range []int64{0, 1, 1 << 20, 3<<20 + 17} {
		b, err := io.ReadAll(&patternReader{n: n, off: 4096})
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(b)) != n {
			t.Fatalf("read %d bytes, want %d", len(b), n)
		}
		if n > 4096 && !bytes.Equal(b[:4096], pattern[4096:8192]) {
			t.Errorf("n=%d: the bytes do not start at the offset in the pattern", n)
		}
	}
}

func TestSubcommandsRejectBadFlags(t *testing.T) {
	var stderr strings.Builder
	if got := wanproxyMain(nil, &stderr); got != 2 {
		t.Errorf("wanproxy without -target exited %d, want 2", got)
	}
	if got := wanproxyMain([]string{"-target", "127.0.0.1:1", "-rtt", "-5ms"}, &stderr); got != 1 {
		t.Errorf("wanproxy with a negative -rtt exited %d, want 1", got)
	}
	for _, args := range [][]string{{"-systems", "embedded,pacs"}, {"-part-conc", "0"}, {"-studies", "0"}, {"-mbit", "-1"}} {
		if got := transferMain(args, io.Discard, &stderr); got != 2 {
			t.Errorf("transfer %v exited %d, want 2", args, got)
		}
	}
}

// TestTransferRoundsNote: with several rounds, each gateway case is divided
// by Orthanc's case of the same round, link and data, and the WAN cases
// give their share of the link, round by round.
func TestTransferRoundsNote(t *testing.T) {
	tb := &transferBench{cfg: transferConfig{rounds: 2}}
	tb.cfg.link.Mbit = 800 // 100 MB/s
	b := &batch{label: "data", bytes: 100 * mb}
	cases := []forwardCase{
		{system: "gateway", backend: "embedded", round: 0, batch: b, d: 500 * time.Millisecond},             // 200 MB/s
		{system: "orthanc", backend: "orthanc", round: 0, batch: b, d: time.Second},                         // 100 MB/s
		{system: "orthanc", backend: "orthanc", round: 1, batch: b, d: 2 * time.Second},                     // 50 MB/s
		{system: "gateway", backend: "embedded", round: 1, batch: b, d: time.Second},                        // 100 MB/s
		{system: "gateway", backend: "embedded", round: 0, wan: true, batch: b, d: 1250 * time.Millisecond}, // 80 MB/s
	}
	orthanc := map[caseKey]float64{}
	for _, c := range cases {
		if c.system == "orthanc" {
			orthanc[c.key()] = float64(c.batch.bytes) / mb / c.d.Seconds()
		}
	}
	note := tb.roundsNote(cases, orthanc)
	for _, want := range []string{"embedded, loopback, data: gateway/orthanc 2.00, 2.00 (median 2.00)", "share of the link 80 % (median 80 %)"} {
		if !strings.Contains(note, want) {
			t.Errorf("note lacks %q:\n%s", want, note)
		}
	}
	if strings.Contains(note, "orthanc, loopback") {
		t.Errorf("Orthanc's own cases are listed:\n%s", note)
	}
}

// TestForwardTableCPUPerGB: the CPU columns give each process's CPU
// seconds per GB forwarded, "—" where not read, and every row has as many
// cells as the header.
func TestForwardTableCPUPerGB(t *testing.T) {
	tb := &transferBench{}
	b := &batch{label: "data", bytes: 500_000_000, instances: 10}
	cases := []forwardCase{
		{system: "gateway", backend: "embedded", batch: b, d: time.Second, senderCPU: 250 * time.Millisecond, receiverCPU: 1500 * time.Millisecond},
		{system: "orthanc", backend: "orthanc", batch: b, d: 2 * time.Second},
		{system: "gateway", backend: "embedded", wan: true, batch: b, err: errors.New("boom")},
	}
	table := tb.forwardTable(cases, nil)
	var rows [][]string
	for line := range strings.SplitSeq(table, "\n") {
		if strings.HasPrefix(line, "| ") {
			rows = append(rows, strings.Split(strings.Trim(line, "| "), " | "))
		}
	}
	if len(rows) != 4 {
		t.Fatalf("%d table rows, want a header and 3:\n%s", len(rows), table)
	}
	header := rows[0]
	if header[len(header)-2] != "sender CPU s per GB" || header[len(header)-1] != "receiver CPU s per GB" {
		t.Fatalf("header ends %q", header[len(header)-2:])
	}
	var lines []string
	for line := range strings.SplitSeq(table, "\n") {
		if strings.HasPrefix(line, "|") {
			lines = append(lines, line)
		}
	}
	for _, line := range lines[2:] { // the rows after the header and its rule
		if got, want := strings.Count(line, "|"), strings.Count(lines[0], "|"); got != want {
			t.Errorf("row has %d cell borders, the header %d: %s", got, want, line)
		}
	}
	if got := rows[1][len(header)-2:]; got[0] != "0.50" || got[1] != "3.00" {
		t.Errorf("gateway CPU per GB %q, want 0.50 and 3.00", got)
	}
	if got := rows[2][len(header)-2:]; got[0] != "—" || got[1] != "—" {
		t.Errorf("unread CPU %q, want —", got)
	}
}

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/internal/orthanctest"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// BenchmarkDIMSEStoreSCU sends the same 200-slice synthetic CT (512×512,
// 16-bit: 100 MiB) with one storescu +sd association to the gateway's
// DIMSE listener (embedded backends) and to Orthanc's DICOM server, and
// reports instances/s, MB/s and the receiver's peak RSS side by side. Run it
// once: go test -run XXX -bench DIMSEStoreSCU -benchtime 1x ./cmd/gateway/
// (the gateway runs in the benchmark's process, so its peak RSS includes
// the test binary's own few MB; Orthanc's is read from /proc).
func BenchmarkDIMSEStoreSCU(b *testing.B) {
	storescu, err := exec.LookPath("storescu")
	if err != nil {
		b.Skip("storescu missing: apt-get install dcmtk")
	}
	dir := b.TempDir()
	var total int64
	for i, in := range synth.Study(synth.StudySpec{Seed: 2019, InstancesPerSeries: 200, Rows: 512, Columns: 512}) {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("%03d.dcm", i)))
		if err != nil {
			b.Fatal(err)
		}
		w := bufio.NewWriterSize(f, 1<<20)
		n, err := in.WriteTo(w)
		if err == nil {
			err = w.Flush()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			b.Fatal(err)
		}
		total += n
	}
	send := func(b *testing.B, port int, calledAE string) time.Duration {
		ctx, cancel := context.WithTimeout(b.Context(), 10*time.Minute)
		defer cancel()
		start := time.Now()
		out, err := exec.CommandContext(ctx, storescu, "-aec", calledAE, "+sd", "127.0.0.1", strconv.Itoa(port), dir).CombinedOutput()
		if err != nil {
			b.Fatalf("storescu: %v\n%s", err, out)
		}
		return time.Since(start)
	}
	report := func(b *testing.B, d time.Duration, peakRSS int64) {
		b.ReportMetric(200/d.Seconds(), "instances/s")
		b.ReportMetric(float64(total)/1e6/d.Seconds(), "MB/s")
		b.ReportMetric(float64(peakRSS)/(1<<20), "peak-RSS-MiB")
		b.ReportMetric(0, "ns/op")
	}

	b.Run("gateway", func(b *testing.B) {
		cfg := dicomConfig(b)
		m := NewMain(cfg, newLogger(io.Discard, "error"))
		if err := m.Run(b.Context()); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = m.Close(ctx)
		})
		_, p, _ := net.SplitHostPort(m.DicomAddr)
		port, _ := strconv.Atoi(p)
		var d time.Duration
		for b.Loop() {
			d = send(b, port, "HAMPSHIRE")
		}
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		report(b, d, ru.Maxrss*1024)
	})
	b.Run("orthanc", func(b *testing.B) {
		o := orthanctest.Start(b, orthanctest.Options{DICOM: &orthanctest.DICOMOptions{AETitle: "ORTHANC"}})
		var d time.Duration
		for b.Loop() {
			d = send(b, o.DICOMPort, "ORTHANC")
		}
		report(b, d, vmHWM(b, o.PID))
	})
}

// vmHWM is a process's peak resident set size, from /proc.
func vmHWM(b *testing.B, pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024
		}
	}
	b.Fatal("no VmHWM in /proc status")
	return 0
}

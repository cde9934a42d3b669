// Command synth writes synthetic DICOM studies (synthetic patients, pseudo-
// random 16-bit pixels) for tests, the demo and benchmarks. The committed
// samples in testdata/studies are its output:
//
//	go run ./cmd/synth -out testdata/studies
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dicom-gateway/gateway/internal/synth"
)

func main() {
	out := flag.String("out", "testdata/studies", "output directory")
	studies := flag.Int("studies", 3, "number of studies")
	series := flag.Int("series", 2, "series per study")
	instances := flag.Int("instances", 3, "instances per series")
	size := flag.Int("size", 64, "rows and columns of each image")
	frames := flag.Int("frames", 1, "frames per instance")
	seed := flag.Uint64("seed", 1000, "seed of the first study")
	flag.Parse()
	if err := run(*out, *studies, *series, *instances, *size, *frames, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "synth:", err)
		os.Exit(1)
	}
}

func run(out string, studies, series, instances, size, frames int, seed uint64) error {
	modalities := []string{"CT", "MR", "CT"}
	for s := 0; s < studies; s++ {
		spec := synth.StudySpec{
			Seed: seed + uint64(s), Patient: s, Series: series, InstancesPerSeries: instances,
			Rows: size, Columns: size, Frames: frames, Modality: modalities[s%len(modalities)],
		}
		dir := filepath.Join(out, fmt.Sprintf("study%d", s+1))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		for _, in := range synth.Study(spec) {
			name := filepath.Join(dir, fmt.Sprintf("s%d-i%d.dcm", in.SeriesNumber, in.InstanceNumber))
			f, err := os.Create(name)
			if err != nil {
				return err
			}
			if _, err := in.WriteTo(f); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
		}
	}
	return nil
}

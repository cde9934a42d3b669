package synth

import (
	"cmp"
	"fmt"
	"math/rand/v2"
)

// Patients are synthetic people: no real patient's data is ever used.
var Patients = []struct{ Name, ID, BirthDate, Sex string }{
	{"Llewellyn^Bronwen", "HAM100001", "19610314", "F"},
	{"Ashcombe^Thomas^J", "HAM100002", "19480702", "M"},
	{"Müller^Jürgen", "SUR200003", "19750129", "M"},
	{"Pryce^Gwenllian", "CAR300004", "19900917", "F"},
	{"Okafor^Chidi", "SUR200005", "19830511", "M"},
	{"山田^太郎", "HAM100006", "19551224", "M"},
}

// StudySpec shapes a generated study.
type StudySpec struct {
	Seed               uint64 // same seed, same UIDs and bytes
	Patient            int    // index into Patients
	Series             int    // number of series (default 1)
	InstancesPerSeries int    // default 1
	Rows, Columns      int    // default 64x64
	Frames             int    // per instance, default 1
	Modality           string // default CT
	StudyDate          string // default derived from the seed
}

// UID makes a valid UID under UIDRoot from numbers (no leading zeros).
func UID(parts ...uint64) string {
	s := UIDRoot
	for _, p := range parts {
		s += fmt.Sprintf(".%d", p)
	}
	return s
}

// Study returns the instances of one synthetic study, in series then
// instance order.
func Study(spec StudySpec) []Instance {
	if spec.Series == 0 {
		spec.Series = 1
	}
	if spec.InstancesPerSeries == 0 {
		spec.InstancesPerSeries = 1
	}
	if spec.Modality == "" {
		spec.Modality = "CT"
	}
	rng := rand.New(rand.NewPCG(spec.Seed, 7))
	if spec.StudyDate == "" {
		spec.StudyDate = fmt.Sprintf("20%02d%02d%02d", 15+rng.IntN(11), 1+rng.IntN(12), 1+rng.IntN(28))
	}
	p := Patients[spec.Patient%len(Patients)]
	studyUID := UID(spec.Seed + 1)
	sopClass := CTImageStorage
	if spec.Modality == "MR" {
		sopClass = MRImageStorage
	}
	var out []Instance
	studyTime := "" // one per study, as a modality writes it: the first instance's draw
	for s := 1; s <= spec.Series; s++ {
		seriesUID := UID(spec.Seed+1, uint64(s))
		for i := 1; i <= spec.InstancesPerSeries; i++ {
			out = append(out, Instance{
				PatientName: p.Name, PatientID: p.ID, PatientBirthDate: p.BirthDate, PatientSex: p.Sex,
				StudyInstanceUID: studyUID, SeriesInstanceUID: seriesUID,
				SOPInstanceUID:     UID(spec.Seed+1, uint64(s), uint64(i)),
				SOPClassUID:        sopClass,
				StudyDate:          spec.StudyDate,
				StudyTime:          cmp.Or(studyTime, fmt.Sprintf("%02d%02d%02d", rng.IntN(24), rng.IntN(60), rng.IntN(60))),
				AccessionNumber:    fmt.Sprintf("ACC%07d", spec.Seed%10_000_000),
				StudyID:            fmt.Sprintf("%d", spec.Seed%100000+1),
				StudyDescription:   "Synthetic " + spec.Modality + " study",
				SeriesDescription:  fmt.Sprintf("Series %d", s),
				Modality:           spec.Modality,
				ReferringPhysician: "Synthetic^Referrer",
				SeriesNumber:       s, InstanceNumber: i,
				Rows: spec.Rows, Columns: spec.Columns, Frames: spec.Frames,
				PixelSeed: spec.Seed*1_000_003 + uint64(s)*10_007 + uint64(i),
			})
			studyTime = out[len(out)-1].StudyTime
		}
	}
	return out
}

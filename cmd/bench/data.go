package main

import (
	"fmt"
	"time"

	"github.com/dicom-gateway/gateway/internal/synth"
)

// The data sets. UIDs live under synth.UIDRoot with a first component per
// data set (1 small, 2 CT, 3 big, 9 QIDO), so they never collide. The
// studies of (a)–(c) are dated 19990101 with their own patients, outside
// every QIDO date range and name prefix, so they barely touch (d).

const multiFrameGrayscaleWordSC = "1.2.840.10008.5.1.4.1.1.7.2"

// smallInstances are (a): n instances of 160x160x16-bit (about 51 KB), one
// study, one series (also the series of the metadata figure in (e)). Each
// round of -rounds stores its own copy: the same pixels under other UIDs.
func smallInstances(n, round int) []synth.Instance {
	study := uint64(round + 1)
	out := make([]synth.Instance, n)
	for i := range out {
		out[i] = synth.Instance{
			PatientName: "Benchmark^Small", PatientID: "BENCH-SMALL", PatientBirthDate: "19700101", PatientSex: "O",
			StudyInstanceUID: synth.UID(1, study), SeriesInstanceUID: synth.UID(1, study, 1), SOPInstanceUID: synth.UID(1, study, 1, uint64(i+1)),
			SOPClassUID: synth.SecondaryCapture, Modality: "OT",
			StudyDate: "19990101", StudyTime: "120000", AccessionNumber: "BENCHSMALL", StudyID: "1",
			StudyDescription: "bench small instances", SeriesDescription: "small",
			SeriesNumber: 1, InstanceNumber: i + 1, Rows: 160, Columns: 160, PixelSeed: uint64(i + 1),
		}
	}
	return out
}

// ctInstances are (b): n CT slices of 512x512x16-bit, one study, one
// series, a copy of its own for each round as smallInstances.
func ctInstances(n, round int) []synth.Instance {
	study := uint64(round + 1)
	out := make([]synth.Instance, n)
	for i := range out {
		out[i] = synth.Instance{
			PatientName: "Benchmark^CT", PatientID: "BENCH-CT", PatientBirthDate: "19700101", PatientSex: "O",
			StudyInstanceUID: synth.UID(2, study), SeriesInstanceUID: synth.UID(2, study, 1), SOPInstanceUID: synth.UID(2, study, 1, uint64(i+1)),
			SOPClassUID: synth.CTImageStorage, Modality: "CT",
			StudyDate: "19990101", StudyTime: "120000", AccessionNumber: "BENCHCT", StudyID: "2",
			StudyDescription: "bench CT study", SeriesDescription: "axial",
			SeriesNumber: 1, InstanceNumber: i + 1, Rows: 512, Columns: 512, PixelSeed: 1_000_000 + uint64(i),
		}
	}
	return out
}

// bigInstance is (c): one multi-frame instance of frames 512x512x16-bit
// frames (2,048 frames = 1 GiB of pixel data).
func bigInstance(frames int) synth.Instance {
	return synth.Instance{
		PatientName: "Benchmark^Big", PatientID: "BENCH-BIG", PatientBirthDate: "19700101", PatientSex: "O",
		StudyInstanceUID: synth.UID(3, 1), SeriesInstanceUID: synth.UID(3, 1, 1), SOPInstanceUID: synth.UID(3, 1, 1, 1),
		SOPClassUID: multiFrameGrayscaleWordSC, Modality: "OT",
		StudyDate: "19990101", StudyTime: "120000", AccessionNumber: "BENCHBIG", StudyID: "3",
		StudyDescription: "bench multi-frame", SeriesDescription: "cine",
		Rows: 512, Columns: 512, Frames: frames, PixelSeed: 3,
	}
}

// QIDO data set (d): study k is one tiny (8x8) instance of patient k/2 (so
// most patients have two studies), a date spread over 2010–2024, a modality
// and a unique accession number, all derived from k.
var qidoModalities = []string{"CT", "MR", "CR", "DX", "US", "MG", "PT", "NM", "XA", "RF"}

var qidoEpoch = time.Date(2010, 1, 1, 0, 0, 0, 0, time.UTC)

const qidoDays = 15 * 365

func qidoHash(k uint64) uint64 {
	x := k*0x9e3779b97f4a7c15 + 0x632be59bd9b4e019
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

func qidoPatient(k int) synth.Person { return synth.GeneratedPerson(uint64(k / 2)) }

func qidoAccession(k int) string { return fmt.Sprintf("ACC%08d", k) }

func qidoInstance(k int) synth.Instance {
	h := qidoHash(uint64(k))
	p := qidoPatient(k)
	mod := qidoModalities[h%uint64(len(qidoModalities))]
	sop := synth.SecondaryCapture
	switch mod {
	case "CT":
		sop = synth.CTImageStorage
	case "MR":
		sop = synth.MRImageStorage
	}
	date := qidoEpoch.AddDate(0, 0, int((h>>8)%qidoDays))
	return synth.Instance{
		PatientName: p.Name, PatientID: p.ID, PatientBirthDate: p.BirthDate, PatientSex: p.Sex,
		StudyInstanceUID: synth.UID(9, uint64(k+1)), SeriesInstanceUID: synth.UID(9, uint64(k+1), 1),
		SOPInstanceUID: synth.UID(9, uint64(k+1), 1, 1), SOPClassUID: sop, Modality: mod,
		StudyDate: date.Format("20060102"), StudyTime: fmt.Sprintf("%02d%02d%02d", (h>>24)%24, (h>>32)%60, (h>>40)%60),
		AccessionNumber: qidoAccession(k), StudyID: fmt.Sprint(k%100000 + 1),
		StudyDescription: "Synthetic " + mod + " study", SeriesDescription: "Series 1",
		ReferringPhysician: "Synthetic^Referrer",
		SeriesNumber:       1, InstanceNumber: 1, Rows: 8, Columns: 8, PixelSeed: uint64(k),
	}
}

func qidoInstances(from, to int) []synth.Instance {
	out := make([]synth.Instance, 0, to-from)
	for k := from; k < to; k++ {
		out = append(out, qidoInstance(k))
	}
	return out
}

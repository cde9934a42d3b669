package gateway

import (
	"strings"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// instanceLevelTags are the Instance-level attributes an index keeps beyond
// those QIDO-RS returns by default (instanceReturnTags): the C-FIND
// Instance-level keys clients commonly match on.
var instanceLevelTags = setOf(dicomcodec.TagSOPClassUID, dicomcodec.TagSOPInstanceUID, dicomcodec.TagInstanceNumber,
	"00080008", "00080022", "00080023", "00080032", "00080033", "00200012", "00200013", "00200020", "00400512")

// IndexRecord returns the copy of rec an index keeps: its identity, layout
// and digest fields, and of its header only what QIDO-RS matches and returns
// (the Patient, Study, Series and Instance level attributes) and what
// retrieval needs without opening the blob (the Image Pixel attributes of
// group 0028 for frames and rendering, and the pixel data elements' bulk data
// references). The rest of the header — private groups, sequences, the
// acquisition details that make a CT header 15 KB — stays in the blob, from
// which its prepared metadata is made for WADO-RS (MetadataStore).
// Index memory per instance is what bounds how many instances one
// deployment holds.
func IndexRecord(rec *InstanceRecord) *InstanceRecord {
	lean := *rec
	lean.Metadata = make(dicomcodec.Dataset, 48)
	for t, a := range rec.Metadata {
		if keptInIndex(t) {
			lean.Metadata[t] = a
		}
	}
	return &lean
}

func keptInIndex(tag string) bool {
	return studyLevelTags[tag] || seriesLevelTags[tag] || instanceLevelTags[tag] || instanceReturnTagSet[tag] ||
		strings.HasPrefix(tag, "0028") || strings.HasPrefix(tag, "7FE0")
}

var instanceReturnTagSet = setOf(instanceReturnTags...)

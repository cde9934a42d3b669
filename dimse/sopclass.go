package dimse

import (
	"strings"

	"github.com/suyashkumar/dicom/pkg/uid"
)

// Well-known UIDs.
const (
	VerificationSOPClass   = "1.2.840.10008.1.1"
	ImplicitVRLittleEndian = "1.2.840.10008.1.2"
	ExplicitVRLittleEndian = "1.2.840.10008.1.2.1"

	// ImplementationClassUID and ImplementationVersion identify this
	// implementation in associations and in the File Meta Information it
	// writes (PS3.7 D.3.3.2).
	ImplementationClassUID = "1.2.826.0.1.3680043.10.1466.3"
	ImplementationVersion  = "DICOMGW_DIMSE_1"
)

// storageArc is the arc under which PS3.4 Annex B registers (almost) every
// Storage SOP Class, and nothing else.
const storageArc = "1.2.840.10008.5.1.4.1.1."

// IsStorageSOPClass reports whether a C-STORE of this SOP class is
// accepted. Two rules, because neither alone is enough:
//   - every UID under 1.2.840.10008.5.1.4.1.1 (the Storage SOP Class arc of
//     PS3.4 Annex B, which holds no other kind of class), so a storage class
//     newer than the dictionary is still accepted;
//   - the classes elsewhere under 1.2.840.10008.5.1.4 that the dictionary of
//     github.com/suyashkumar/dicom names "... Storage" (Hanging Protocol,
//     Color Palette, implant templates, RT delivery instructions).
//
// A plain prefix rule on 1.2.840.10008.5.1.4 would be wrong: that arc also
// holds Query/Retrieve (5.1.4.1.2), worklists (5.1.4.31), UPS (5.1.4.34.6)
// and the FIND/MOVE/GET models beside each non-image storage class.
// Storage Commitment (1.2.840.10008.1.20.1) and the Media Storage Directory
// (a DICOMDIR, 1.2.840.10008.1.3.10) are not storage classes. Private SOP
// classes are refused: the ingest cannot vouch for them.
func IsStorageSOPClass(sopClass string) bool {
	if strings.HasPrefix(sopClass, storageArc) {
		return true
	}
	if !strings.HasPrefix(sopClass, "1.2.840.10008.5.1.4.") {
		return false
	}
	info, err := uid.Lookup(sopClass)
	if err != nil || info.Type != uid.TypeSOPClass {
		return false
	}
	name := strings.TrimSuffix(info.Name, " - Trial")
	return strings.HasSuffix(name, " Storage")
}

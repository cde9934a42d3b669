package gateway

import (
	"strings"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// ValidateUID checks that a UID is safe to become part of a storage key and
// a URL (dicomcodec.ValidateUID: the syntax of PS3.5 9.1 minus the
// leading-zero rule). Every UID is checked with it before it becomes part of
// a storage key, so "..", "/", "%2F" or NUL can never reach a path or object
// name; a refusal wraps ErrInvalid.
func ValidateUID(uid string) error {
	return FromCodec(dicomcodec.ValidateUID(uid))
}

// UIDDeviations lists the identifying UIDs of the record that ValidateUID
// accepted although they break PS3.5 9.1 (UIDDeviation), one line each
// naming the attribute, the UID and the deviation; nil when there are none.
// UIDs are not patient data: the lines may be logged and sent back.
func (r *InstanceRecord) UIDDeviations() []string {
	var out []string
	for _, f := range []struct{ name, uid string }{
		{"SOP Class UID", r.SOPClassUID},
		{"SOP Instance UID", r.SOPInstanceUID},
		{"Study Instance UID", r.StudyInstanceUID},
		{"Series Instance UID", r.SeriesInstanceUID},
	} {
		if d := dicomcodec.UIDDeviation(f.uid); d != "" {
			out = append(out, f.name+" "+f.uid+" has "+d)
		}
	}
	return out
}

// printable makes a hostile string safe to put in an error message
// (dicomcodec.Printable).
func printable(s string) string { return dicomcodec.Printable(s) }

// InstanceKey is the blob storage key of an instance's original bytes. The
// UIDs must have passed ValidateUID; InstanceKey panics otherwise, because a
// key built from an unchecked UID is a path-traversal bug, not bad input.
func InstanceKey(studyUID, seriesUID, sopInstanceUID string) string {
	for _, uid := range []string{studyUID, seriesUID, sopInstanceUID} {
		if err := ValidateUID(uid); err != nil {
			panic("gateway.InstanceKey called with an unvalidated uid: " + err.Error())
		}
	}
	return "studies/" + studyUID + "/series/" + seriesUID + "/instances/" + sopInstanceUID + ".dcm"
}

// StudyPrefix is the key prefix under which all of a study's instances lie.
func StudyPrefix(studyUID string) string {
	if err := ValidateUID(studyUID); err != nil {
		panic("gateway.StudyPrefix called with an unvalidated uid: " + err.Error())
	}
	return "studies/" + studyUID + "/"
}

// ParseInstanceKey is the inverse of InstanceKey; it is used by reindex to
// recognise instance blobs. ok is false for any other key.
func ParseInstanceKey(key string) (studyUID, seriesUID, sopInstanceUID string, ok bool) {
	parts := strings.Split(key, "/")
	if len(parts) != 6 || parts[0] != "studies" || parts[2] != "series" || parts[4] != "instances" || !strings.HasSuffix(parts[5], ".dcm") {
		return "", "", "", false
	}
	studyUID, seriesUID, sopInstanceUID = parts[1], parts[3], strings.TrimSuffix(parts[5], ".dcm")
	for _, uid := range []string{studyUID, seriesUID, sopInstanceUID} {
		if ValidateUID(uid) != nil {
			return "", "", "", false
		}
	}
	return studyUID, seriesUID, sopInstanceUID, true
}

package gateway

import (
	"fmt"
	"strings"
)

// ValidateUID checks that a UID is safe to become part of a storage key
// and a URL: only digits and dots, at most 64 characters, no empty
// component (so no leading, trailing or double dot). Every UID is checked
// with it before it becomes part of a storage key, so "..", "/", "%2F" or
// NUL can never reach a path or object name.
//
// It is PS3.5 section 9.1 except for one rule it tolerates: a component
// with a leading zero ("1.2.840.0113"), which some vendors' equipment
// writes. Such instances are stored (refusing them loses real studies) and
// the deviation is reported by UIDDeviation. That rule, and only that one,
// is relaxed here; everything that makes a UID safe is kept.
func ValidateUID(uid string) error {
	if uid == "" {
		return fmt.Errorf("uid is empty: %w", ErrInvalid)
	}
	if len(uid) > 64 {
		return fmt.Errorf("uid is %d characters, more than 64: %w", len(uid), ErrInvalid)
	}
	start := 0
	for i := 0; i <= len(uid); i++ {
		if i < len(uid) && uid[i] != '.' {
			if uid[i] < '0' || uid[i] > '9' {
				return fmt.Errorf("uid %q has a character other than a digit or a dot: %w", printable(uid), ErrInvalid)
			}
			continue
		}
		if i == start {
			return fmt.Errorf("uid %q has an empty component: %w", uid, ErrInvalid)
		}
		start = i + 1
	}
	return nil
}

// UIDDeviation returns how a UID that passed ValidateUID still breaks PS3.5
// section 9.1, or "" when it does not: a component with a leading zero (a
// lone "0" is a valid component). Ingest stores such instances with a
// warning.
func UIDDeviation(uid string) string {
	for component := range strings.SplitSeq(uid, ".") {
		if len(component) > 1 && component[0] == '0' {
			return "a component with a leading zero (PS3.5 9.1)"
		}
	}
	return ""
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
		if d := UIDDeviation(f.uid); d != "" {
			out = append(out, f.name+" "+f.uid+" has "+d)
		}
	}
	return out
}

// printable makes a hostile UID safe to put in an error message.
func printable(s string) string {
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return strings.ToValidUTF8(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s), "?")
}

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

package gateway

import (
	"fmt"
	"strings"
)

// ValidateUID checks a UID against PS3.5 section 9.1: only digits and dots, at
// most 64 characters, no empty component, and no component with a leading
// zero (a lone "0" is allowed). Every UID is checked with it before it
// becomes part of a storage key, so "..", "/", "%2F" or NUL can never reach
// a path or object name.
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
		component := uid[start:i]
		if component == "" {
			return fmt.Errorf("uid %q has an empty component: %w", uid, ErrInvalid)
		}
		if len(component) > 1 && component[0] == '0' {
			return fmt.Errorf("uid %q has a component with a leading zero: %w", uid, ErrInvalid)
		}
		start = i + 1
	}
	return nil
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

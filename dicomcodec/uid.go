package dicomcodec

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
		return fmt.Errorf("uid is empty: %w", ErrInvalidUID)
	}
	if len(uid) > 64 {
		return fmt.Errorf("uid is %d characters, more than 64: %w", len(uid), ErrInvalidUID)
	}
	start := 0
	for i := 0; i <= len(uid); i++ {
		if i < len(uid) && uid[i] != '.' {
			if uid[i] < '0' || uid[i] > '9' {
				return fmt.Errorf("uid %q has a character other than a digit or a dot: %w", Printable(uid), ErrInvalidUID)
			}
			continue
		}
		if i == start {
			return fmt.Errorf("uid %q has an empty component: %w", uid, ErrInvalidUID)
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

// Printable makes a hostile UID safe to put in an error message.
func Printable(s string) string {
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

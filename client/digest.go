package client

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Integrity of each STOW-RS part, end to end. A sender that knows the
// SHA-256 of an instance declares it in the part's Content-Digest header
// (RFC 9530); a receiver that checks it refuses a part whose bytes differ
// and says so in its answer's HeaderDigestsChecked, so that the sender may
// stop hashing what it sends: the check then happens once, where the bytes
// land.
const (
	HeaderContentDigest = "Content-Digest"
	// HeaderDigestsChecked, in a STOW-RS answer, names the digest
	// algorithm the receiver compared for every part that declared it
	// ("sha-256"). A receiver that does not check leaves it out.
	HeaderDigestsChecked = "X-Content-Digest-Checked"
	// DigestSHA256 is RFC 9530's name of the algorithm.
	DigestSHA256 = "sha-256"
)

// ContentDigestSHA256 is the Content-Digest header value for a SHA-256
// given in hex, or "" when sumHex is not one.
func ContentDigestSHA256(sumHex string) string {
	sum, err := hex.DecodeString(sumHex)
	if err != nil || len(sum) != 32 {
		return ""
	}
	return DigestSHA256 + "=:" + base64.StdEncoding.EncodeToString(sum) + ":"
}

// ParseContentDigestSHA256 returns the SHA-256 (lower-case hex) of a
// Content-Digest header value (an RFC 8941 dictionary such as
// `sha-256=:base64:, sha-512=:…:`), or "" when the header names no
// sha-256. Members of other algorithms are ignored. A sha-256 member that
// is not a byte sequence of 32 bytes is an error: the sender meant to
// declare a digest, and a part it cannot be checked against is refused
// rather than stored unchecked.
func ParseContentDigestSHA256(v string) (string, error) {
	for member := range strings.SplitSeq(v, ",") {
		key, value, ok := strings.Cut(strings.TrimSpace(member), "=")
		if !ok || !strings.EqualFold(strings.TrimSpace(key), DigestSHA256) {
			continue
		}
		value, _, _ = strings.Cut(value, ";") // parameters carry nothing here
		value = strings.TrimSpace(value)
		if len(value) < 2 || value[0] != ':' || value[len(value)-1] != ':' {
			return "", errors.New("the sha-256 member of Content-Digest is not a byte sequence (:base64:)")
		}
		sum, err := base64.StdEncoding.DecodeString(value[1 : len(value)-1])
		if err != nil {
			return "", fmt.Errorf("the sha-256 member of Content-Digest is not base64: %v", err)
		}
		if len(sum) != 32 {
			return "", fmt.Errorf("the sha-256 member of Content-Digest has %d bytes, not 32", len(sum))
		}
		return hex.EncodeToString(sum), nil
	}
	return "", nil
}

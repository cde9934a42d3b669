package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// PreamblePolicy says what Store does with an instance whose 128-byte
// Part 10 preamble is the header of an executable (CVE-2019-11687: such a
// file is both a valid DICOM instance and a program that runs when someone
// opens it as one).
type PreamblePolicy string

const (
	// PreambleRefuse refuses the instance (the default): the gateway stores
	// the original bytes unchanged or not at all, and a polyglot file is
	// far more likely an attack or a broken tool than a clinical need.
	PreambleRefuse PreamblePolicy = "refuse"
	// PreambleZero stores the instance with its preamble set to zeros (the
	// stored SHA-256 is that of the zeroed file) and records the original
	// SHA-256 in the audit log.
	PreambleZero PreamblePolicy = "zero"
)

// ParsePreamblePolicy checks a configured policy; "" means PreambleRefuse.
func ParsePreamblePolicy(s string) (PreamblePolicy, error) {
	switch PreamblePolicy(s) {
	case "", PreambleRefuse:
		return PreambleRefuse, nil
	case PreambleZero:
		return PreambleZero, nil
	}
	return "", fmt.Errorf("preamble_policy %q: want refuse or zero: %w", s, ErrInvalid)
}

// checkPreamble applies the policy to the preamble at the start of head
// (the bytes the header parser read). It returns the executable format
// found ("" for none), or, under PreambleRefuse, an error wrapping
// ErrInvalid naming it (Store refuses the instance with
// ReasonCannotUnderstand, 0xC000).
func (in *Ingester) checkPreamble(head []byte) (kind string, err error) {
	if len(head) < dicomcodec.PreambleLen {
		return "", nil
	}
	kind = dicomcodec.ExecutablePreamble(head[:dicomcodec.PreambleLen])
	if kind != "" && in.PreamblePolicy != PreambleZero {
		return kind, fmt.Errorf(
			"the 128-byte preamble is an executable header (%s): the file would also run as a program (CVE-2019-11687); refused by preamble_policy %s: %w", kind, PreambleRefuse, ErrInvalid)
	}
	return kind, nil
}

// zeroPreamble returns the instance stream (head's bytes, then rest) with
// its preamble replaced by 128 zero bytes, and orig, which hashes the
// original bytes as the stream is read: nothing is held beyond the header
// already in memory.
func zeroPreamble(head *bytes.Buffer, rest io.Reader) (src io.Reader, orig hash.Hash) {
	orig = sha256.New()
	orig.Write(head.Next(dicomcodec.PreambleLen))
	return io.MultiReader(bytes.NewReader(make([]byte, dicomcodec.PreambleLen)), io.TeeReader(io.MultiReader(head, rest), orig)), orig
}

// auditZeroedPreamble records that rec was stored with its executable
// preamble zeroed, with the SHA-256 of the file as it arrived. A failed
// write is logged with the same facts, so the original hash is not lost.
func (in *Ingester) auditZeroedPreamble(ctx context.Context, rec *InstanceRecord, kind string, orig hash.Hash) {
	origSHA := hex.EncodeToString(orig.Sum(nil))
	in.logger().WarnContext(ctx, "executable preamble zeroed", LogKeySOPUID, rec.SOPInstanceUID, "preamble", kind,
		"original_sha256", origSHA, "stored_sha256", rec.SHA256)
	in.auditStored(ctx, rec, "audit of a zeroed preamble not written (its original SHA-256 is in the warning above)", map[string]any{
		"preamble_zeroed":  rec.SOPInstanceUID,
		"preamble":         kind,
		"original_sha256":  origSHA,
		"stored_sha256":    rec.SHA256,
		"preamble_policy":  string(PreambleZero),
		"sop_instance_uid": rec.SOPInstanceUID,
	})
}

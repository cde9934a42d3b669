package gateway

import (
	"errors"
	"fmt"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// Sentinel errors shared by every layer. Backends translate their own
// failures into these at the boundary; dicomweb/errors.go is the only code
// that maps them to HTTP status codes.
var (
	// ErrNotFound: the study, series, instance, blob or record does not exist.
	ErrNotFound = errors.New("not found")
	// ErrInvalid: the request or its data is malformed; wrap it with the reason.
	ErrInvalid = errors.New("invalid")
	// ErrConflict: the same SOP Instance UID is already stored with other bytes,
	// or a state transition is not allowed.
	ErrConflict = errors.New("conflict")
	// ErrUnavailable: blob storage, the index, the queue or the audit log cannot
	// be reached; the request may be retried later.
	ErrUnavailable = errors.New("unavailable")
	// ErrTooLarge: a body, part or element exceeds a configured limit.
	ErrTooLarge = errors.New("too large")
	// ErrUnauthenticated: no or bad credentials.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrForbidden: the credentials do not carry the role the action needs.
	ErrForbidden = errors.New("forbidden")
	// ErrNotAcceptable: the data exists but not in a representation the client
	// accepts (media type or transfer syntax we cannot produce); wrap it with
	// what was asked and what is stored.
	ErrNotAcceptable = errors.New("not acceptable")
	// ErrBusy: the work asked for is already running as often as it may
	// (a SHA-256 recompute of the same study); retry later, not at once.
	ErrBusy = errors.New("busy")
)

// STOW-RS FailureReason and WarningReason codes (PS3.4 Annex GG.4 / PS3.18 10.5).
const (
	ReasonProcessingFailure         uint16 = 0x0110 // general processing failure
	ReasonDuplicateRejected         uint16 = 0x0111 // duplicate SOP Instance with different content
	ReasonNoSuchSOPClass            uint16 = 0x0122 // SOP Class not supported
	ReasonOutOfResources            uint16 = 0xA700 // storage unavailable / out of resources
	ReasonDataSetSOPClassMismatch   uint16 = 0xA900 // dataset does not match SOP class / study
	ReasonCannotUnderstand          uint16 = 0xC000 // cannot parse the dataset
	ReasonStudyUIDMismatch          uint16 = 0xC409 // not in PS3.18: dcm4chee's code for another study; we send 0xA900 and only read this one from peers
	ReasonTransferSyntaxUnsupported uint16 = 0xC122 // referenced transfer syntax not supported

	WarningCoercion          uint16 = 0xB000 // attributes coerced
	WarningElementsDiscarded uint16 = 0xB006
	WarningDataSetMismatch   uint16 = 0xB007
)

// reasonTexts names each FailureReason for people: the transfer sender's
// refusals, the admin API's per-instance failures and gateway store's
// summary all read this one table.
var reasonTexts = map[uint16]string{
	ReasonProcessingFailure:         "processing failure",
	ReasonDuplicateRejected:         "a different instance with this SOP Instance UID is already stored",
	ReasonNoSuchSOPClass:            "SOP class not supported",
	ReasonOutOfResources:            "out of resources",
	ReasonDataSetSOPClassMismatch:   "data set does not match its SOP class or the study: missing UIDs or another study",
	ReasonCannotUnderstand:          "cannot understand the data set: not DICOM, malformed or truncated",
	ReasonStudyUIDMismatch:          "Study Instance UID does not match the request",
	ReasonTransferSyntaxUnsupported: "transfer syntax not supported",
}

// ReasonText is the readable form of a STOW-RS FailureReason code, with
// the code: "out of resources (0xA700)".
func ReasonText(code uint16) string {
	if s, ok := reasonTexts[code]; ok {
		return fmt.Sprintf("%s (0x%04X)", s, code)
	}
	return fmt.Sprintf("refused with FailureReason 0x%04X", code)
}

// ReasonRetryable reports whether a FailureReason may succeed if sent
// again later: the A7xx class, "out of resources" (PS3.4 Annex GG.4).
func ReasonRetryable(code uint16) bool { return code&0xFF00 == 0xA700 }

// InstanceError is the failure of one instance inside a STOW-RS request. It
// carries the FailureReason that dicomweb writes into the FailedSOPSequence.
type InstanceError struct {
	SOPClassUID    string
	SOPInstanceUID string
	Reason         uint16
	Err            error
	// Comment, when set, is a short text (at most 64 characters, an LO)
	// that dicomweb writes as the Error Comment (0000,0902) of the failed
	// item, for refusals a sender's operator must understand from the
	// response alone.
	Comment string
}

func (e *InstanceError) Error() string {
	if e.SOPInstanceUID != "" {
		return fmt.Sprintf("instance %s: %v", e.SOPInstanceUID, e.Err)
	}
	return e.Err.Error()
}

func (e *InstanceError) Unwrap() error { return e.Err }

// codecErrors is the one mapping from the codec's failures to the domain's:
// the sentinel a dicomcodec error becomes, and the STOW-RS FailureReason of
// an instance refused for it (0: the failure is not an instance's refusal).
var codecErrors = []struct {
	codec  error
	domain error
	reason uint16
}{
	{dicomcodec.ErrMalformed, ErrInvalid, ReasonCannotUnderstand},
	{dicomcodec.ErrLimit, ErrInvalid, ReasonCannotUnderstand},
	{dicomcodec.ErrUnsupportedTransferSyntax, ErrInvalid, ReasonTransferSyntaxUnsupported},
	{dicomcodec.ErrMemoryBudget, ErrUnavailable, ReasonOutOfResources},
	{dicomcodec.ErrInvalidUID, ErrInvalid, 0},
	{dicomcodec.ErrInvalidInput, ErrInvalid, 0},
	{dicomcodec.ErrCannotRender, ErrNotAcceptable, 0},
	{dicomcodec.ErrUnlocatable, ErrNotAcceptable, 0},
}

// codecError is a dicomcodec error seen as a domain error: its text is the
// codec's, and errors.Is finds both the codec's sentinel and the domain's.
type codecError struct {
	err    error
	domain error
}

func (e *codecError) Error() string   { return e.err.Error() }
func (e *codecError) Unwrap() []error { return []error{e.err, e.domain} }

// FromCodec translates an error of package dicomcodec into the domain's
// terms: it then also wraps ErrInvalid, ErrUnavailable…, and a failure that
// refuses an instance (unreadable data, an unsupported transfer syntax, a
// spent header memory budget) is an *InstanceError with its FailureReason.
// Any other error (nil, a read error, one already translated) is returned
// as it is. Every error a codec call can return passes through it before
// anything maps it to an HTTP status or a STOW reason.
func FromCodec(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := errors.AsType[*codecError](err); ok {
		return err
	}
	for _, m := range codecErrors {
		if !errors.Is(err, m.codec) {
			continue
		}
		translated := &codecError{err: err, domain: m.domain}
		if m.reason != 0 {
			return &InstanceError{Reason: m.reason, Err: translated}
		}
		return translated
	}
	return err
}

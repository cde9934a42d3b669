package dimse

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"

	"github.com/dicom-gateway/gateway/gateway"
)

// statusByReason maps the ingest's failure reasons (the STOW-RS
// FailureReason of a *gateway.InstanceError) to C-STORE statuses (PS3.4
// B.2.3, PS3.7 C.4.2). STOW-RS borrowed its codes from these, so most map
// to themselves; the table is the one place that says so.
//
//	ingest outcome                                   C-STORE status
//	stored, or identical bytes already stored        0000 success
//	stored; UIDs deviate from PS3.5 9.1 (tolerated)  B007 warning: data set does not match SOP class
//	ReasonOutOfResources (storage, index, lock, size) A700 refused: out of resources
//	ReasonDataSetSOPClassMismatch (UID missing)      A900 error: data set does not match SOP class
//	ReasonCannotUnderstand (unparsable, truncated)   C000 error: cannot understand
//	ReasonTransferSyntaxUnsupported                  C000 error: cannot understand
//	ReasonNoSuchSOPClass (a DICOMDIR)                0122 failure: SOP class not supported
//	ReasonDuplicateRejected (other bytes stored)     0111 failure: duplicate SOP instance
//	ReasonProcessingFailure, anything else           0110 failure: processing failure
var statusByReason = map[uint16]Status{
	gateway.ReasonOutOfResources:            StatusOutOfResources,
	gateway.ReasonDataSetSOPClassMismatch:   StatusDataSetMismatch,
	gateway.ReasonCannotUnderstand:          StatusCannotUnderstand,
	gateway.ReasonTransferSyntaxUnsupported: StatusCannotUnderstand,
	gateway.ReasonNoSuchSOPClass:            StatusSOPClassNotSupported,
	gateway.ReasonDuplicateRejected:         StatusDuplicateSOPInstance,
	gateway.ReasonProcessingFailure:         StatusProcessingFailure,
}

// StatusOf is the C-STORE status for what Store returned, and an Error
// Comment (0000,0902) for a refusal. Errors that are not an
// *gateway.InstanceError map by sentinel: ErrUnavailable and ErrTooLarge
// to A700, ErrInvalid to C000, anything else to 0110.
func StatusOf(rec *gateway.InstanceRecord, err error) (Status, string) {
	if err == nil {
		if rec != nil && len(rec.UIDDeviations()) > 0 {
			return StatusWarningDataSetMismatch, ""
		}
		return StatusSuccess, ""
	}
	comment := err.Error()
	if ie, ok := errors.AsType[*gateway.InstanceError](err); ok {
		if ie.Comment != "" {
			comment = ie.Comment
		} else if ie.Err != nil {
			comment = ie.Err.Error()
		}
		if s, ok := statusByReason[ie.Reason]; ok {
			return s, comment
		}
	}
	switch {
	case errors.Is(err, gateway.ErrUnavailable), errors.Is(err, gateway.ErrTooLarge):
		return StatusOutOfResources, comment
	case errors.Is(err, gateway.ErrInvalid):
		return StatusCannotUnderstand, comment
	}
	return StatusProcessingFailure, comment
}

// FileMeta returns the preamble, "DICM" and File Meta Information (PS3.10
// 7.1) for a dataset received in a C-STORE: the SOP class and instance of
// the command, the transfer syntax of the presentation context, this
// implementation, and the calling AE title as Source Application Entity
// Title (0002,0016).
func FileMeta(sopClass, sopInstance, transferSyntax, sourceAE string) io.Reader {
	var group []byte
	group = appendMetaElement(group, 0x0001, "OB", []byte{0, 1})
	group = appendMetaElement(group, 0x0002, "UI", padUID(sopClass))
	group = appendMetaElement(group, 0x0003, "UI", padUID(sopInstance))
	group = appendMetaElement(group, 0x0010, "UI", padUID(transferSyntax))
	group = appendMetaElement(group, 0x0012, "UI", padUID(ImplementationClassUID))
	group = appendMetaElement(group, 0x0013, "SH", padText(ImplementationVersion))
	if sourceAE != "" {
		group = appendMetaElement(group, 0x0016, "AE", padText(sourceAE))
	}
	out := make([]byte, 128, 128+4+12+len(group))
	out = append(out, "DICM"...)
	out = appendMetaElement(out, 0x0000, "UL", binary.LittleEndian.AppendUint32(nil, uint32(len(group))))
	return bytes.NewReader(append(out, group...))
}

func appendMetaElement(b []byte, el uint16, vr string, v []byte) []byte {
	b = binary.LittleEndian.AppendUint16(b, 0x0002)
	b = binary.LittleEndian.AppendUint16(b, el)
	b = append(b, vr...)
	if vr == "OB" {
		b = append(b, 0, 0)
		return append(binary.LittleEndian.AppendUint32(b, uint32(len(v))), v...)
	}
	return append(binary.LittleEndian.AppendUint16(b, uint16(len(v))), v...)
}

func padUID(s string) []byte {
	b := []byte(s)
	if len(b)%2 == 1 {
		b = append(b, 0)
	}
	return b
}

func padText(s string) []byte {
	b := []byte(s)
	if len(b)%2 == 1 {
		b = append(b, ' ')
	}
	return b
}

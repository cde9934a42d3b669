// Package dimse speaks DICOM over TCP: the upper layer protocol of PS3.8
// (association negotiation, P-DATA with PDV fragmentation, release and
// abort) and the DIMSE services of PS3.7 the gateway needs: C-ECHO and
// C-STORE as a service class provider (Server) and C-STORE as a user
// (Client, Sender). It uses only the standard library, plus the UID
// dictionary of github.com/suyashkumar/dicom to recognise storage SOP
// classes.
//
// Everything a peer sends is bounded before it is read: the length of each
// PDU, of an association request, of a command set, the number of
// presentation contexts, and the time a PDU may take to arrive. The dataset
// of a C-STORE is never held whole: its PDVs are written, as they arrive,
// into a pipe that the Store reads.
package dimse

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// PDU types (PS3.8 9.3).
const (
	pduAssociateRQ byte = 0x01
	pduAssociateAC byte = 0x02
	pduAssociateRJ byte = 0x03
	pduPData       byte = 0x04
	pduReleaseRQ   byte = 0x05
	pduReleaseRP   byte = 0x06
	pduAbort       byte = 0x07
)

// Item types of the variable part of A-ASSOCIATE-RQ/AC (PS3.8 9.3.2, 9.3.3,
// Annex D).
const (
	itemApplicationContext byte = 0x10
	itemPresentationRQ     byte = 0x20
	itemPresentationAC     byte = 0x21
	itemAbstractSyntax     byte = 0x30
	itemTransferSyntax     byte = 0x40
	itemUserInformation    byte = 0x50
	itemMaxLength          byte = 0x51
	itemImplementationUID  byte = 0x52
	itemAsyncOps           byte = 0x53
	itemRoleSelection      byte = 0x54
	itemImplementationName byte = 0x55
)

// ApplicationContext is the only application context name of DICOM (PS3.7
// Annex A.2.1).
const ApplicationContext = "1.2.840.10008.3.1.1.1"

// ErrMalformed is the error for bytes that are not a valid PDU: a length
// that does not add up, an unknown type, a field out of range. The
// association is aborted on it.
var ErrMalformed = errors.New("malformed PDU")

// ErrTooLarge is the error for a PDU, command set or association request
// longer than the limit this end set.
var ErrTooLarge = errors.New("over the limit")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// pduHeader is the 6-byte header every PDU starts with.
type pduHeader struct {
	Type   byte
	Length uint32
}

func readPDUHeader(r io.Reader, buf []byte) (pduHeader, error) {
	if _, err := io.ReadFull(r, buf[:6]); err != nil {
		return pduHeader{}, err
	}
	return pduHeader{Type: buf[0], Length: binary.BigEndian.Uint32(buf[2:6])}, nil
}

func appendPDUHeader(b []byte, typ byte, length int) []byte {
	b = append(b, typ, 0)
	return binary.BigEndian.AppendUint32(b, uint32(length))
}

// PresentationContext is one proposed (RQ) or answered (AC) presentation
// context.
type PresentationContext struct {
	ID             byte
	AbstractSyntax string   // RQ only
	TransferSyntax []string // RQ: proposed, in the proposer's order; AC: the one accepted
	Result         byte     // AC only: one of the Result* constants
}

// Presentation context results (PS3.8 9.3.3.2).
const (
	ResultAcceptance                 byte = 0
	ResultUserRejection              byte = 1
	ResultNoReason                   byte = 2
	ResultAbstractSyntaxNotSupported byte = 3
	ResultTransferSyntaxNotSupported byte = 4
)

// AssociateRQ is an A-ASSOCIATE-RQ, and with Contexts answered, an
// A-ASSOCIATE-AC (the two PDUs share their layout).
type AssociateRQ struct {
	ProtocolVersion       uint16
	CalledAE              string
	CallingAE             string
	ApplicationContext    string
	Contexts              []PresentationContext
	MaxPDULength          uint32 // 0 = no limit (PS3.8 D.1)
	ImplementationUID     string
	ImplementationVersion string
	// Roles are SCP/SCU role selections (PS3.7 D.3.3.4): proposed in an
	// RQ, accepted in an AC.
	Roles []RoleSelection
}

// RoleSelection is an SCP/SCU Role Selection sub-item: for SOPClass, may
// the association requester act as SCU, as SCP.
type RoleSelection struct {
	SOPClass string
	SCU, SCP bool
}

// encodeAssociate writes an A-ASSOCIATE-RQ (typ pduAssociateRQ) or -AC.
func encodeAssociate(typ byte, a *AssociateRQ) []byte {
	var body []byte
	body = binary.BigEndian.AppendUint16(body, 1) // protocol version 1
	body = append(body, 0, 0)
	body = append(body, aeField(a.CalledAE)...)
	body = append(body, aeField(a.CallingAE)...)
	body = append(body, make([]byte, 32)...)
	body = appendItem(body, itemApplicationContext, []byte(a.ApplicationContext))
	for _, pc := range a.Contexts {
		var sub []byte
		if typ == pduAssociateRQ {
			sub = append(sub, pc.ID, 0, 0, 0)
			sub = appendItem(sub, itemAbstractSyntax, []byte(pc.AbstractSyntax))
			for _, ts := range pc.TransferSyntax {
				sub = appendItem(sub, itemTransferSyntax, []byte(ts))
			}
			body = appendItem(body, itemPresentationRQ, sub)
			continue
		}
		sub = append(sub, pc.ID, 0, pc.Result, 0)
		ts := ""
		if len(pc.TransferSyntax) > 0 {
			ts = pc.TransferSyntax[0]
		}
		// PS3.8 9.3.3.2: the transfer syntax sub-item is present even when
		// the context is rejected (its value is then not significant).
		sub = appendItem(sub, itemTransferSyntax, []byte(ts))
		body = appendItem(body, itemPresentationAC, sub)
	}
	var user []byte
	user = appendItem(user, itemMaxLength, binary.BigEndian.AppendUint32(nil, a.MaxPDULength))
	user = appendItem(user, itemImplementationUID, []byte(a.ImplementationUID))
	for _, r := range a.Roles {
		v := binary.BigEndian.AppendUint16(nil, uint16(len(r.SOPClass)))
		v = append(v, r.SOPClass...)
		v = append(v, boolByte(r.SCU), boolByte(r.SCP))
		user = appendItem(user, itemRoleSelection, v)
	}
	if a.ImplementationVersion != "" {
		user = appendItem(user, itemImplementationName, []byte(a.ImplementationVersion))
	}
	body = appendItem(body, itemUserInformation, user)
	return append(appendPDUHeader(nil, typ, len(body)), body...)
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

func appendItem(b []byte, typ byte, value []byte) []byte {
	b = append(b, typ, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(value)))
	return append(b, value...)
}

// aeField is an AE title as the 16-byte, space-padded field of PS3.8 9.3.2.
func aeField(ae string) []byte {
	f := []byte("                ")
	copy(f, ae)
	return f
}

// decodeAssociate parses the body (after the 6-byte header) of an
// A-ASSOCIATE-RQ or -AC. It bounds nothing itself: the caller has bounded
// len(body).
func decodeAssociate(typ byte, body []byte) (*AssociateRQ, error) {
	if len(body) < 68 {
		return nil, malformed("association PDU of %d bytes is shorter than its 68-byte fixed part", len(body))
	}
	a := &AssociateRQ{
		ProtocolVersion: binary.BigEndian.Uint16(body[0:2]),
		CalledAE:        strings.TrimSpace(string(body[4:20])),
		CallingAE:       strings.TrimSpace(string(body[20:36])),
	}
	items := body[68:]
	for len(items) > 0 {
		t, v, rest, err := nextItem(items)
		if err != nil {
			return nil, err
		}
		items = rest
		switch t {
		case itemApplicationContext:
			a.ApplicationContext = uidValue(v)
		case itemPresentationRQ, itemPresentationAC:
			if (t == itemPresentationRQ) != (typ == pduAssociateRQ) {
				return nil, malformed("presentation context item 0x%02X in PDU type 0x%02X", t, typ)
			}
			pc, err := decodePresentation(t, v)
			if err != nil {
				return nil, err
			}
			if len(a.Contexts) >= maxPresentationContexts {
				return nil, malformed("more than %d presentation contexts", maxPresentationContexts)
			}
			a.Contexts = append(a.Contexts, pc)
		case itemUserInformation:
			if err := a.decodeUserInfo(v); err != nil {
				return nil, err
			}
		default:
			return nil, malformed("unknown item type 0x%02X in an association PDU", t)
		}
	}
	return a, nil
}

// maxPresentationContexts is PS3.8's own bound: presentation context IDs
// are the odd numbers 1 to 255.
const maxPresentationContexts = 128

// maxTransferSyntaxes bounds the transfer syntaxes of one proposed context
// (DCMTK proposes at most a few dozen).
const maxTransferSyntaxes = 64

func decodePresentation(t byte, v []byte) (PresentationContext, error) {
	if len(v) < 4 {
		return PresentationContext{}, malformed("presentation context item of %d bytes", len(v))
	}
	pc := PresentationContext{ID: v[0]}
	if pc.ID%2 == 0 {
		return pc, malformed("presentation context ID %d is even", pc.ID)
	}
	if t == itemPresentationAC {
		pc.Result = v[2]
	}
	sub := v[4:]
	for len(sub) > 0 {
		st, sv, rest, err := nextItem(sub)
		if err != nil {
			return pc, err
		}
		sub = rest
		switch st {
		case itemAbstractSyntax:
			if t != itemPresentationRQ || pc.AbstractSyntax != "" {
				return pc, malformed("unexpected abstract syntax in presentation context %d", pc.ID)
			}
			pc.AbstractSyntax = uidValue(sv)
		case itemTransferSyntax:
			if len(pc.TransferSyntax) >= maxTransferSyntaxes {
				return pc, malformed("more than %d transfer syntaxes in presentation context %d", maxTransferSyntaxes, pc.ID)
			}
			pc.TransferSyntax = append(pc.TransferSyntax, uidValue(sv))
		default:
			return pc, malformed("unknown sub-item 0x%02X in presentation context %d", st, pc.ID)
		}
	}
	if t == itemPresentationRQ && (pc.AbstractSyntax == "" || len(pc.TransferSyntax) == 0) {
		return pc, malformed("presentation context %d lacks an abstract or a transfer syntax", pc.ID)
	}
	return pc, nil
}

func (a *AssociateRQ) decodeUserInfo(v []byte) error {
	for len(v) > 0 {
		t, sv, rest, err := nextItem(v)
		if err != nil {
			return err
		}
		v = rest
		switch t {
		case itemMaxLength:
			if len(sv) != 4 {
				return malformed("maximum length sub-item of %d bytes", len(sv))
			}
			a.MaxPDULength = binary.BigEndian.Uint32(sv)
		case itemImplementationUID:
			a.ImplementationUID = uidValue(sv)
		case itemImplementationName:
			a.ImplementationVersion = strings.TrimSpace(string(sv))
		case itemRoleSelection:
			if len(sv) < 4 {
				return malformed("role selection sub-item of %d bytes", len(sv))
			}
			n := int(binary.BigEndian.Uint16(sv[0:2]))
			if 2+n+2 != len(sv) {
				return malformed("role selection sub-item: UID of %d bytes in %d", n, len(sv))
			}
			if len(a.Roles) >= maxPresentationContexts {
				return malformed("more than %d role selections", maxPresentationContexts)
			}
			a.Roles = append(a.Roles, RoleSelection{SOPClass: uidValue(sv[2 : 2+n]), SCU: sv[2+n] == 1, SCP: sv[3+n] == 1})
		default:
			// Asynchronous operations, role selection, extended and user
			// identity negotiation: not negotiated, so not answered
			// (PS3.7 D.3.3: an acceptor ignores what it does not support).
		}
	}
	return nil
}

// nextItem splits the item at the start of b into its type and value.
func nextItem(b []byte) (typ byte, value, rest []byte, err error) {
	if len(b) < 4 {
		return 0, nil, nil, malformed("item header of %d bytes", len(b))
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if 4+n > len(b) {
		return 0, nil, nil, malformed("item 0x%02X says %d bytes, %d are left", b[0], n, len(b)-4)
	}
	return b[0], b[4 : 4+n], b[4+n:], nil
}

// uidValue is a UID field without its padding (a trailing NUL, PS3.8 9.3.2.2,
// or spaces some implementations add).
func uidValue(v []byte) string {
	return string(bytes.TrimRight(v, "\x00 "))
}

// Reject results, sources and reasons (PS3.8 9.3.4).
const (
	RejectPermanent byte = 1
	RejectTransient byte = 2

	SourceServiceUser             byte = 1 // reasons: the Reason* below
	SourceServiceProviderACSE     byte = 2 // 1 no reason, 2 protocol version not supported
	SourceServiceProviderPresentn byte = 3 // 1 temporary congestion, 2 local limit exceeded

	ReasonNoReason                byte = 1
	ReasonAppContextNotSupported  byte = 2
	ReasonCallingAENotRecognized  byte = 3
	ReasonCalledAENotRecognized   byte = 7
	ReasonProtocolVersion         byte = 2 // with SourceServiceProviderACSE
	ReasonLocalLimitExceeded      byte = 2 // with SourceServiceProviderPresentn
	ReasonTemporaryCongestionPres byte = 1 // with SourceServiceProviderPresentn
)

// RejectError is an A-ASSOCIATE-RJ: the association was refused.
type RejectError struct {
	Result, Source, Reason byte
}

func (e *RejectError) Error() string {
	kind := "permanently"
	if e.Result == RejectTransient {
		kind = "transiently"
	}
	return fmt.Sprintf("association rejected %s: %s", kind, rejectReasonText(e.Source, e.Reason))
}

// Temporary reports whether the peer said trying again later may succeed.
func (e *RejectError) Temporary() bool { return e.Result == RejectTransient }

func rejectReasonText(source, reason byte) string {
	switch source {
	case SourceServiceUser:
		switch reason {
		case ReasonAppContextNotSupported:
			return "application context name not supported"
		case ReasonCallingAENotRecognized:
			return "calling AE title not recognised"
		case ReasonCalledAENotRecognized:
			return "called AE title not recognised"
		}
		return "no reason given (service user)"
	case SourceServiceProviderACSE:
		if reason == ReasonProtocolVersion {
			return "protocol version not supported"
		}
		return "no reason given (ACSE)"
	case SourceServiceProviderPresentn:
		if reason == ReasonLocalLimitExceeded {
			return "local limit exceeded"
		}
		return "temporary congestion"
	}
	return fmt.Sprintf("source %d reason %d", source, reason)
}

func encodeReject(e *RejectError) []byte {
	return append(appendPDUHeader(nil, pduAssociateRJ, 4), 0, e.Result, e.Source, e.Reason)
}

// Abort sources and reasons (PS3.8 9.3.8).
const (
	AbortSourceUser     byte = 0
	AbortSourceProvider byte = 2

	AbortReasonNotSpecified      byte   = 0
	AbortReasonUnrecognizedPDU   byte   = 1
	AbortReasonUnexpectedPDU     byte   = 2
	AbortReasonUnrecognizedParam byte   = 4
	AbortReasonUnexpectedParam   byte   = 5
	AbortReasonInvalidParamValue byte   = 6
	abortPDULength                      = 4
	releasePDULength                    = 4
	rejectPDULength                     = 4
	pdvHeaderLength                     = 6 // item length (4), context ID, control header
	minPDataLength                      = pdvHeaderLength
	defaultMaxPDULength          uint32 = 256 << 10
)

// AbortError is an A-ABORT received from the peer.
type AbortError struct{ Source, Reason byte }

func (e *AbortError) Error() string {
	who := "the peer"
	if e.Source == AbortSourceProvider {
		who = "the peer's service provider"
	}
	return fmt.Sprintf("association aborted by %s (reason %d)", who, e.Reason)
}

func encodeAbort(source, reason byte) []byte {
	return append(appendPDUHeader(nil, pduAbort, 4), 0, 0, source, reason)
}

func encodeRelease(typ byte) []byte {
	return append(appendPDUHeader(nil, typ, 4), 0, 0, 0, 0)
}

// PDV is one presentation data value of a P-DATA-TF PDU.
type PDV struct {
	ContextID byte
	Command   bool // else dataset
	Last      bool // the last fragment of the command set or dataset
	Data      []byte
}

// decodePData splits the body of a P-DATA-TF into its PDVs; their Data
// alias body.
func decodePData(body []byte, pdvs []PDV) ([]PDV, error) {
	pdvs = pdvs[:0]
	if len(body) < pdvHeaderLength {
		return nil, malformed("P-DATA-TF of %d bytes holds no PDV", len(body))
	}
	for len(body) > 0 {
		if len(body) < pdvHeaderLength {
			return nil, malformed("PDV header of %d bytes", len(body))
		}
		n := binary.BigEndian.Uint32(body[0:4])
		if n < 2 || uint64(n) > uint64(len(body)-4) {
			return nil, malformed("PDV length %d with %d bytes left in the PDU", n, len(body)-4)
		}
		ctl := body[5]
		if ctl&^0x03 != 0 {
			return nil, malformed("PDV message control header 0x%02X", ctl)
		}
		pdvs = append(pdvs, PDV{ContextID: body[4], Command: ctl&1 != 0, Last: ctl&2 != 0, Data: body[6 : 4+n]})
		body = body[4+n:]
	}
	return pdvs, nil
}

// appendPData appends a P-DATA-TF holding one PDV.
func appendPData(b []byte, v PDV) []byte {
	b = appendPDUHeader(b, pduPData, pdvHeaderLength+len(v.Data))
	b = binary.BigEndian.AppendUint32(b, uint32(2+len(v.Data)))
	ctl := byte(0)
	if v.Command {
		ctl |= 1
	}
	if v.Last {
		ctl |= 2
	}
	b = append(b, v.ContextID, ctl)
	return append(b, v.Data...)
}

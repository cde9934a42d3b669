package dimse

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// DialOptions shape an association this end requests.
type DialOptions struct {
	CallingAE, CalledAE string
	// Contexts are the proposed presentation contexts; their IDs are
	// assigned by Dial (1, 3, 5, ...) when zero.
	Contexts []PresentationContext
	// MaxPDULength is the longest P-DATA-TF this end accepts (default
	// 256 KiB).
	MaxPDULength uint32
	// ARTIM bounds the connection and the wait for the peer's answer to the
	// association and release requests (default 30 s); PDUTimeout bounds
	// one PDU's sending and a response's arrival (default 60 s).
	ARTIM, PDUTimeout time.Duration
	// TLS, when set, runs the association over TLS (PS3.15 B.1).
	TLS *tls.Config
}

// Client is an association this end requested (a service class user).
// Not safe for concurrent use.
type Client struct {
	c          *conn
	out        *sender
	accepted   map[byte]PresentationContext
	msgID      uint16
	artim      time.Duration
	pduTimeout time.Duration
	pdvs       []PDV
	// PeerMaxPDULength is the Maximum Length the peer announced.
	PeerMaxPDULength uint32
	// PeerImplementation is the peer's implementation class UID and version.
	PeerImplementation string
}

// Dial connects to addr and negotiates an association. A refusal is a
// *RejectError.
func Dial(ctx context.Context, addr string, o DialOptions) (*Client, error) {
	if err := ValidateAETitle(o.CallingAE); err != nil {
		return nil, fmt.Errorf("calling AE: %w", err)
	}
	if err := ValidateAETitle(o.CalledAE); err != nil {
		return nil, fmt.Errorf("called AE: %w", err)
	}
	if len(o.Contexts) == 0 || len(o.Contexts) > maxPresentationContexts {
		return nil, fmt.Errorf("%d presentation contexts proposed: 1 to %d", len(o.Contexts), maxPresentationContexts)
	}
	artim := cmpOr(o.ARTIM, 30*time.Second)
	pduTimeout := cmpOr(o.PDUTimeout, 60*time.Second)
	maxPDU := cmpOr(o.MaxPDULength, defaultMaxPDULength)
	var nc net.Conn
	var err error
	if o.TLS != nil {
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: artim}, Config: o.TLS}
		nc, err = d.DialContext(ctx, "tcp", addr)
	} else {
		d := net.Dialer{Timeout: artim}
		nc, err = d.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	cl := &Client{c: newConn(nc, maxPDU, pduTimeout), artim: artim, pduTimeout: pduTimeout}
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	rq := &AssociateRQ{
		CalledAE: o.CalledAE, CallingAE: o.CallingAE, ApplicationContext: ApplicationContext,
		MaxPDULength: maxPDU, ImplementationUID: ImplementationClassUID, ImplementationVersion: ImplementationVersion,
	}
	proposed := map[byte]PresentationContext{}
	for i, pc := range o.Contexts {
		if pc.ID == 0 {
			pc.ID = byte(2*i + 1)
		}
		rq.Contexts = append(rq.Contexts, pc)
		proposed[pc.ID] = pc
	}
	if err := cl.c.write(encodeAssociate(pduAssociateRQ, rq)); err != nil {
		_ = nc.Close()
		return nil, ctxErr(ctx, err)
	}
	typ, body, err := cl.c.readPDU(artim)
	if err != nil {
		_ = nc.Close()
		return nil, ctxErr(ctx, fmt.Errorf("waiting for the association answer: %w", err))
	}
	switch typ {
	case pduAssociateAC:
	case pduAssociateRJ:
		_ = nc.Close()
		return nil, &RejectError{Result: body[1], Source: body[2], Reason: body[3]}
	case pduAbort:
		_ = nc.Close()
		return nil, &AbortError{Source: body[2], Reason: body[3]}
	default:
		cl.c.abort(AbortSourceUser, AbortReasonUnexpectedPDU)
		return nil, malformed("answer to A-ASSOCIATE-RQ is PDU type 0x%02X", typ)
	}
	ac, err := decodeAssociate(pduAssociateAC, body)
	if err != nil {
		cl.c.abort(AbortSourceUser, AbortReasonInvalidParamValue)
		return nil, err
	}
	cl.accepted = map[byte]PresentationContext{}
	for _, pc := range ac.Contexts {
		p, ok := proposed[pc.ID]
		if !ok || pc.Result != ResultAcceptance || len(pc.TransferSyntax) != 1 {
			continue
		}
		cl.accepted[pc.ID] = PresentationContext{ID: pc.ID, AbstractSyntax: p.AbstractSyntax, TransferSyntax: pc.TransferSyntax}
	}
	cl.PeerMaxPDULength = ac.MaxPDULength
	cl.PeerImplementation = ac.ImplementationUID + " " + ac.ImplementationVersion
	cl.out = newSender(cl.c, ac.MaxPDULength)
	return cl, nil
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}

// Accepted returns the accepted presentation context for an abstract
// syntax in one transfer syntax ("" for any).
func (cl *Client) Accepted(abstract, ts string) (PresentationContext, bool) {
	var best PresentationContext
	found := false
	for _, pc := range cl.accepted {
		if pc.AbstractSyntax != abstract || (ts != "" && pc.TransferSyntax[0] != ts) {
			continue
		}
		if !found || pc.ID < best.ID {
			best, found = pc, true
		}
	}
	return best, found
}

// Echo sends a C-ECHO-RQ and returns the status of the answer.
func (cl *Client) Echo(ctx context.Context) (Status, error) {
	pc, ok := cl.Accepted(VerificationSOPClass, "")
	if !ok {
		return 0, errors.New("the peer accepted no Verification presentation context")
	}
	stop := cl.watch(ctx)
	defer stop()
	cl.msgID++
	cmd := NewCommand()
	cmd.SetString(elAffectedSOPClassUID, VerificationSOPClass, true)
	cmd.SetUint16(elCommandField, CommandCEchoRQ)
	cmd.SetUint16(elMessageID, cl.msgID)
	cmd.SetUint16(elCommandDataSetType, dataSetAbsent)
	if err := cl.out.sendCommand(pc.ID, cmd); err != nil {
		return 0, ctxErr(ctx, err)
	}
	rsp, err := cl.response(CommandCEchoRSP)
	if err != nil {
		return 0, ctxErr(ctx, err)
	}
	st, _ := rsp.Uint16(elStatus)
	return Status(st), nil
}

// StoreResult is the answer to one C-STORE.
type StoreResult struct {
	Status  Status
	Comment string // Error Comment (0000,0902), if any
	Bytes   int64  // dataset bytes sent
}

// Store sends one C-STORE on presentation context pc with the dataset read
// from r (already in pc's transfer syntax, without File Meta Information)
// and returns the peer's status. An error means the association can no
// longer be used.
func (cl *Client) Store(ctx context.Context, pc PresentationContext, sopInstance string, r io.Reader) (StoreResult, error) {
	if ctx.Err() != nil {
		// Not begun: the watch below would stop the write only once its
		// goroutine ran, after part of the request may have gone out.
		return StoreResult{}, context.Cause(ctx)
	}
	stop := cl.watch(ctx)
	defer stop()
	cl.msgID++
	cmd := NewCommand()
	cmd.SetString(elAffectedSOPClassUID, pc.AbstractSyntax, true)
	cmd.SetUint16(elCommandField, CommandCStoreRQ)
	cmd.SetUint16(elMessageID, cl.msgID)
	cmd.SetUint16(elPriority, 0)
	cmd.SetUint16(elCommandDataSetType, 0x0000)
	cmd.SetString(elAffectedSOPInstanceUID, sopInstance, true)
	if err := cl.out.sendCommand(pc.ID, cmd); err != nil {
		return StoreResult{}, ctxErr(ctx, err)
	}
	n, err := cl.out.sendDataSet(pc.ID, r)
	if err != nil {
		return StoreResult{Bytes: n}, ctxErr(ctx, err)
	}
	rsp, err := cl.response(CommandCStoreRSP)
	if err != nil {
		return StoreResult{Bytes: n}, ctxErr(ctx, err)
	}
	st, _ := rsp.Uint16(elStatus)
	return StoreResult{Status: Status(st), Comment: rsp.String(elErrorComment), Bytes: n}, nil
}

// watch makes every blocked read or write return when ctx ends.
func (cl *Client) watch(ctx context.Context) func() bool {
	return context.AfterFunc(ctx, func() { _ = cl.c.nc.SetDeadline(time.Unix(1, 0)) })
}

// response reads PDUs until a whole command set of the wanted field.
func (cl *Client) response(field uint16) (*Command, error) {
	var buf []byte
	for {
		typ, body, err := cl.c.readPDU(cl.pduTimeout)
		if err != nil {
			return nil, err
		}
		switch typ {
		case pduPData:
		case pduAbort:
			return nil, &AbortError{Source: body[2], Reason: body[3]}
		default:
			cl.c.abort(AbortSourceUser, AbortReasonUnexpectedPDU)
			return nil, malformed("PDU type 0x%02X while waiting for a response", typ)
		}
		pdvs, err := decodePData(body, cl.pdvs)
		if err != nil {
			cl.c.abort(AbortSourceUser, AbortReasonInvalidParamValue)
			return nil, err
		}
		cl.pdvs = pdvs
		for _, v := range pdvs {
			if !v.Command {
				cl.c.abort(AbortSourceUser, AbortReasonUnexpectedPDU)
				return nil, malformed("dataset fragment in a response")
			}
			if len(buf)+len(v.Data) > maxCommandBytes {
				cl.c.abort(AbortSourceUser, AbortReasonInvalidParamValue)
				return nil, fmt.Errorf("response command set: %w", ErrTooLarge)
			}
			buf = append(buf, v.Data...)
			if !v.Last {
				continue
			}
			cmd, err := DecodeCommand(buf)
			if err != nil {
				cl.c.abort(AbortSourceUser, AbortReasonInvalidParamValue)
				return nil, err
			}
			if cmd.Field() != field {
				cl.c.abort(AbortSourceUser, AbortReasonUnexpectedPDU)
				return nil, malformed("response 0x%04X to a request awaiting 0x%04X", cmd.Field(), field)
			}
			if id, _ := cmd.Uint16(elMessageIDRespondedTo); id != cl.msgID {
				cl.c.abort(AbortSourceUser, AbortReasonInvalidParamValue)
				return nil, malformed("response to message %d, awaiting %d", id, cl.msgID)
			}
			return cmd, nil
		}
	}
}

// Release ends the association in order (A-RELEASE-RQ, wait for the RP
// within ARTIM) and closes the connection.
func (cl *Client) Release() error {
	defer func() { _ = cl.c.nc.Close() }() // the release's outcome is the error that matters
	if err := cl.c.write(encodeRelease(pduReleaseRQ)); err != nil {
		return err
	}
	for {
		typ, _, err := cl.c.readPDU(cl.artim)
		if err != nil {
			return fmt.Errorf("waiting for A-RELEASE-RP: %w", err)
		}
		switch typ {
		case pduReleaseRP:
			return nil
		case pduAbort:
			return errors.New("peer aborted instead of releasing")
		case pduPData:
			// A late response: skip it (PS3.8 allows P-DATA before RP).
		default:
			return malformed("PDU type 0x%02X while waiting for A-RELEASE-RP", typ)
		}
	}
}

// Abort ends the association at once (A-ABORT) and closes the connection.
func (cl *Client) Abort() { cl.c.abort(AbortSourceUser, AbortReasonNotSpecified) }

package dimse

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
)

// Storage Commitment Push Model (PS3.4 Annex J).
const (
	StorageCommitmentClass    = "1.2.840.10008.1.20.1"
	StorageCommitmentInstance = "1.2.840.10008.1.20.1.1"

	CommandNActionRQ       uint16 = 0x0130
	CommandNActionRSP      uint16 = 0x8130
	CommandNEventReportRQ  uint16 = 0x0100
	CommandNEventReportRSP uint16 = 0x8100

	elRequestedSOPClassUID    uint16 = 0x0003
	elRequestedSOPInstanceUID uint16 = 0x1001
	elActionTypeID            uint16 = 0x1008
	elEventTypeID             uint16 = 0x1002
)

// Dataset tags of a commitment request and report.
const (
	tagTransactionUID       uint32 = 0x00081195
	tagReferencedSOPSeq     uint32 = 0x00081199
	tagFailedSOPSeq         uint32 = 0x00081198
	tagReferencedSOPClass   uint32 = 0x00081150
	tagReferencedSOPInst    uint32 = 0x00081155
	tagFailureReason        uint32 = 0x00081197
	tagItem                 uint32 = 0xFFFEE000
	tagItemDelimitation     uint32 = 0xFFFEE00D
	tagSequenceDelimitation uint32 = 0xFFFEE0DD
)

// CommitmentReport is what a storage commitment SCP reported for one
// transaction (N-EVENT-REPORT, event type 1 all committed, 2 failures).
type CommitmentReport struct {
	TransactionUID string
	Committed      []string          // SOP Instance UIDs
	Failed         map[string]uint16 // SOP Instance UID → Failure Reason
}

// Commitments matches N-EVENT-REPORTs that arrive on an association the
// peer opens (as Orthanc does) with the transfer waiting for them, by
// Transaction UID. It is shared by the Server that receives them and the
// Sender that waits. A report for a transaction nobody here waits for (it
// went to another replica, or came after the wait) is answered and
// dropped: the waiting side times out and asks again.
type Commitments struct {
	mu      sync.Mutex
	waiting map[string]*commitWait
}

type commitWait struct {
	calledAE string // the peer's AE title: only it may report
	ch       chan CommitmentReport
}

func (c *Commitments) expect(uid, peerAE string) chan CommitmentReport {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.waiting == nil {
		c.waiting = map[string]*commitWait{}
	}
	ch := make(chan CommitmentReport, 1)
	c.waiting[uid] = &commitWait{calledAE: peerAE, ch: ch}
	return ch
}

func (c *Commitments) forget(uid string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.waiting, uid)
}

// deliver hands a report to its waiter; false when nobody here waits for
// it from that AE.
func (c *Commitments) deliver(fromAE string, r CommitmentReport) bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	w, ok := c.waiting[r.TransactionUID]
	if !ok || w.calledAE != fromAE {
		return false
	}
	delete(c.waiting, r.TransactionUID)
	w.ch <- r
	return true
}

// newTransactionUID makes a unique UID under this implementation's root
// (2.25 form: a random 128-bit integer, PS3.5 B.2).
func newTransactionUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "2.25." + new(big.Int).SetBytes(b[:]).String()
}

// encodeCommitRequest is the N-ACTION dataset (Implicit VR Little Endian):
// the Transaction UID and one Referenced SOP Sequence item per instance.
func encodeCommitRequest(uid string, refs [][2]string) []byte {
	var b []byte
	b = appendImplicit(b, tagTransactionUID, padUID(uid))
	b = appendImplicitHeader(b, tagReferencedSOPSeq, 0xFFFFFFFF)
	for _, r := range refs {
		var item []byte
		item = appendImplicit(item, tagReferencedSOPClass, padUID(r[0]))
		item = appendImplicit(item, tagReferencedSOPInst, padUID(r[1]))
		b = appendImplicitHeader(b, tagItem, uint32(len(item)))
		b = append(b, item...)
	}
	return appendImplicitHeader(b, tagSequenceDelimitation, 0)
}

func appendImplicitHeader(b []byte, tag uint32, n uint32) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(tag>>16))
	b = binary.LittleEndian.AppendUint16(b, uint16(tag))
	return binary.LittleEndian.AppendUint32(b, n)
}

func appendImplicit(b []byte, tag uint32, v []byte) []byte {
	return append(appendImplicitHeader(b, tag, uint32(len(v))), v...)
}

// decodeCommitReport reads an N-EVENT-REPORT dataset in Implicit or
// Explicit VR Little Endian.
func decodeCommitReport(b []byte, explicit bool) (CommitmentReport, error) {
	r := CommitmentReport{Failed: map[string]uint16{}}
	d := &walker{b: b, explicit: explicit}
	for !d.done() {
		tag, _, v, items, err := d.next()
		if err != nil {
			return r, err
		}
		switch {
		case tag == tagTransactionUID:
			r.TransactionUID = uidValue(v)
		case tag == tagReferencedSOPSeq || tag == tagFailedSOPSeq:
			for _, item := range items {
				var sop string
				var reason uint16
				iw := &walker{b: item, explicit: explicit}
				for !iw.done() {
					t, _, iv, _, err := iw.next()
					if err != nil {
						return r, err
					}
					switch t {
					case tagReferencedSOPInst:
						sop = uidValue(iv)
					case tagFailureReason:
						if len(iv) >= 2 {
							reason = binary.LittleEndian.Uint16(iv)
						}
					}
				}
				if sop == "" {
					continue
				}
				if gateway.ValidateUID(sop) != nil {
					// Not echoed: the caller's bytes go to logs and last_error.
					return r, malformed("storage commitment report with a Referenced SOP Instance UID that is not a UID")
				}
				if tag == tagFailedSOPSeq {
					r.Failed[sop] = reason
				} else {
					r.Committed = append(r.Committed, sop)
				}
			}
		}
	}
	if r.TransactionUID == "" {
		return r, malformed("storage commitment report without a Transaction UID")
	}
	if gateway.ValidateUID(r.TransactionUID) != nil {
		return r, malformed("storage commitment report with a Transaction UID that is not a UID")
	}
	return r, nil
}

// walker reads the elements of a small dataset one level at a time,
// returning a sequence's items as raw byte slices.
type walker struct {
	b        []byte
	explicit bool
	// depth is how many undefined-length items this walker is inside:
	// finding their ends walks nested sequences, which a hostile report
	// could nest until the stack grows by the megabyte.
	depth int
}

// maxWalkDepth bounds the nesting of undefined-length items in a report
// (a commitment report has one level of sequences).
const maxWalkDepth = 8

func (w *walker) done() bool { return len(w.b) == 0 }

func (w *walker) next() (tag uint32, vr string, value []byte, items [][]byte, err error) {
	if len(w.b) < 8 {
		return 0, "", nil, nil, malformed("element header of %d bytes", len(w.b))
	}
	tag = uint32(binary.LittleEndian.Uint16(w.b[0:2]))<<16 | uint32(binary.LittleEndian.Uint16(w.b[2:4]))
	hdr := 8
	var n uint32
	if w.explicit && tag>>16 != 0xFFFE {
		vr = string(w.b[4:6])
		switch vr {
		case "OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR", "OD", "OL", "OV", "SV", "UV":
			if len(w.b) < 12 {
				return 0, "", nil, nil, malformed("element header of %d bytes", len(w.b))
			}
			n, hdr = binary.LittleEndian.Uint32(w.b[8:12]), 12
		default:
			n = uint32(binary.LittleEndian.Uint16(w.b[6:8]))
		}
	} else {
		n = binary.LittleEndian.Uint32(w.b[4:8])
		if tag == tagReferencedSOPSeq || tag == tagFailedSOPSeq {
			vr = "SQ"
		}
	}
	body := w.b[hdr:]
	if vr != "SQ" {
		if n == 0xFFFFFFFF || uint64(n) > uint64(len(body)) {
			return 0, "", nil, nil, malformed("element (%08X) of length %d with %d bytes left", tag, n, len(body))
		}
		w.b = body[n:]
		return tag, vr, body[:n], nil, nil
	}
	// A sequence: items of defined or undefined length, the sequence of
	// defined or undefined length.
	end := len(body)
	if n != 0xFFFFFFFF {
		if uint64(n) > uint64(len(body)) {
			return 0, "", nil, nil, malformed("sequence (%08X) of length %d with %d bytes left", tag, n, len(body))
		}
		end = int(n)
	}
	seq := body[:end]
	used := 0
	for used < len(seq) {
		if len(seq)-used < 8 {
			return 0, "", nil, nil, malformed("item header cut short")
		}
		it := uint32(binary.LittleEndian.Uint16(seq[used:]))<<16 | uint32(binary.LittleEndian.Uint16(seq[used+2:]))
		il := binary.LittleEndian.Uint32(seq[used+4:])
		used += 8
		if it == tagSequenceDelimitation {
			break
		}
		if it != tagItem {
			return 0, "", nil, nil, malformed("(%08X) where a sequence item belongs", it)
		}
		if il != 0xFFFFFFFF {
			if uint64(il) > uint64(len(seq)-used) {
				return 0, "", nil, nil, malformed("item of length %d with %d bytes left", il, len(seq)-used)
			}
			items = append(items, seq[used:used+int(il)])
			used += int(il)
			continue
		}
		// Undefined-length item: its elements up to the item delimiter
		// (nested sequences are not expected in a commitment report).
		if w.depth >= maxWalkDepth {
			return 0, "", nil, nil, malformed("sequences nested deeper than %d", maxWalkDepth)
		}
		iw := &walker{b: seq[used:], explicit: w.explicit, depth: w.depth + 1}
		start := used
		for {
			if len(iw.b) >= 4 && uint32(binary.LittleEndian.Uint16(iw.b))<<16|uint32(binary.LittleEndian.Uint16(iw.b[2:])) == tagItemDelimitation {
				items = append(items, seq[start:len(seq)-len(iw.b)])
				used = len(seq) - len(iw.b) + 8
				break
			}
			if iw.done() {
				return 0, "", nil, nil, malformed("item without its delimiter")
			}
			if _, _, _, _, err := iw.next(); err != nil {
				return 0, "", nil, nil, err
			}
		}
	}
	if n == 0xFFFFFFFF {
		w.b = body[min(used, len(body)):]
	} else {
		w.b = body[end:]
	}
	return tag, "SQ", nil, items, nil
}

// ErrNoCommitmentReport is returned when the peer sent no storage
// commitment report in the time given.
var ErrNoCommitmentReport = errors.New("no storage commitment report in time")

// RequestCommitment asks the peer to commit the given (SOP class, SOP
// instance) pairs (N-ACTION on an accepted Storage Commitment Push Model
// context) and waits up to wait for the report: on this association, or
// through reg when the peer reports on an association of its own. An error
// means no report came; the caller asks again later. The association is
// spent afterwards: Abort it.
func (cl *Client) RequestCommitment(ctx context.Context, reg *Commitments, peerAE string, refs [][2]string, wait time.Duration) (CommitmentReport, error) {
	pc, ok := cl.Accepted(StorageCommitmentClass, "")
	if !ok {
		return CommitmentReport{}, errors.New("the peer accepted no Storage Commitment Push Model presentation context")
	}
	uid := newTransactionUID()
	var viaListener chan CommitmentReport
	if reg != nil {
		viaListener = reg.expect(uid, peerAE)
		defer reg.forget(uid)
	}
	stop := cl.watch(ctx)
	defer stop()
	cl.msgID++
	cmd := NewCommand()
	cmd.SetString(elRequestedSOPClassUID, StorageCommitmentClass, true)
	cmd.SetUint16(elCommandField, CommandNActionRQ)
	cmd.SetUint16(elMessageID, cl.msgID)
	cmd.SetUint16(elCommandDataSetType, 0x0000)
	cmd.SetString(elRequestedSOPInstanceUID, StorageCommitmentInstance, true)
	cmd.SetUint16(elActionTypeID, 1)
	if err := cl.out.sendCommand(pc.ID, cmd); err != nil {
		return CommitmentReport{}, ctxErr(ctx, err)
	}
	if _, err := cl.out.sendDataSet(pc.ID, bytes.NewReader(encodeCommitRequest(uid, refs))); err != nil {
		return CommitmentReport{}, ctxErr(ctx, err)
	}
	rsp, err := cl.response(CommandNActionRSP)
	if err != nil {
		return CommitmentReport{}, ctxErr(ctx, err)
	}
	if st, _ := rsp.Uint16(elStatus); !Status(st).Success() {
		return CommitmentReport{}, fmt.Errorf("N-ACTION (storage commitment request) answered %s", Status(st))
	}

	// Wait for the report on this association in a goroutine of its own,
	// while also watching the listener's delivery.
	type onAssoc struct {
		r   CommitmentReport
		err error
	}
	got := make(chan onAssoc, 1)
	go func() {
		r, err := cl.awaitEventReport(pc, wait)
		got <- onAssoc{r, err}
	}()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case o := <-got:
		if o.err == nil && o.r.TransactionUID == uid {
			return o.r, nil
		}
		// The association ended without a report here: it may still come
		// on an association of the peer's own.
		select {
		case r := <-viaListener:
			return r, nil
		case <-timer.C:
		case <-ctx.Done():
			return CommitmentReport{}, context.Cause(ctx)
		}
	case r := <-viaListener:
		_ = cl.c.nc.Close() // stops the reader; the association has served
		<-got
		return r, nil
	case <-timer.C:
		_ = cl.c.nc.Close()
		<-got
	case <-ctx.Done():
		_ = cl.c.nc.Close()
		<-got
		return CommitmentReport{}, context.Cause(ctx)
	}
	return CommitmentReport{}, ErrNoCommitmentReport
}

// awaitEventReport reads the association until an N-EVENT-REPORT-RQ,
// answers it and returns its report.
func (cl *Client) awaitEventReport(pc PresentationContext, wait time.Duration) (CommitmentReport, error) {
	var cmdBuf, data []byte
	var cmd *Command
	for {
		typ, body, err := cl.c.readPDU(wait)
		if err != nil {
			return CommitmentReport{}, err
		}
		switch typ {
		case pduPData:
		case pduReleaseRQ:
			_ = cl.c.write(encodeRelease(pduReleaseRP))
			return CommitmentReport{}, errors.New("the peer released the association before reporting")
		case pduAbort:
			return CommitmentReport{}, &AbortError{Source: body[2], Reason: body[3]}
		default:
			return CommitmentReport{}, malformed("PDU type 0x%02X while waiting for N-EVENT-REPORT", typ)
		}
		pdvs, err := decodePData(body, nil)
		if err != nil {
			return CommitmentReport{}, err
		}
		for _, v := range pdvs {
			if v.Command {
				if len(cmdBuf)+len(v.Data) > maxCommandBytes {
					return CommitmentReport{}, ErrTooLarge
				}
				cmdBuf = append(cmdBuf, v.Data...)
				if v.Last {
					if cmd, err = DecodeCommand(cmdBuf); err != nil {
						return CommitmentReport{}, err
					}
					if cmd.Field() != CommandNEventReportRQ || !cmd.HasDataSet() {
						return CommitmentReport{}, malformed("command 0x%04X while waiting for N-EVENT-REPORT", cmd.Field())
					}
				}
				continue
			}
			if cmd == nil {
				return CommitmentReport{}, malformed("dataset before the N-EVENT-REPORT command")
			}
			if len(data)+len(v.Data) > maxIdentifierBytes*64 {
				return CommitmentReport{}, ErrTooLarge
			}
			data = append(data, v.Data...)
			if !v.Last {
				continue
			}
			r, derr := decodeCommitReport(data, pc.TransferSyntax[0] == ExplicitVRLittleEndian)
			status := StatusSuccess
			if derr != nil {
				status = StatusProcessingFailure
			}
			if err := cl.out.sendCommand(v.ContextID, eventReportRSP(cmd, status)); err != nil {
				return CommitmentReport{}, err
			}
			return r, derr
		}
	}
}

func eventReportRSP(rq *Command, status Status) *Command {
	rsp := NewCommand()
	msgID, _ := rq.Uint16(elMessageID)
	ev, _ := rq.Uint16(elEventTypeID)
	rsp.SetString(elAffectedSOPClassUID, rq.String(elAffectedSOPClassUID), true)
	rsp.SetUint16(elCommandField, CommandNEventReportRSP)
	rsp.SetUint16(elMessageIDRespondedTo, msgID)
	rsp.SetUint16(elCommandDataSetType, dataSetAbsent)
	rsp.SetUint16(elStatus, uint16(status))
	rsp.SetString(elAffectedSOPInstanceUID, rq.String(elAffectedSOPInstanceUID), true)
	rsp.SetUint16(elEventTypeID, ev)
	return rsp
}

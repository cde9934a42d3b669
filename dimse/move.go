package dimse

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/dicom-gateway/gateway/gateway"
)

// The Query/Retrieve information models C-MOVE is offered for, and the
// C-MOVE command fields and statuses (PS3.4 C.4.2).
const (
	StudyRootMove   = "1.2.840.10008.5.1.4.1.2.2.2"
	PatientRootMove = "1.2.840.10008.5.1.4.1.2.1.2"

	CommandCMoveRQ  uint16 = 0x0021
	CommandCMoveRSP uint16 = 0x8021

	elMoveDestination uint16 = 0x0600
	elRemainingSubOps uint16 = 0x1020
	elCompletedSubOps uint16 = 0x1021
	elFailedSubOps    uint16 = 0x1022
	elWarningSubOps   uint16 = 0x1023

	StatusMoveDestinationUnknown Status = 0xA801
	StatusSubOpsFailed           Status = 0xB000 // warning: one or more sub-operations failed or warned
	StatusUnableToSubOps         Status = 0xA702
	// StatusMoveRefused is a C-MOVE refused by this gateway's policy (PS3.4
	// C.4.2.1.5, Cxxx: unable to process).
	StatusMoveRefused Status = 0xC001
	// StatusCancel ends a C-MOVE the caller cancelled: sub-operations
	// terminated due to a Cancel indication (PS3.4 C.4.2.1.5).
	StatusCancel Status = 0xFE00
)

// Mover answers C-MOVE: which stored instances a move names, and where its
// Move Destination AE title is (through the adapter in cmd/gateway: the
// index, the audit log and the DIMSE peers of the configuration).
type Mover interface {
	// Instances returns the stored instances of a study, of a series of
	// it (series != ""), or the listed ones (sops), and records the
	// retrieve in the audit log; an audit that cannot be written fails it.
	Instances(ctx context.Context, c Caller, destination, study, series string, sops []string) ([]*gateway.InstanceRecord, error)
	// Destination returns the DIMSE peer whose called AE title is ae.
	Destination(ae string) (gateway.Peer, bool)
}

// move answers one C-MOVE: the instances go to the destination by C-STORE
// over an association of their own (the Sender's), with a pending response
// after each, then the final counts. Meanwhile a moveWatch reads the
// caller's PDUs: after its C-CANCEL-RQ no further C-STORE is begun (the one
// under way finishes) and the move ends with Cancel; its abort or hang-up
// interrupts them with no answer.
func (a *association) move(in *incoming) error {
	pc := a.contexts[in.ctxID]
	msgID, _ := in.cmd.Uint16(elMessageID)
	// failedUIDs are the instances a final Warning or Failure names in its
	// identifier: refused by the destination or never sent.
	var failedUIDs []string
	respond := func(status Status, remaining, completed, failed, warning int, comment string) error {
		rsp := NewCommand()
		rsp.SetString(elAffectedSOPClassUID, pc.AbstractSyntax, true)
		rsp.SetUint16(elCommandField, CommandCMoveRSP)
		rsp.SetUint16(elMessageIDRespondedTo, msgID)
		rsp.SetUint16(elCommandDataSetType, dataSetAbsent)
		failedList := status != StatusPending && status != StatusSuccess && len(failedUIDs) > 0
		if failedList {
			rsp.SetUint16(elCommandDataSetType, 0x0000)
		}
		rsp.SetUint16(elStatus, uint16(status))
		if status == StatusPending || status == StatusCancel {
			rsp.SetUint16(elRemainingSubOps, uint16(min(remaining, 0xFFFF)))
		}
		rsp.SetUint16(elCompletedSubOps, uint16(min(completed, 0xFFFF)))
		rsp.SetUint16(elFailedSubOps, uint16(min(failed, 0xFFFF)))
		rsp.SetUint16(elWarningSubOps, uint16(min(warning, 0xFFFF)))
		if comment != "" {
			rsp.SetString(elErrorComment, comment[:min(len(comment), 64)], false)
		}
		if err := a.out.sendCommand(in.ctxID, rsp); err != nil {
			return fmt.Errorf("sending a C-MOVE response: %w", err)
		}
		if failedList {
			ident := failedSOPList(failedUIDs, pc.TransferSyntax[0] == ExplicitVRLittleEndian)
			if _, err := a.out.sendDataSet(in.ctxID, bytes.NewReader(ident)); err != nil {
				return fmt.Errorf("sending a C-MOVE response's identifier: %w", err)
			}
		}
		return nil
	}
	dest := in.cmd.String(elMoveDestination)
	peer, ok := a.s.Mover.Destination(dest)
	if !ok {
		return respond(StatusMoveDestinationUnknown, 0, 0, 0, 0, "move destination "+dest+" is not a DIMSE peer of this gateway")
	}
	if reason := moveRefusal(a.caller, dest, peer); reason != "" {
		a.log.Warn("C-MOVE refused", "destination", dest, "reason", reason)
		return respond(StatusMoveRefused, 0, 0, 0, 0, reason)
	}
	ident, err := parseIdentifier(in.ident, pc.TransferSyntax[0] == ExplicitVRLittleEndian)
	if err != nil {
		return respond(StatusIdentifierMismatch, 0, 0, 0, 0, err.Error())
	}
	_, study, series, sops, err := moveKeys(ident)
	if err != nil {
		return respond(StatusIdentifierMismatch, 0, 0, 0, 0, err.Error())
	}
	recs, err := a.s.Mover.Instances(a.s.ctx, a.caller, dest, study, series, sops)
	if err != nil {
		a.log.Warn("C-MOVE: instances not listed", "error", err.Error())
		if errors.Is(err, gateway.ErrNotFound) {
			return respond(StatusSuccess, 0, 0, 0, 0, "")
		}
		return respond(StatusOutOfResources, 0, 0, 0, 0, err.Error())
	}
	total, completed, failed, warning := len(recs), 0, 0, 0
	sent := map[string]bool{} // answered by the destination, either way
	var (
		sendErr         error
		cancelled, gone bool
	)
	if total > 0 {
		peer.MaxParallel = 1 // pending responses in order, from this goroutine
		snd := a.s.MoveSender
		ctx, stop := context.WithCancel(a.s.ctx)
		w := a.watchMove(in.ctxID, msgID, stop)
		sendErr = snd.Send(ctx, peer, gateway.SendHeader{Source: a.s.AETitle, Total: total}, recs, func(res []gateway.SendResult) {
			for _, r := range res {
				sent[r.SOPInstanceUID] = true
				switch {
				case r.OK && r.Warning != "":
					warning++
				case r.OK:
					completed++
				default:
					failed++
					failedUIDs = append(failedUIDs, r.SOPInstanceUID)
				}
			}
			if err := respond(StatusPending, total-completed-failed-warning, completed, failed, warning, ""); err != nil {
				a.log.Warn("C-MOVE pending response not sent", "error", err.Error())
			}
			if w != nil && w.cancelRequested() {
				stop() // the next C-STORE is not begun
			}
		})
		if w != nil {
			cancelled, gone = w.end()
		}
		stop()
	}
	remaining := total - completed - failed - warning // never begun
	switch {
	case gone:
		// Nobody to answer (PS3.4 C.4.2.3.1 note: what becomes of the
		// sub-operations is then the SCP's choice; these stop).
		a.log.Info("C-MOVE stopped: the caller went away", "destination", dest, "completed", completed, "failed", failed, "warning", warning, "remaining", remaining)
		return nil
	case cancelled && remaining > 0:
		// Cancel (PS3.4 C.4.2.3.1): the counts so far, Remaining the
		// sub-operations not begun, and the Failed SOP Instance UID List
		// only the instances the destination refused. A cancel that came
		// during or after the last sub-operation gets the usual status.
		a.log.Info("C-MOVE cancelled by the caller", "destination", dest, "completed", completed, "failed", failed, "warning", warning, "remaining", remaining)
		return respond(StatusCancel, remaining, completed, failed, warning, "")
	}
	failed += remaining // never attempted: the association broke
	for _, rec := range recs {
		if !sent[rec.SOPInstanceUID] {
			failedUIDs = append(failedUIDs, rec.SOPInstanceUID)
		}
	}
	switch {
	case sendErr != nil && completed == 0 && warning == 0:
		a.log.Warn("C-MOVE sub-operations failed", "destination", dest, "error", sendErr.Error())
		return respond(StatusUnableToSubOps, 0, completed, failed, warning, sendErr.Error())
	case failed > 0 || warning > 0:
		// B000: one or more failures or warnings (PS3.4 C.4.2.1.3).
		return respond(StatusSubOpsFailed, 0, completed, failed, warning, "")
	}
	return respond(StatusSuccess, 0, completed, failed, warning, "")
}

// tagFailedSOPInstanceUIDList is (0008,0058) Failed SOP Instance UID List.
const tagFailedSOPInstanceUIDList = "00080058"

// failedSOPList encodes the identifier of a final C-MOVE response of
// Warning or Failure status (PS3.4 C.4.2.1.3.2): the Failed SOP Instance
// UID List. The list stops before the 64 KiB a value can hold, at a whole
// UID; the Failed count says how many there were.
func failedSOPList(uids []string, explicit bool) []byte {
	var v []byte
	for _, u := range uids {
		if len(v)+1+len(u)+1 > 0xFFFE {
			break
		}
		if len(v) > 0 {
			v = append(v, '\\')
		}
		v = append(v, u...)
	}
	if len(v)%2 == 1 {
		v = append(v, 0)
	}
	return appendElement(nil, tagFailedSOPInstanceUIDList, "UI", v, explicit)
}

// moveRefusal says why a caller may not move instances to peer (its
// called AE title dest), or "":
//   - a peer whose instances must be coerced or de-identified receives
//     them only through transfers, which rewrite them (C-MOVE sends the
//     stored bytes);
//   - moving to another system pushes studies to it, as creating a
//     transfer does over HTTP, and needs the transfer role; role read only
//     retrieves to the caller itself: its own AE title, or a peer at the
//     caller's own address (a PACS whose storage AE title differs from the
//     one it queries with).
//
// The reason goes into Error Comment, which holds 64 characters.
func moveRefusal(c Caller, dest string, peer gateway.Peer) string {
	switch p := c.Principal(); {
	case peer.Deidentify != nil || peer.Coerce != nil:
		return "destination is de-identified or coerced: create a transfer"
	case dest != c.AETitle && !sameHost(peer.DIMSE.Host, c.Address) && !p.Has(gateway.RoleTransfer):
		return "moving to another system needs role transfer"
	}
	return ""
}

// sameHost reports whether host (a peer's configured address) is the IP
// address addr.
func sameHost(host, addr string) bool {
	h, err1 := netip.ParseAddr(host)
	a, err2 := netip.ParseAddr(addr)
	return err1 == nil && err2 == nil && h.Unmap() == a.Unmap()
}

// moveKeys reads the unique keys of a C-MOVE identifier (PS3.4 C.4.2.2.1):
// the level and the UIDs down to it.
func moveKeys(ident []element) (level, study, series string, sops []string, err error) {
	for _, e := range ident {
		v := strings.TrimRight(string(e.value), " \x00")
		switch e.tag {
		case tagQueryRetrieveLevel:
			level = strings.TrimSpace(v)
		case "0020000D":
			study = v
		case "0020000E":
			series = v
		case "00080018":
			for _, s := range strings.Split(v, `\`) {
				if s = strings.TrimSpace(s); s != "" {
					sops = append(sops, s)
				}
			}
		}
	}
	for _, u := range append([]string{study, series}, sops...) {
		if u != "" && gateway.ValidateUID(u) != nil {
			return "", "", "", nil, fmt.Errorf("%q is not a UID", u)
		}
	}
	switch {
	case study == "" || strings.Contains(study, `\`):
		return "", "", "", nil, errors.New("C-MOVE needs one Study Instance UID")
	case level == "STUDY":
		series, sops = "", nil
	case level == "SERIES" && series != "" && !strings.Contains(series, `\`):
		sops = nil
	case level == "IMAGE" && len(sops) > 0:
	default:
		return "", "", "", nil, fmt.Errorf("level %q without its unique key", level)
	}
	return level, study, series, sops, nil
}

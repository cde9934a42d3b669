package dimse

import (
	"context"
	"sync"
	"time"
)

// moveWatchWait is the read deadline while a C-MOVE's sub-operations run:
// the caller may stay silent for as long as the move takes.
const moveWatchWait = 24 * time.Hour

// moveWatch reads the caller's PDUs while a C-MOVE's sub-operations run,
// which the association's own loop cannot (it is in the move), so that a
// C-CANCEL-RQ for the move, the caller's A-ABORT or its hang-up stop the
// sub-operations instead of letting every remaining instance be sent (PS3.4
// C.4.2.3.1: on a cancel the SCP stops them and answers Cancel, Remaining
// counting the sub-operations not begun).
//
// A cancel is noted (cancelRequested) and the move begins no further
// C-STORE; an abort or a read error interrupts the one under way too
// (nobody is left to answer). It swallows C-CANCEL-RQs before and after
// the move ends (a cancel of an operation already answered is ignored,
// PS3.7 9.3.2.3). The first other PDU, or read error, is handed over on
// next, and the watch stops reading: the association's loop takes it as
// its next read, so a cancel or abort that follows it is seen only when
// the move ends. After end the read waits for the association's idle
// time, as the loop's own read would.
type moveWatch struct {
	c      *conn
	idle   time.Duration
	ctxID  byte // the move's presentation context, which its cancel comes on
	msgID  uint16
	cancel context.CancelFunc // interrupts the move's sub-operations

	mu        sync.Mutex
	ended     bool // the move's sub-operations are over; decides the read deadline
	cancelled bool // a C-CANCEL-RQ for the move arrived while they ran
	gone      bool // the caller aborted, or the connection failed, while they ran

	next chan pduRead
}

// pduRead is one read of the connection: a PDU or the error that ended it.
type pduRead struct {
	typ  byte
	body []byte
	err  error
}

// watchMove starts watching for the caller's cancel of the C-MOVE msgID;
// cancel stops its sub-operations. The association's next read is the
// watch's (association.readPDU). It returns nil, and the move goes
// unwatched, when an earlier move's watch is still reading: a second
// C-MOVE in the same P-DATA-TF as the first (without asynchronous
// operations negotiated, a caller may not send it before the first's
// final response), where a second reader would corrupt the stream.
func (a *association) watchMove(ctxID byte, msgID uint16, cancel context.CancelFunc) *moveWatch {
	if a.watch != nil {
		return nil
	}
	// The watch reads into a buffer of its own: the PDVs of the P-DATA-TF
	// that held the move's identifier, which the loop goes on with after
	// the move, are in the current one.
	a.c.buf = nil
	w := &moveWatch{c: a.c, idle: a.s.idle(), ctxID: ctxID, msgID: msgID, cancel: cancel, next: make(chan pduRead, 1)}
	a.watch = w
	go w.run()
	return w
}

func (w *moveWatch) run() {
	var pdvs []PDV
	for {
		w.mu.Lock()
		wait := moveWatchWait
		if w.ended {
			wait = w.idle
		}
		err := w.c.nc.SetReadDeadline(time.Now().Add(wait))
		w.mu.Unlock()
		r := pduRead{err: err}
		if err == nil {
			r.typ, r.body, r.err = w.c.readPDUByDeadline()
		}
		if r.err == nil && r.typ == pduPData {
			var cancel, ours bool
			pdvs, cancel, ours = w.isCancel(r.body, pdvs)
			if cancel {
				if ours {
					w.note(&w.cancelled, false)
				}
				continue
			}
		}
		if r.err != nil || r.typ == pduAbort {
			w.note(&w.gone, true)
		}
		w.next <- r
		return
	}
}

// isCancel reports whether body is a P-DATA-TF holding one whole
// C-CANCEL-RQ, and whether it cancels this move (its Message ID Being
// Responded To). A cancel split over fragments is not recognised: it is
// handed over, and the association's loop ignores it.
func (w *moveWatch) isCancel(body []byte, pdvs []PDV) (_ []PDV, cancel, ours bool) {
	pdvs, err := decodePData(body, pdvs)
	if err != nil || len(pdvs) != 1 || !pdvs[0].Command || !pdvs[0].Last {
		return pdvs, false, false
	}
	cmd, err := DecodeCommand(pdvs[0].Data)
	if err != nil || cmd.Field() != CommandCCancelRQ {
		return pdvs, false, false
	}
	id, ok := cmd.Uint16(elMessageIDRespondedTo)
	return pdvs, true, ok && id == w.msgID && pdvs[0].ContextID == w.ctxID
}

// note sets why (cancelled or gone) unless the sub-operations are over,
// and with interrupt stops the one under way.
func (w *moveWatch) note(why *bool, interrupt bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.ended {
		*why = true
		if interrupt {
			w.cancel()
		}
	}
}

// cancelRequested says whether the caller has cancelled the move: it
// begins no further sub-operation.
func (w *moveWatch) cancelRequested() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cancelled
}

// end marks the move's sub-operations over, so that a read still waiting
// waits only for the association's idle time, and says whether the caller
// cancelled the move, or went, while they ran.
func (w *moveWatch) end() (cancelled, gone bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ended = true
	_ = w.c.nc.SetReadDeadline(time.Now().Add(w.idle))
	return w.cancelled, w.gone
}

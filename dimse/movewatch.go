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
	c    *conn
	idle time.Duration

	mu        sync.Mutex
	ctxID     byte               // the move's presentation context, which its cancel comes on
	msgID     uint16             // the move's Message ID
	cancel    context.CancelFunc // interrupts the move's sub-operations
	ended     bool               // the move's sub-operations are over; decides the read deadline
	cancelled bool               // a C-CANCEL-RQ for the move arrived while they ran
	gone      bool               // the caller aborted, or the connection failed, while they ran
	handed    bool               // the watch has handed its last read over and stopped

	next chan pduRead
}

// pduRead is one read of the connection: a PDU or the error that ended it.
type pduRead struct {
	typ  byte
	body []byte
	err  error
}

// watchMove starts watching for the caller's cancel of the C-MOVE msgID on
// presentation context ctxID; cancel interrupts its sub-operations. The
// association's next read is the watch's (association.readPDU).
//
// A second C-MOVE in the same P-DATA-TF as the first (a caller may not
// send it before the first's final response without asynchronous
// operations negotiated, but some do) finds the first's watch still
// reading: that watch is re-armed for it, since a second reader would
// corrupt the stream. If that watch has already handed a PDU over, the
// move goes unwatched (nil): nothing reads until the loop takes that PDU.
func (a *association) watchMove(ctxID byte, msgID uint16, cancel context.CancelFunc) *moveWatch {
	if w := a.watch; w != nil {
		if w.rearm(ctxID, msgID, cancel) {
			return w
		}
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

// rearm makes a watch whose move has ended watch the next one, unless it
// has stopped reading.
func (w *moveWatch) rearm(ctxID byte, msgID uint16, cancel context.CancelFunc) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.handed {
		return false
	}
	w.ctxID, w.msgID, w.cancel = ctxID, msgID, cancel
	w.ended, w.cancelled, w.gone = false, false, false
	_ = w.c.nc.SetReadDeadline(time.Now().Add(moveWatchWait))
	return true
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
			var cmd *Command
			var ctxID byte
			pdvs, cmd, ctxID = cancelIn(r.body, pdvs)
			if cmd != nil {
				w.noteCancel(cmd, ctxID)
				continue
			}
		}
		w.mu.Lock()
		if (r.err != nil || r.typ == pduAbort) && !w.ended {
			w.gone = true
			w.cancel()
		}
		w.handed = true
		w.mu.Unlock()
		w.next <- r
		return
	}
}

// cancelIn returns the C-CANCEL-RQ that body, a P-DATA-TF, holds whole in
// its one PDV, and that PDV's presentation context; nil if it holds
// anything else. A cancel split over fragments is not recognised: it is
// handed over, and the association's loop ignores it.
func cancelIn(body []byte, pdvs []PDV) ([]PDV, *Command, byte) {
	pdvs, err := decodePData(body, pdvs)
	if err != nil || len(pdvs) != 1 || !pdvs[0].Command || !pdvs[0].Last {
		return pdvs, nil, 0
	}
	cmd, err := DecodeCommand(pdvs[0].Data)
	if err != nil || cmd.Field() != CommandCCancelRQ {
		return pdvs, nil, 0
	}
	return pdvs, cmd, pdvs[0].ContextID
}

// noteCancel notes cmd, a C-CANCEL-RQ, when it names the move under way on
// its presentation context; any other is ignored.
func (w *moveWatch) noteCancel(cmd *Command, ctxID byte) {
	id, ok := cmd.Uint16(elMessageIDRespondedTo)
	w.mu.Lock()
	defer w.mu.Unlock()
	if ok && id == w.msgID && ctxID == w.ctxID && !w.ended {
		w.cancelled = true
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

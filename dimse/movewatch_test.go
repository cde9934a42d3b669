package dimse

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// studyMover moves its records, whatever the identifier, to peer.
type studyMover struct {
	recs []*gateway.InstanceRecord
	peer gateway.Peer
}

func (m *studyMover) Instances(context.Context, Caller, string, string, string, []string) ([]*gateway.InstanceRecord, error) {
	return m.recs, nil
}

func (m *studyMover) Destination(string) (gateway.Peer, bool) { return m.peer, true }

// moveRig is a source server holding a study it moves to a destination
// server whose Store waits until a value is taken from began: each
// instance's C-STORE is held until then.
type moveRig struct {
	src   *testServer
	dst   *testServer
	began chan struct{}
	begun atomic.Int64 // C-STOREs the destination began
	// drain lets every held C-STORE go on from then until the test ends;
	// it also runs while the servers close.
	drain func()
}

func moveServers(t *testing.T, n int, configure func(*Server)) *moveRig {
	t.Helper()
	r := &moveRig{began: make(chan struct{})}
	stop := make(chan struct{})
	var drainers sync.WaitGroup
	r.drain = func() {
		drainers.Go(func() {
			for {
				select {
				case <-r.began:
					r.begun.Add(1)
				case <-stop:
					return
				}
			}
		})
	}
	// Cleanups run last first: draining starts before the servers close
	// and stops after.
	t.Cleanup(func() { close(stop); drainers.Wait() })
	dst := startServer(t, nil)
	dst.store.began = r.began
	r.dst = dst
	t.Cleanup(r.drain)
	host, portS, _ := net.SplitHostPort(dst.addr)
	port, _ := strconv.Atoi(portS)
	mover := &studyMover{peer: gateway.Peer{Name: "dst", DIMSE: &gateway.DIMSEPeer{Host: host, Port: port, CalledAE: "GATEWAY"}}}
	r.src = startServer(t, func(s *Server) {
		s.Mover = mover
		if configure != nil {
			configure(s)
		}
	})
	r.src.MoveSender = &Sender{Blobs: r.src.b.Blobs}
	for _, in := range synth.Study(synth.StudySpec{Seed: 77, InstancesPerSeries: n}) {
		if _, err := r.src.store.in.Store(t.Context(), in.Reader(), gateway.StoreOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mover.recs = r.src.records(t)
	return r
}

// waitBegan lets the next held C-STORE go on.
func (r *moveRig) waitBegan(t *testing.T) {
	t.Helper()
	select {
	case <-r.began:
		r.begun.Add(1)
	case <-time.After(10 * time.Second):
		t.Fatal("no C-STORE began")
	}
}

// settled waits until the destination has begun want C-STOREs, and says
// whether it had (the drainer counts just after letting one go).
func (r *moveRig) settled(want int) bool {
	for range 100 {
		if r.begun.Load() == int64(want) {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// moveCaller associates by hand with presentation context 1 for Study Root
// MOVE and 3 for Verification.
func moveCaller(t *testing.T, ts *testServer) (net.Conn, *conn) {
	t.Helper()
	nc := rawConn(t, ts)
	rq := &AssociateRQ{CalledAE: "GATEWAY", CallingAE: "RAW", ApplicationContext: ApplicationContext,
		Contexts: []PresentationContext{
			{ID: 1, AbstractSyntax: StudyRootMove, TransferSyntax: []string{ExplicitVRLittleEndian}},
			{ID: 3, AbstractSyntax: VerificationSOPClass, TransferSyntax: []string{ExplicitVRLittleEndian}},
		},
		MaxPDULength: 16384, ImplementationUID: "1.2.3"}
	if _, err := nc.Write(encodeAssociate(pduAssociateRQ, rq)); err != nil {
		t.Fatal(err)
	}
	c := newConn(nc, 1<<20, 5*time.Second)
	if typ, _, err := c.readPDU(5 * time.Second); err != nil || typ != pduAssociateAC {
		t.Fatalf("association: type %d, %v", typ, err)
	}
	return nc, c
}

// movePDVs are a C-MOVE-RQ of msgID to GATEWAY and its identifier.
func movePDVs(msgID uint16) []PDV {
	c := NewCommand()
	c.SetString(elAffectedSOPClassUID, StudyRootMove, true)
	c.SetUint16(elCommandField, CommandCMoveRQ)
	c.SetUint16(elMessageID, msgID)
	c.SetUint16(elCommandDataSetType, 0)
	c.SetString(elMoveDestination, "GATEWAY", false)
	var ident []byte
	ident = appendElement(ident, "00080052", "CS", padText("STUDY"), true)
	ident = appendElement(ident, "0020000D", "UI", padUID("1.2.3"), true)
	return []PDV{{ContextID: 1, Command: true, Last: true, Data: c.Encode()}, {ContextID: 1, Last: true, Data: ident}}
}

func echoPDV(msgID uint16) PDV {
	c := NewCommand()
	c.SetString(elAffectedSOPClassUID, VerificationSOPClass, true)
	c.SetUint16(elCommandField, CommandCEchoRQ)
	c.SetUint16(elMessageID, msgID)
	c.SetUint16(elCommandDataSetType, dataSetAbsent)
	return PDV{ContextID: 3, Command: true, Last: true, Data: c.Encode()}
}

func cancelPDV(msgID uint16) PDV {
	c := NewCommand()
	c.SetUint16(elCommandField, CommandCCancelRQ)
	c.SetUint16(elMessageIDRespondedTo, msgID)
	c.SetUint16(elCommandDataSetType, dataSetAbsent)
	return PDV{ContextID: 1, Command: true, Last: true, Data: c.Encode()}
}

// sendPDVs writes pdvs in one P-DATA-TF.
func sendPDVs(t *testing.T, nc net.Conn, pdvs ...PDV) {
	t.Helper()
	var body []byte
	for _, v := range pdvs {
		body = append(body, appendPData(nil, v)[6:]...) // each without its P-DATA-TF header
	}
	if _, err := nc.Write(append(appendPDUHeader(nil, pduPData, len(body)), body...)); err != nil {
		t.Fatal(err)
	}
}

// nextResponse reads the next command the server sends (skipping
// identifiers); it fails the test on anything but P-DATA.
func nextResponse(t *testing.T, c *conn) *Command {
	t.Helper()
	for {
		typ, body, err := c.readPDU(10 * time.Second)
		if err != nil || typ != pduPData {
			t.Fatalf("waiting for a response: PDU type 0x%02X, %v", typ, err)
		}
		pdvs, err := decodePData(body, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range pdvs {
			if v.Command {
				cmd, err := DecodeCommand(v.Data)
				if err != nil {
					t.Fatal(err)
				}
				return cmd
			}
		}
	}
}

// finalMoveResponse reads C-MOVE responses of msgID up to the final one.
func finalMoveResponse(t *testing.T, c *conn, msgID uint16) *Command {
	t.Helper()
	for {
		cmd := nextResponse(t, c)
		if cmd.Field() != CommandCMoveRSP {
			t.Fatalf("response %04X, want a C-MOVE-RSP", cmd.Field())
		}
		if id, _ := cmd.Uint16(elMessageIDRespondedTo); id != msgID {
			t.Fatalf("C-MOVE-RSP to message %d, want %d", id, msgID)
		}
		if st, _ := cmd.Uint16(elStatus); Status(st) != StatusPending {
			return cmd
		}
	}
}

func counts(cmd *Command) (status Status, remaining, completed, failed int, hasRemaining bool) {
	st, _ := cmd.Uint16(elStatus)
	r, hasRemaining := cmd.Uint16(elRemainingSubOps)
	cp, _ := cmd.Uint16(elCompletedSubOps)
	f, _ := cmd.Uint16(elFailedSubOps)
	return Status(st), int(r), int(cp), int(f), hasRemaining
}

// TestMoveCancel: a C-CANCEL-RQ of another message ID, or on another
// presentation context, is ignored; the move's own stops it before the
// next C-STORE, the one under way finishing: FE00, Remaining the instances
// never begun, Completed every one the destination began. A cancel after
// the final response is swallowed and the association goes on (an echo is
// answered).
func TestMoveCancel(t *testing.T) {
	noGoroutineLeak(t)
	const n = 12
	r := moveServers(t, n, nil)
	nc, c := moveCaller(t, r.src)
	sendPDVs(t, nc, movePDVs(1)...)
	r.waitBegan(t) // the first C-STORE is under way
	sendPDVs(t, nc, cancelPDV(9))
	other := cancelPDV(1)
	other.ContextID = 3
	sendPDVs(t, nc, other)
	r.waitBegan(t) // the second: neither cancel stopped the move
	sendPDVs(t, nc, cancelPDV(1))
	r.drain()
	status, remaining, completed, failed, hasRemaining := counts(finalMoveResponse(t, c, 1))
	if status != StatusCancel || !hasRemaining || remaining == 0 || failed != 0 || remaining+completed != n || completed < 2 {
		t.Errorf("final response %s: remaining %d (sent %v), completed %d, failed %d; want Cancel, some remaining, %d in all, at least 2 completed",
			status, remaining, hasRemaining, completed, failed, n)
	}
	if !r.settled(completed) {
		t.Errorf("the destination began %d C-STOREs, %d completed: a C-STORE begun was cut short or not counted", r.begun.Load(), completed)
	}
	// Every C-STORE begun had its answer: the destination's association
	// was released, not aborted.
	if _, sums := r.dst.waitAudits(t, 1); len(sums) == 0 || sums[0].Ended != "released" {
		t.Errorf("the destination's associations ended %+v, want one released", sums)
	}
	sendPDVs(t, nc, cancelPDV(1))
	sendPDVs(t, nc, echoPDV(2))
	if rsp := nextResponse(t, c); rsp.Field() != CommandCEchoRSP {
		t.Errorf("after a late cancel: response %04X, want a C-ECHO-RSP", rsp.Field())
	}
}

// TestMovePipelinedInOnePDU: PDVs after a C-MOVE's identifier in the same
// P-DATA-TF (another C-MOVE, an echo) are answered in order after the
// move, unharmed by the PDU the move's watch reads meanwhile (an echo as
// long as the first PDU, read into the buffer those PDVs were in before
// the watch got a buffer of its own), and that echo is answered after
// them: the second move, pipelined, gets no second reader.
func TestMovePipelinedInOnePDU(t *testing.T) {
	noGoroutineLeak(t)
	r := moveServers(t, 1, nil)
	nc, c := moveCaller(t, r.src)
	first := append(append(movePDVs(1), movePDVs(2)...), echoPDV(3))
	sendPDVs(t, nc, first...)
	r.waitBegan(t)
	size := 0
	for _, v := range first {
		size += 6 + len(v.Data)
	}
	sendPDVs(t, nc, paddedEchoPDV(t, 4, size-6))
	r.drain()
	for _, id := range []uint16{1, 2} {
		if status, _, completed, _, _ := counts(finalMoveResponse(t, c, id)); status != StatusSuccess || completed != 1 {
			t.Errorf("move %d: %s, %d completed; want Success, 1", id, status, completed)
		}
	}
	for _, id := range []uint16{3, 4} {
		rsp := nextResponse(t, c)
		if got, _ := rsp.Uint16(elMessageIDRespondedTo); rsp.Field() != CommandCEchoRSP || got != id {
			t.Errorf("response %04X to message %d, want the C-ECHO-RSP to %d", rsp.Field(), got, id)
		}
	}
}

// TestMovePipelinedSlowSecond: a second C-MOVE pipelined behind the first
// is watched by the first's watch, re-armed: a second move longer than the
// idle time does not end the association for idleness.
func TestMovePipelinedSlowSecond(t *testing.T) {
	noGoroutineLeak(t)
	r := moveServers(t, 1, func(s *Server) { s.IdleTimeout = time.Second })
	nc, c := moveCaller(t, r.src)
	sendPDVs(t, nc, append(append(movePDVs(1), movePDVs(2)...), echoPDV(3))...)
	r.waitBegan(t)
	if status, _, _, _, _ := counts(finalMoveResponse(t, c, 1)); status != StatusSuccess {
		t.Fatalf("move 1: %s", status)
	}
	time.Sleep(1500 * time.Millisecond) // the second move's C-STORE is held past the idle time
	r.drain()
	if status, _, _, _, _ := counts(finalMoveResponse(t, c, 2)); status != StatusSuccess {
		t.Errorf("move 2: %s", status)
	}
	// The association goes on: the pipelined echo, then one sent now.
	for _, id := range []uint16{3, 4} {
		if id == 4 {
			sendPDVs(t, nc, echoPDV(4))
		}
		if rsp := nextResponse(t, c); rsp.Field() != CommandCEchoRSP {
			t.Errorf("response %04X, want the C-ECHO-RSP to %d", rsp.Field(), id)
		}
	}
}

// paddedEchoPDV is echoPDV(msgID) whose command set is size bytes long
// (an Error Comment pads it; a C-ECHO-RQ's extra element is ignored).
func paddedEchoPDV(t *testing.T, msgID uint16, size int) PDV {
	t.Helper()
	base := len(echoPDV(msgID).Data)
	pad := size - base - 8 // the element's header
	if pad < 0 || pad%2 != 0 {
		t.Fatalf("cannot pad a %d-byte echo to %d bytes", base, size)
	}
	c := NewCommand()
	c.SetString(elAffectedSOPClassUID, VerificationSOPClass, true)
	c.SetUint16(elCommandField, CommandCEchoRQ)
	c.SetUint16(elMessageID, msgID)
	c.SetUint16(elCommandDataSetType, dataSetAbsent)
	c.SetString(elErrorComment, strings.Repeat("x", pad), false)
	v := PDV{ContextID: 3, Command: true, Last: true, Data: c.Encode()}
	if len(v.Data) != size {
		t.Fatalf("padded echo of %d bytes, want %d", len(v.Data), size)
	}
	return v
}

// TestMoveThenIdle: after a move the association waits for its next PDU
// no longer than the server's idle time, as without one.
func TestMoveThenIdle(t *testing.T) {
	noGoroutineLeak(t)
	r := moveServers(t, 1, func(s *Server) { s.IdleTimeout = time.Second })
	nc, c := moveCaller(t, r.src)
	sendPDVs(t, nc, movePDVs(1)...)
	r.drain()
	if status, _, _, _, _ := counts(finalMoveResponse(t, c, 1)); status != StatusSuccess {
		t.Fatalf("move: %s", status)
	}
	if typ, _, err := c.readPDU(10 * time.Second); err != nil || typ != pduAbort {
		t.Errorf("after the move and 1 s idle: PDU type 0x%02X, %v; want an A-ABORT", typ, err)
	}
}

// TestMoveCallerAborts: an A-ABORT mid-move stops the sub-operations: of
// six instances, at most the one under way when the abort was read
// reaches the destination, and nothing is left running.
func TestMoveCallerAborts(t *testing.T) {
	noGoroutineLeak(t)
	const n = 6
	r := moveServers(t, n, nil)
	nc, _ := moveCaller(t, r.src)
	sendPDVs(t, nc, movePDVs(1)...)
	if _, err := nc.Write(encodeAbort(0, 0)); err != nil {
		t.Fatal(err)
	}
	stores := 0
	for wait := time.After(3 * time.Second); ; {
		select {
		case <-r.began:
			stores++
			continue
		case <-wait:
		}
		break
	}
	if stores > 1 {
		t.Errorf("%d of %d C-STOREs began after the caller aborted the move", stores, n)
	}
}

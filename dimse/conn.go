package dimse

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// maxAssociatePDU bounds an A-ASSOCIATE-RQ or -AC: 128 presentation
// contexts of one abstract syntax and a dozen transfer syntaxes each is
// about 100 KiB; anything longer is not a real peer.
const maxAssociatePDU = 256 << 10

// conn reads and writes PDUs on one TCP connection, bounding what it reads
// by length and time. One goroutine may read while another writes (a
// C-MOVE's responses go out while moveWatch reads the caller's PDUs);
// never two readers or two writers at once.
type conn struct {
	nc net.Conn
	br *bufio.Reader
	// maxPData is the longest P-DATA-TF accepted: the Maximum Length this
	// end announced (PS3.8 D.1), plus its 6-byte header.
	maxPData uint32
	// pduTimeout bounds the arrival of a PDU's body once its header is in,
	// and the sending of one PDU.
	pduTimeout time.Duration
	buf        []byte
	hdr        [6]byte
}

func newConn(nc net.Conn, maxPData uint32, pduTimeout time.Duration) *conn {
	return &conn{nc: nc, br: bufio.NewReaderSize(nc, 64<<10), maxPData: maxPData, pduTimeout: pduTimeout}
}

// readPDU waits up to wait for the next PDU header, then up to pduTimeout
// for its body, which it returns in a buffer reused by the next call.
func (c *conn) readPDU(wait time.Duration) (typ byte, body []byte, err error) {
	if err := c.nc.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return 0, nil, err
	}
	return c.readPDUByDeadline()
}

// readPDUByDeadline is readPDU with the header's deadline already set on
// the connection (moveWatch sets it under its lock).
func (c *conn) readPDUByDeadline() (typ byte, body []byte, err error) {
	h, err := readPDUHeader(c.br, c.hdr[:])
	if err != nil {
		return 0, nil, err
	}
	var limit uint32
	switch h.Type {
	case pduAssociateRQ, pduAssociateAC:
		limit = maxAssociatePDU
	case pduPData:
		limit = c.maxPData
	case pduAssociateRJ, pduReleaseRQ, pduReleaseRP, pduAbort:
		if h.Length != 4 {
			return h.Type, nil, malformed("PDU type 0x%02X of length %d (must be 4)", h.Type, h.Length)
		}
		limit = 4
	default:
		return h.Type, nil, malformed("unknown PDU type 0x%02X", h.Type)
	}
	if h.Length > limit {
		return h.Type, nil, fmt.Errorf("PDU type 0x%02X of %d bytes, the limit is %d: %w", h.Type, h.Length, limit, ErrTooLarge)
	}
	if err := c.nc.SetReadDeadline(time.Now().Add(c.pduTimeout)); err != nil {
		return 0, nil, err
	}
	if cap(c.buf) < int(h.Length) {
		c.buf = make([]byte, h.Length)
	}
	body = c.buf[:h.Length]
	if _, err := io.ReadFull(c.br, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return h.Type, nil, fmt.Errorf("PDU type 0x%02X of %d bytes cut short: %w", h.Type, h.Length, err)
	}
	return h.Type, body, nil
}

// write sends b within pduTimeout, so a peer that stops reading cannot
// hold this end.
func (c *conn) write(b []byte) error {
	if err := c.nc.SetWriteDeadline(time.Now().Add(c.pduTimeout)); err != nil {
		return err
	}
	_, err := c.nc.Write(b)
	return err
}

// abort sends an A-ABORT (best effort: the peer may be gone) and closes.
func (c *conn) abort(source, reason byte) {
	_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.nc.Write(encodeAbort(source, reason))
	_ = c.nc.Close()
}

// awaitClose waits up to artim for the peer to close the connection (PS3.8
// 9.1.5, after A-ASSOCIATE-RJ or A-RELEASE-RP), then closes it anyway.
func (c *conn) awaitClose(artim time.Duration) {
	_ = c.nc.SetReadDeadline(time.Now().Add(artim))
	_, _ = io.Copy(io.Discard, io.LimitReader(c.br, 1<<20))
	_ = c.nc.Close()
}

// sender fragments messages into P-DATA-TF PDUs no longer than the peer's
// Maximum Length.
type sender struct {
	c *conn
	// maxPDV is the longest PDV value (data) one PDU may carry.
	maxPDV int
	buf    []byte
}

func newSender(c *conn, peerMax uint32) *sender {
	// A peer's Maximum Length is the length of the PDU body it accepts
	// (PS3.8 D.1.1); 0 means unlimited, which we still cut to our own
	// default so a PDU is never the size of a whole instance.
	n := peerMax
	if n == 0 || n > defaultMaxPDULength {
		n = defaultMaxPDULength
	}
	maxPDV := int(n) - pdvHeaderLength
	if maxPDV < 1 {
		maxPDV = 1
	}
	return &sender{c: c, maxPDV: maxPDV}
}

// sendCommand sends a command set, fragmented.
func (s *sender) sendCommand(ctxID byte, cmd *Command) error {
	b := cmd.Encode()
	for {
		n := min(len(b), s.maxPDV)
		if err := s.sendPDV(PDV{ContextID: ctxID, Command: true, Last: n == len(b), Data: b[:n]}); err != nil {
			return err
		}
		b = b[n:]
		if len(b) == 0 {
			return nil
		}
	}
}

func (s *sender) sendPDV(v PDV) error {
	s.buf = appendPData(s.buf[:0], v)
	return s.c.write(s.buf)
}

// sendDataSet streams r as dataset PDVs, the last one flagged, and returns
// the bytes sent. It reads one PDV ahead so the last fragment is known
// before it is sent.
func (s *sender) sendDataSet(ctxID byte, r io.Reader) (int64, error) {
	cur := make([]byte, s.maxPDV)
	next := make([]byte, s.maxPDV)
	n, err := io.ReadFull(r, cur)
	var total int64
	for {
		switch {
		case err == nil:
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			// cur[:n] is the last fragment (possibly empty).
			if serr := s.sendPDV(PDV{ContextID: ctxID, Last: true, Data: cur[:n]}); serr != nil {
				return total, serr
			}
			return total + int64(n), nil
		default:
			return total, err
		}
		m, nerr := io.ReadFull(r, next)
		if m == 0 && errors.Is(nerr, io.EOF) {
			if serr := s.sendPDV(PDV{ContextID: ctxID, Last: true, Data: cur[:n]}); serr != nil {
				return total, serr
			}
			return total + int64(n), nil
		}
		if nerr != nil && !errors.Is(nerr, io.EOF) && !errors.Is(nerr, io.ErrUnexpectedEOF) {
			return total, nerr
		}
		if serr := s.sendPDV(PDV{ContextID: ctxID, Data: cur[:n]}); serr != nil {
			return total, serr
		}
		total += int64(n)
		cur, next = next, cur
		n, err = m, nerr
	}
}

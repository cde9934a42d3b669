package dimse

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// Caller is who opened an association, as the Store sees it.
type Caller struct {
	AETitle       string // calling AE title: the actor of the audit
	CalledAE      string
	Address       string // the peer's IP address
	Roles         []gateway.Role
	AssociationID string // random, to match log lines of one association
}

// Principal is the caller as the gateway's audit and ingest know callers:
// named by its calling AE title.
func (c Caller) Principal() gateway.Principal {
	return gateway.Principal{Name: c.AETitle, Roles: c.Roles, Address: c.Address, Method: "dimse"}
}

// Store is what the C-STORE SCP hands received instances to: the
// gateway's store service (the one STOW-RS uses), through a thin adapter
// in cmd/gateway.
type Store interface {
	// AcceptsTransferSyntax reports whether a dataset in this transfer
	// syntax can be stored: only such syntaxes are accepted in
	// presentation contexts.
	AcceptsTransferSyntax(uid string) bool
	// Open begins the stores of one association (at its first C-STORE);
	// its StoreSession ends when the association does.
	Open(ctx context.Context, c Caller) (StoreSession, error)
}

// StoreSession stores one association's instances, one at a time, each
// from a goroutine of its own but never two at once.
type StoreSession interface {
	// Store reads one DICOM Part 10 instance from r (the File Meta
	// Information this package writes, then the dataset as the peer sent
	// it) and returns once it is durable and indexed, or refused: the
	// stored record (the existing one for an identical resend), or a
	// *gateway.InstanceError carrying the failure reason StatusOf maps to
	// a DIMSE status. A read error from r (the association ended) is
	// returned as it is. sopClassUID and sopInstanceUID are the command's
	// Affected SOP Class and Instance UIDs: a dataset naming another
	// instance or class is refused (A900), since the answer is about the
	// instance the command names.
	Store(r io.Reader, sopClassUID, sopInstanceUID string) (*gateway.InstanceRecord, error)
	// Close ends the session and records it in the audit log; s says how
	// the association ended. An error is logged.
	Close(s Summary) error
}

// Summary is what one association stored, for the log and the audit.
type Summary struct {
	Stored, Failed int
	Bytes          int64
	StudyUIDs      []string
	PatientIDs     []string
	// FailureStatuses counts refused instances by DIMSE status, "0xA700".
	FailureStatuses map[string]int
	// Ended says how: "released", "aborted by peer", or the error.
	Ended string
}

// maxSummaryUIDs bounds the study UIDs and patient IDs one audit event
// lists, so a very long association cannot grow them without limit.
const maxSummaryUIDs = 1000

// Server is a DICOM upper layer listener: it negotiates associations with
// the callers Access admits and serves C-ECHO and C-STORE. Fill the fields,
// call Listen, and Close to stop.
type Server struct {
	AETitle string // the called AE title this server answers to
	Store   Store
	// Finder, when set, answers C-FIND (Study and Patient Root, STUDY,
	// SERIES and IMAGE levels) for callers with the read role.
	Finder Finder
	// Commitments, when set, takes storage commitment reports (N-EVENT-
	// REPORT) that a peer sends on an association of its own, for the
	// Sender waiting for them.
	Commitments *Commitments
	// Mover and MoveSender, when set, answer C-MOVE (Study and Patient
	// Root) for callers with the read role: the instances go by C-STORE
	// to the DIMSE peer named by the Move Destination.
	Mover      Mover
	MoveSender *Sender
	Access     *Access // nil admits nobody
	// MaxAssociations bounds concurrent associations (default 32); a caller
	// beyond it is rejected (transient, local limit exceeded), and
	// connections beyond twice it are closed at once.
	MaxAssociations int
	// MaxPDULength is the Maximum Length announced to callers: the longest
	// P-DATA-TF accepted (default 256 KiB, at least 4096).
	MaxPDULength uint32
	// ARTIM bounds the wait for the A-ASSOCIATE-RQ after a connection is
	// accepted and for the peer to close after a reject or release (default
	// 30 s). IdleTimeout bounds the wait for the next PDU of an association
	// (default 5 min), PDUTimeout the arrival of one PDU's body once its
	// header is in, and the sending of one PDU (default 60 s).
	ARTIM, IdleTimeout, PDUTimeout time.Duration
	Logger                         *slog.Logger

	mu       sync.Mutex
	lns      []net.Listener
	conns    map[net.Conn]bool // value: waiting for the next PDU (idle)
	wg       sync.WaitGroup
	slots    chan struct{} // one per admitted association
	overflow chan struct{} // connections only told "local limit exceeded"
	ctx      context.Context
	cancel   context.CancelFunc
	closed   bool
}

func (s *Server) maxAssociations() int { return cmpOr(s.MaxAssociations, 32) }
func (s *Server) maxPDU() uint32 {
	n := s.MaxPDULength
	if n == 0 {
		n = defaultMaxPDULength
	}
	return max(n, 4096)
}
func (s *Server) artim() time.Duration      { return cmpOr(s.ARTIM, 30*time.Second) }
func (s *Server) idle() time.Duration       { return cmpOr(s.IdleTimeout, 5*time.Minute) }
func (s *Server) pduTimeout() time.Duration { return cmpOr(s.PDUTimeout, 60*time.Second) }
func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Listen binds addr and starts accepting associations; a bind error is
// returned at once.
func (s *Server) Listen(addr string) error {
	_, err := s.listen(addr, nil)
	return err
}

// ListenTLS binds addr for associations over TLS with conf (PS3.15 B.1: on
// a port of its own) and returns the address bound. The handshake is part
// of the wait for the association request, so ARTIM bounds it.
func (s *Server) ListenTLS(addr string, conf *tls.Config) (net.Addr, error) {
	if conf == nil {
		return nil, errors.New("dimse: ListenTLS without a TLS configuration")
	}
	return s.listen(addr, conf)
}

func (s *Server) listen(addr string, conf *tls.Config) (net.Addr, error) {
	if err := ValidateAETitle(s.AETitle); err != nil {
		return nil, fmt.Errorf("--dicom-ae-title: %w", err)
	}
	if s.Store == nil {
		return nil, errors.New("dimse: Server.Store is required")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if conf != nil {
		ln = tls.NewListener(ln, conf)
	}
	s.Serve(ln)
	return ln.Addr(), nil
}

// Serve starts accepting associations on ln in the background; a Server
// may serve several listeners (plain and TLS), sharing its limits.
func (s *Server) Serve(ln net.Listener) {
	s.mu.Lock()
	if s.conns == nil {
		s.conns = map[net.Conn]bool{}
		s.slots = make(chan struct{}, s.maxAssociations())
		s.overflow = make(chan struct{}, s.maxAssociations())
		s.ctx, s.cancel = context.WithCancel(context.Background())
	}
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.accept(ln)
	}()
}

// Addr is the address of the first listener.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.lns) == 0 {
		return nil
	}
	return s.lns[0].Addr()
}

// Close stops accepting, lets running associations finish until ctx ends,
// then aborts them (an instance being received is then not stored) and
// waits for every goroutine.
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed || len(s.lns) == 0 {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	var errs []error
	for _, ln := range s.lns {
		errs = append(errs, ln.Close())
	}
	err := errors.Join(errs...)
	// Idle associations lose nothing by ending now; those in the middle
	// of a message finish it (markIdle ends them before the next wait).
	for c, idle := range s.conns {
		if idle {
			_ = c.SetReadDeadline(time.Now())
		}
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.cancel()
		s.mu.Lock()
		for c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		<-done
	}
	s.cancel()
	return err
}

func (s *Server) accept(ln net.Listener) {
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.logger().Warn("dicom accept failed; retrying", "error", err.Error(), "delay", delay.String())
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		admitted := false
		select {
		case s.slots <- struct{}{}:
			admitted = true
		default:
			select {
			case s.overflow <- struct{}{}:
			default:
				_ = nc.Close() // beyond twice the limit: not even a reject
				continue
			}
		}
		if !s.track(nc) {
			_ = nc.Close()
			s.release(admitted)
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.release(admitted)
			defer s.untrack(nc)
			s.serveConn(nc, admitted)
		}()
	}
}

func (s *Server) release(admitted bool) {
	if admitted {
		<-s.slots
	} else {
		<-s.overflow
	}
}

func (s *Server) track(nc net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[nc] = false
	return true
}

// markIdle records whether an association waits for its next PDU; it
// returns false once the server is closing, so the association ends
// instead of waiting.
func (s *Server) markIdle(nc net.Conn, idle bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[nc]; ok {
		s.conns[nc] = idle
	}
	return !s.closed || !idle
}

func (s *Server) closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) untrack(nc net.Conn) {
	s.mu.Lock()
	delete(s.conns, nc)
	s.mu.Unlock()
	_ = nc.Close()
}

// peerCertificate is the certificate a TLS caller presented and the
// handshake verified (it ended before the association request could be
// read), or nil: a certificate no chain verified names nobody.
func peerCertificate(nc net.Conn) *x509.Certificate {
	tc, ok := nc.(*tls.Conn)
	if !ok {
		return nil
	}
	if chains := tc.ConnectionState().VerifiedChains; len(chains) > 0 && len(chains[0]) > 0 {
		return chains[0][0]
	}
	return nil
}

func newAssociationID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// serveConn runs one connection: association negotiation, then messages
// until release or abort.
func (s *Server) serveConn(nc net.Conn, admitted bool) {
	c := newConn(nc, s.maxPDU(), s.pduTimeout())
	addr := remoteAddr(nc)
	id := newAssociationID()
	log := s.logger().With("remote", addr.String(), "association", id)
	typ, body, err := c.readPDU(s.artim())
	if err != nil {
		log.Info("dicom connection closed before an association request", "error", err.Error())
		if errors.Is(err, ErrMalformed) || errors.Is(err, ErrTooLarge) {
			c.abort(AbortSourceProvider, AbortReasonUnrecognizedPDU)
		}
		return
	}
	if typ != pduAssociateRQ {
		log.Info("dicom connection did not start with an A-ASSOCIATE-RQ", "pdu_type", int(typ))
		c.abort(AbortSourceProvider, AbortReasonUnexpectedPDU)
		return
	}
	rq, err := decodeAssociate(pduAssociateRQ, body)
	if err != nil {
		log.Info("malformed association request", "error", err.Error())
		c.abort(AbortSourceProvider, AbortReasonInvalidParamValue)
		return
	}
	caller := Caller{AETitle: rq.CallingAE, CalledAE: rq.CalledAE, Address: addr.String(), AssociationID: id}
	log = log.With("calling_ae", rq.CallingAE)
	reject := func(rj *RejectError) {
		log.Info("association rejected", "called_ae", rq.CalledAE, "reason", rejectReasonText(rj.Source, rj.Reason))
		if err := c.write(encodeReject(rj)); err == nil {
			c.awaitClose(s.artim())
		}
	}
	switch {
	case !admitted:
		reject(&RejectError{Result: RejectTransient, Source: SourceServiceProviderPresentn, Reason: ReasonLocalLimitExceeded})
		return
	case rq.ProtocolVersion&1 == 0:
		reject(&RejectError{Result: RejectPermanent, Source: SourceServiceProviderACSE, Reason: ReasonProtocolVersion})
		return
	case rq.ApplicationContext != ApplicationContext:
		reject(&RejectError{Result: RejectPermanent, Source: SourceServiceUser, Reason: ReasonAppContextNotSupported})
		return
	case rq.CalledAE != s.AETitle:
		reject(&RejectError{Result: RejectPermanent, Source: SourceServiceUser, Reason: ReasonCalledAENotRecognized})
		return
	}
	roles, rj := s.Access.admit(rq.CallingAE, addr, peerCertificate(nc))
	if rj != nil {
		reject(rj)
		return
	}
	caller.Roles = roles
	ac := &AssociateRQ{
		CalledAE: rq.CalledAE, CallingAE: rq.CallingAE, ApplicationContext: ApplicationContext,
		MaxPDULength: s.maxPDU(), ImplementationUID: ImplementationClassUID, ImplementationVersion: ImplementationVersion,
	}
	contexts := map[byte]PresentationContext{}
	proposedSCP := map[string]bool{}
	for _, r := range rq.Roles {
		proposedSCP[r.SOPClass] = r.SCP
	}
	for _, pc := range rq.Contexts {
		ans := s.negotiate(pc, caller)
		if pc.AbstractSyntax == StorageCommitmentClass && ans.Result == ResultAcceptance {
			// Only a peer reporting commitments (as SCP) is served: this
			// gateway commits nothing itself.
			if !proposedSCP[StorageCommitmentClass] {
				ans.Result = ResultUserRejection
			} else if !slices.ContainsFunc(ac.Roles, func(r RoleSelection) bool { return r.SOPClass == StorageCommitmentClass }) {
				ac.Roles = append(ac.Roles, RoleSelection{SOPClass: StorageCommitmentClass, SCP: true})
			}
		}
		ac.Contexts = append(ac.Contexts, ans)
		if ans.Result == ResultAcceptance {
			contexts[pc.ID] = PresentationContext{ID: pc.ID, AbstractSyntax: pc.AbstractSyntax, TransferSyntax: ans.TransferSyntax}
		}
	}
	if err := c.write(encodeAssociate(pduAssociateAC, ac)); err != nil {
		log.Info("association accept not sent", "error", err.Error())
		return
	}
	log.Info("association accepted", "contexts_proposed", len(rq.Contexts), "contexts_accepted", len(contexts), "peer_max_pdu", rq.MaxPDULength)
	a := &association{s: s, c: c, out: newSender(c, rq.MaxPDULength), caller: caller, contexts: contexts, log: log}
	a.run()
}

// negotiate answers one proposed presentation context: Verification with
// a default syntax, a storage class with the first proposed syntax the
// ingest reads (the proposer's order is its preference, PS3.8 9.3.2.2),
// so a dataset arrives in the syntax it was made in whenever the proposer
// offers it.
func (s *Server) negotiate(pc PresentationContext, caller Caller) PresentationContext {
	ans := PresentationContext{ID: pc.ID, TransferSyntax: []string{pc.TransferSyntax[0]}}
	refuse := func(result byte) PresentationContext {
		ans.Result = result
		return ans
	}
	// choose accepts the first proposed syntax that accepts(ts) allows.
	choose := func(accepts func(ts string) bool) PresentationContext {
		for _, ts := range pc.TransferSyntax {
			if accepts(ts) {
				ans.TransferSyntax = []string{ts}
				return ans
			}
		}
		return refuse(ResultTransferSyntaxNotSupported)
	}
	// Commands and identifiers (echo, find, move, commitment) are only
	// ever exchanged in the two uncompressed little-endian syntaxes.
	littleEndian := func(ts string) bool { return ts == ImplicitVRLittleEndian || ts == ExplicitVRLittleEndian }
	switch {
	case pc.AbstractSyntax == VerificationSOPClass:
		return choose(littleEndian)
	case pc.AbstractSyntax == StudyRootFind || pc.AbstractSyntax == PatientRootFind:
		if s.Finder == nil {
			return refuse(ResultAbstractSyntaxNotSupported)
		}
		if !caller.Principal().Has(gateway.RoleRead) {
			return refuse(ResultUserRejection)
		}
		return choose(littleEndian)
	case pc.AbstractSyntax == StudyRootMove || pc.AbstractSyntax == PatientRootMove:
		if s.Mover == nil || s.MoveSender == nil {
			return refuse(ResultAbstractSyntaxNotSupported)
		}
		if !caller.Principal().Has(gateway.RoleRead) {
			return refuse(ResultUserRejection)
		}
		return choose(littleEndian)
	case pc.AbstractSyntax == StorageCommitmentClass:
		if s.Commitments == nil {
			return refuse(ResultAbstractSyntaxNotSupported)
		}
		return choose(littleEndian)
	case IsStorageSOPClass(pc.AbstractSyntax):
		if !caller.Principal().Has(gateway.RoleStore) {
			return refuse(ResultUserRejection)
		}
		return choose(s.Store.AcceptsTransferSyntax)
	}
	return refuse(ResultAbstractSyntaxNotSupported)
}

func remoteAddr(nc net.Conn) netip.Addr {
	if ta, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		if ap := ta.AddrPort(); ap.IsValid() {
			return ap.Addr().Unmap()
		}
	}
	return netip.Addr{}
}

// errAssociationEnded is what an unfinished instance's reader returns when
// the association ends under it.
var errAssociationEnded = errors.New("association ended before the last dataset fragment")

// association is one accepted association, served by one goroutine.
type association struct {
	s        *Server
	c        *conn
	out      *sender
	caller   Caller
	contexts map[byte]PresentationContext
	log      *slog.Logger

	cmdBuf  []byte
	cmdCtx  byte
	pdvs    []PDV
	pending *incoming // the request whose dataset is arriving
	summary Summary
	session StoreSession // opened at the first C-STORE
	closed  bool
	// watch read the connection during a C-MOVE; its last read is the
	// loop's next (readPDU).
	watch *moveWatch
}

// readPDU is the association's next PDU: the one a C-MOVE's watch read
// and handed over, else the next on the connection, waiting up to the
// server's idle time.
func (a *association) readPDU() (byte, []byte, error) {
	if w := a.watch; w != nil {
		a.watch = nil
		r := <-w.next
		return r.typ, r.body, r.err
	}
	return a.c.readPDU(a.s.idle())
}

// incoming is a request whose dataset is arriving: a C-STORE's, piped to
// the Store, or a C-FIND's identifier, collected.
type incoming struct {
	ctxID       byte
	cmd         *Command
	pw          *io.PipeWriter
	done        chan storeOutcome
	discarding  bool   // the Store ended early: read and drop the rest
	refuseFirst Status // refused before storing (the dataset is drained)
	find        bool   // a C-FIND: the identifier is collected in ident
	report      bool   // an N-EVENT-REPORT: its dataset is collected in ident
	move        bool   // a C-MOVE: the identifier is collected in ident
	ident       []byte
}

type storeOutcome struct {
	rec *gateway.InstanceRecord
	err error
}

func (a *association) run() {
	ended := "released"
	defer func() {
		if a.pending != nil && a.pending.done != nil {
			// Unblock and wait for the Store: its instance is not stored.
			a.pending.pw.CloseWithError(errAssociationEnded)
			o := <-a.pending.done
			a.record(StatusProcessingFailure, o.rec)
		}
		a.audit(ended)
	}()
	for {
		// Between messages the association is idle: a closing server ends
		// it. In the middle of one, the message is let finish.
		if !a.s.markIdle(a.c.nc, a.pending == nil && len(a.cmdBuf) == 0) {
			ended = "gateway shutting down"
			a.log.Info("association aborted: gateway shutting down")
			a.c.abort(AbortSourceProvider, AbortReasonNotSpecified)
			return
		}
		typ, body, err := a.readPDU()
		a.s.markIdle(a.c.nc, false)
		if err != nil {
			ended = err.Error()
			switch {
			case a.s.closing() && isTimeout(err):
				ended = "gateway shutting down"
				a.log.Info("association aborted: gateway shutting down")
				a.c.abort(AbortSourceProvider, AbortReasonNotSpecified)
			case errors.Is(err, ErrMalformed), errors.Is(err, ErrTooLarge):
				a.log.Warn("association aborted: bad PDU", "error", err.Error())
				a.c.abort(AbortSourceProvider, AbortReasonInvalidParamValue)
			case isTimeout(err):
				a.log.Warn("association aborted: peer idle or too slow", "error", err.Error())
				a.c.abort(AbortSourceProvider, AbortReasonNotSpecified)
			default:
				a.log.Info("association connection lost", "error", err.Error())
			}
			return
		}
		switch typ {
		case pduPData:
			if err := a.pdata(body); err != nil {
				ended = err.Error()
				a.log.Warn("association aborted", "error", err.Error())
				a.c.abort(AbortSourceProvider, AbortReasonInvalidParamValue)
				return
			}
		case pduReleaseRQ:
			if a.pending != nil || len(a.cmdBuf) > 0 {
				ended = "release requested in the middle of a message"
				a.log.Warn("association aborted: release in the middle of a message")
				a.c.abort(AbortSourceProvider, AbortReasonUnexpectedPDU)
				return
			}
			// Audited before the peer is told the association is over.
			a.audit("released")
			if err := a.c.write(encodeRelease(pduReleaseRP)); err == nil {
				a.c.awaitClose(a.s.artim())
			}
			a.log.Info("association released", "stored", a.summary.Stored, "failed", a.summary.Failed)
			return
		case pduAbort:
			ended = "aborted by peer"
			a.log.Info("association aborted by peer", "stored", a.summary.Stored, "failed", a.summary.Failed)
			return
		default:
			ended = fmt.Sprintf("unexpected PDU type 0x%02X", typ)
			a.log.Warn("association aborted: unexpected PDU", "pdu_type", int(typ))
			a.c.abort(AbortSourceProvider, AbortReasonUnexpectedPDU)
			return
		}
	}
}

// audit ends the association's store session once, which records it in
// the audit log.
func (a *association) audit(ended string) {
	if a.closed || a.session == nil {
		return
	}
	a.closed = true
	a.summary.Ended = ended
	if err := a.session.Close(a.summary); err != nil {
		a.log.Error("audit of a DICOM association not recorded", "error", err.Error())
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}

// pdata handles the PDVs of one P-DATA-TF; an error aborts the association.
func (a *association) pdata(body []byte) error {
	pdvs, err := decodePData(body, a.pdvs)
	if err != nil {
		return err
	}
	a.pdvs = pdvs
	for _, v := range pdvs {
		if _, ok := a.contexts[v.ContextID]; !ok {
			return malformed("PDV on presentation context %d, which was not accepted", v.ContextID)
		}
		if v.Command {
			if err := a.commandFragment(v); err != nil {
				return err
			}
			continue
		}
		if err := a.dataFragment(v); err != nil {
			return err
		}
	}
	return nil
}

func (a *association) commandFragment(v PDV) error {
	if a.pending != nil {
		return malformed("command fragment while a dataset is arriving")
	}
	if len(a.cmdBuf) > 0 && v.ContextID != a.cmdCtx {
		return malformed("command fragments on presentation contexts %d and %d", a.cmdCtx, v.ContextID)
	}
	if len(a.cmdBuf)+len(v.Data) > maxCommandBytes {
		return fmt.Errorf("command set longer than %d bytes: %w", maxCommandBytes, ErrTooLarge)
	}
	a.cmdCtx = v.ContextID
	a.cmdBuf = append(a.cmdBuf, v.Data...)
	if !v.Last {
		return nil
	}
	cmd, err := DecodeCommand(a.cmdBuf)
	a.cmdBuf = a.cmdBuf[:0]
	if err != nil {
		return err
	}
	return a.command(v.ContextID, cmd)
}

func (a *association) command(ctxID byte, cmd *Command) error {
	pc := a.contexts[ctxID]
	msgID, _ := cmd.Uint16(elMessageID)
	switch cmd.Field() {
	case CommandCEchoRQ:
		if cmd.HasDataSet() {
			return malformed("C-ECHO-RQ with a dataset")
		}
		return a.respond(ctxID, CommandCEchoRSP, msgID, VerificationSOPClass, "", StatusSuccess, "")
	case CommandCStoreRQ:
		if !cmd.HasDataSet() {
			return malformed("C-STORE-RQ without a dataset")
		}
		in := &incoming{ctxID: ctxID, cmd: cmd}
		a.pending = in
		sopClass := cmd.String(elAffectedSOPClassUID)
		sop := cmd.String(elAffectedSOPInstanceUID)
		switch {
		case !IsStorageSOPClass(pc.AbstractSyntax):
			in.refuseFirst = StatusSOPClassNotSupported
		case sopClass != pc.AbstractSyntax:
			// PS3.7 9.1.1.1.1: the Affected SOP Class is the context's.
			in.refuseFirst = StatusDataSetMismatch
		case gateway.ValidateUID(sop) != nil:
			in.refuseFirst = StatusCannotUnderstand
		}
		if in.refuseFirst != 0 {
			in.discarding = true
			return nil
		}
		if a.session == nil {
			session, err := a.s.Store.Open(a.s.ctx, a.caller)
			if err != nil {
				a.log.Warn("store session not opened", "error", err.Error())
				in.refuseFirst, in.discarding = StatusOutOfResources, true
				return nil
			}
			a.session = session
		}
		meta := FileMeta(sopClass, sop, pc.TransferSyntax[0], a.caller.AETitle)
		pr, pw := io.Pipe()
		in.pw = pw
		in.done = make(chan storeOutcome, 1)
		session := a.session
		go func() {
			rec, err := session.Store(io.MultiReader(meta, pr), sopClass, sop)
			// Unblock the association's writes whatever Store read.
			pr.CloseWithError(errStoreEnded)
			in.done <- storeOutcome{rec: rec, err: err}
		}()
		return nil
	case CommandCFindRQ:
		if !cmd.HasDataSet() {
			return malformed("C-FIND-RQ without an identifier")
		}
		in := &incoming{ctxID: ctxID, cmd: cmd, find: true}
		if pc.AbstractSyntax != StudyRootFind && pc.AbstractSyntax != PatientRootFind {
			in.find, in.discarding, in.refuseFirst = false, true, StatusSOPClassNotSupported
		}
		a.pending = in
		return nil
	case CommandCMoveRQ:
		if !cmd.HasDataSet() {
			return malformed("C-MOVE-RQ without an identifier")
		}
		in := &incoming{ctxID: ctxID, cmd: cmd, move: pc.AbstractSyntax == StudyRootMove || pc.AbstractSyntax == PatientRootMove}
		if !in.move {
			in.discarding, in.refuseFirst = true, StatusSOPClassNotSupported
		}
		a.pending = in
		return nil
	case CommandNEventReportRQ:
		if !cmd.HasDataSet() {
			return malformed("N-EVENT-REPORT-RQ without a dataset")
		}
		in := &incoming{ctxID: ctxID, cmd: cmd, report: pc.AbstractSyntax == StorageCommitmentClass}
		if !in.report {
			in.discarding, in.refuseFirst = true, StatusSOPClassNotSupported
		}
		a.pending = in
		return nil
	case CommandCCancelRQ:
		// A C-MOVE's cancel is read by its moveWatch while the move runs.
		// Every C-FIND is answered in full before the next PDU is read, so
		// any cancel here comes too late: PS3.7 9.3.2.3 says to ignore it.
		return nil
	default:
		// PS3.7 C.5.4: an operation this SCP does not perform.
		if cmd.HasDataSet() {
			a.pending = &incoming{ctxID: ctxID, cmd: cmd, discarding: true, refuseFirst: StatusUnrecognizedOperation}
			return nil
		}
		return a.respond(ctxID, cmd.Field()|0x8000, msgID, cmd.String(elAffectedSOPClassUID), "", StatusUnrecognizedOperation, "operation not supported")
	}
}

var errStoreEnded = errors.New("store ended before the dataset's end")

func (a *association) dataFragment(v PDV) error {
	in := a.pending
	if in == nil {
		return malformed("dataset fragment without a command")
	}
	if v.ContextID != in.ctxID {
		return malformed("dataset fragment on presentation context %d for a command on %d", v.ContextID, in.ctxID)
	}
	if in.find || in.report || in.move {
		limit := maxIdentifierBytes
		if in.report {
			limit = maxReportBytes
		}
		if len(in.ident)+len(v.Data) > limit {
			return fmt.Errorf("dataset of a C-FIND or N-EVENT-REPORT longer than %d bytes: %w", limit, ErrTooLarge)
		}
		in.ident = append(in.ident, v.Data...)
		if !v.Last {
			return nil
		}
		a.pending = nil
		switch {
		case in.report:
			return a.commitmentReport(in)
		case in.move:
			return a.move(in)
		}
		return a.find(in)
	}
	if !in.discarding && len(v.Data) > 0 {
		if _, err := in.pw.Write(v.Data); err != nil {
			in.discarding = true // the Store stopped reading: it has its answer
		}
	}
	if !v.Last {
		return nil
	}
	a.pending = nil
	msgID, _ := in.cmd.Uint16(elMessageID)
	sopClass, sop := in.cmd.String(elAffectedSOPClassUID), in.cmd.String(elAffectedSOPInstanceUID)
	if in.done == nil {
		a.summary.Failed++
		a.countFailure(in.refuseFirst)
		return a.respond(in.ctxID, in.cmd.Field()|0x8000, msgID, sopClass, sop, in.refuseFirst, "")
	}
	_ = in.pw.Close() // never fails: it tells the Store the dataset ended
	o := <-in.done
	status, comment := StatusOf(o.rec, o.err)
	a.record(status, o.rec)
	if !status.Success() && !status.Warning() {
		a.log.Info("C-STORE refused", gateway.LogKeySOPUID, sop, "status", status.String(), "error", errString(o.err))
	}
	return a.respond(in.ctxID, CommandCStoreRSP, msgID, sopClass, sop, status, comment)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (a *association) record(status Status, rec *gateway.InstanceRecord) {
	if (status.Success() || status.Warning()) && rec != nil {
		a.summary.Stored++
		a.summary.Bytes += rec.Size
		addBounded(&a.summary.StudyUIDs, rec.StudyInstanceUID)
		if id := rec.Metadata.String(dicomcodec.TagPatientID); id != "" {
			addBounded(&a.summary.PatientIDs, id)
		}
		return
	}
	a.summary.Failed++
	a.countFailure(status)
}

func (a *association) countFailure(status Status) {
	if a.summary.FailureStatuses == nil {
		a.summary.FailureStatuses = map[string]int{}
	}
	a.summary.FailureStatuses[fmt.Sprintf("0x%04X", uint16(status))]++
}

func addBounded(list *[]string, v string) {
	for _, x := range *list {
		if x == v {
			return
		}
	}
	if len(*list) < maxSummaryUIDs {
		*list = append(*list, v)
	}
}

// maxReportBytes bounds a storage commitment report: about 150 bytes an
// instance, so 4 MiB is a study of some 25,000 instances.
const maxReportBytes = 4 << 20

// commitmentReport hands an N-EVENT-REPORT to the Sender waiting for it
// and answers it: success when a transfer here was waiting for that
// transaction from this AE, processing failure otherwise.
func (a *association) commitmentReport(in *incoming) error {
	pc := a.contexts[in.ctxID]
	r, err := decodeCommitReport(in.ident, pc.TransferSyntax[0] == ExplicitVRLittleEndian)
	status := StatusSuccess
	switch {
	case err != nil:
		a.log.Warn("storage commitment report not understood", "error", err.Error())
		status = StatusProcessingFailure
	case !a.s.Commitments.deliver(a.caller.AETitle, r):
		a.log.Warn("storage commitment report for no transfer waiting here", "transaction_uid", r.TransactionUID)
		status = StatusProcessingFailure
	default:
		a.log.Info("storage commitment report received", "transaction_uid", r.TransactionUID, "committed", len(r.Committed), "failed", len(r.Failed))
	}
	return a.out.sendCommand(in.ctxID, eventReportRSP(in.cmd, status))
}

// find answers one C-FIND: a pending response per match, then the final
// status.
func (a *association) find(in *incoming) error {
	pc := a.contexts[in.ctxID]
	msgID, _ := in.cmd.Uint16(elMessageID)
	final := func(status Status, comment string) error {
		return a.respond(in.ctxID, CommandCFindRSP, msgID, pc.AbstractSyntax, "", status, comment)
	}
	explicit := pc.TransferSyntax[0] == ExplicitVRLittleEndian
	ident, err := parseIdentifier(in.ident, explicit)
	if err != nil {
		return final(StatusIdentifierMismatch, err.Error())
	}
	q, keys, err := findQuery(ident, pc.AbstractSyntax)
	if err != nil {
		return final(StatusIdentifierMismatch, err.Error())
	}
	res, err := a.s.Finder.Find(a.s.ctx, a.caller, q)
	if err != nil {
		a.log.Warn("C-FIND failed", "error", err.Error())
		if errors.Is(err, gateway.ErrInvalid) {
			return final(StatusUnableToProcessFind, err.Error())
		}
		return final(StatusOutOfResources, err.Error())
	}
	level := map[gateway.QueryLevel]string{gateway.LevelStudy: "STUDY", gateway.LevelSeries: "SERIES", gateway.LevelInstance: "IMAGE"}[q.Level]
	for _, m := range res.Items {
		rsp := NewCommand()
		rsp.SetUint16(elCommandField, CommandCFindRSP)
		rsp.SetUint16(elMessageIDRespondedTo, msgID)
		rsp.SetUint16(elCommandDataSetType, 0x0000)
		rsp.SetUint16(elStatus, uint16(StatusPending))
		rsp.SetString(elAffectedSOPClassUID, pc.AbstractSyntax, true)
		if err := a.out.sendCommand(in.ctxID, rsp); err != nil {
			return fmt.Errorf("sending a C-FIND response: %w", err)
		}
		if _, err := a.out.sendDataSet(in.ctxID, bytes.NewReader(encodeMatch(level, keys, m, explicit))); err != nil {
			return fmt.Errorf("sending a C-FIND match: %w", err)
		}
	}
	if res.More {
		return final(StatusOutOfResources, fmt.Sprintf("more than %d matches: narrow the query", maxFindMatches))
	}
	return final(StatusSuccess, "")
}

func (a *association) respond(ctxID byte, field, msgID uint16, sopClass, sop string, status Status, comment string) error {
	rsp := NewCommand()
	rsp.SetUint16(elCommandField, field)
	rsp.SetUint16(elMessageIDRespondedTo, msgID)
	rsp.SetUint16(elCommandDataSetType, dataSetAbsent)
	rsp.SetUint16(elStatus, uint16(status))
	if sopClass != "" {
		rsp.SetString(elAffectedSOPClassUID, sopClass, true)
	}
	if sop != "" {
		rsp.SetString(elAffectedSOPInstanceUID, sop, true)
	}
	if comment != "" {
		rsp.SetString(elErrorComment, comment[:min(len(comment), 64)], false)
	}
	if err := a.out.sendCommand(ctxID, rsp); err != nil {
		return fmt.Errorf("sending the response: %w", err)
	}
	return nil
}

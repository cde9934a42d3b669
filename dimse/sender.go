package dimse

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

var _ gateway.Sender = (*Sender)(nil)

// Sender delivers transfers to peers with dimse: set, by C-STORE: the
// gateway.Sender of DIMSE peers. Each instance's dataset is streamed from
// the BlobStore in the transfer syntax it was stored in when the peer
// accepts it, else transcoded to Explicit VR Little Endian when the
// transcoder can (from Implicit VR LE or Explicit VR BE), else refused for
// good with the reason. An instance is delivered when the peer answers its
// C-STORE with success or a warning.
type Sender struct {
	Blobs gateway.BlobStore
	// CallingAE is this gateway's AE title for peers without
	// dimse.calling_ae (default GATEWAY).
	CallingAE string
	// MaxPDULength, ARTIM and PDUTimeout are the DialOptions of every
	// association.
	MaxPDULength      uint32
	ARTIM, PDUTimeout time.Duration
	// Commitments receives storage commitment reports that peers send on
	// associations of their own (shared with the Server); nil accepts them
	// only on the requesting association.
	Commitments *Commitments
	// TLSConfig returns the TLS configuration for a peer with dimse.tls
	// (from its tls: settings); nil refuses such peers.
	TLSConfig func(gateway.Peer) (*tls.Config, error)
	Logger    *slog.Logger
}

// dialOptions are the association options towards peer.
func (s *Sender) dialOptions(peer gateway.Peer, contexts []PresentationContext) (DialOptions, error) {
	d := peer.DIMSE
	o := DialOptions{
		CallingAE: cmpOr(d.CallingAE, cmpOr(s.CallingAE, "GATEWAY")), CalledAE: d.CalledAE, Contexts: contexts,
		MaxPDULength: s.MaxPDULength, ARTIM: s.ARTIM, PDUTimeout: s.PDUTimeout,
	}
	if d.TLS {
		if s.TLSConfig == nil {
			return o, &gateway.SendError{Peer: peer.Name, Err: errors.New("dimse.tls is set but this gateway has no TLS client configuration")}
		}
		conf, err := s.TLSConfig(peer)
		if err != nil {
			return o, &gateway.SendError{Peer: peer.Name, Err: fmt.Errorf("tls: %w", err)}
		}
		o.TLS = conf
	}
	return o, nil
}

// maxContextPairs bounds the (SOP class, transfer syntax) pairs of one
// association: each takes up to two of the 128 presentation contexts.
const maxContextPairs = 64

type contextKey struct{ class, ts string }

// Send implements gateway.Sender: the instances are dealt round-robin to
// peer.MaxParallel concurrent associations (default 1: many PACS limit
// associations per calling AE), each opened per 64 distinct (SOP class,
// transfer syntax) pairs, one C-STORE at a time, each result reported as it
// arrives.
func (s *Sender) Send(ctx context.Context, peer gateway.Peer, h gateway.SendHeader, instances []*gateway.InstanceRecord, report func([]gateway.SendResult)) error {
	if peer.DIMSE == nil {
		return &gateway.SendError{Peer: peer.Name, Err: errors.New("not a DIMSE peer")}
	}
	lanes := min(max(peer.MaxParallel, 1), len(instances))
	if lanes <= 1 {
		return s.sendLane(ctx, peer, h, instances, report)
	}
	var mu sync.Mutex
	serialised := func(res []gateway.SendResult) {
		mu.Lock()
		defer mu.Unlock()
		report(res)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	errs := make([]error, lanes)
	var wg sync.WaitGroup
	for i := range lanes {
		var lane []*gateway.InstanceRecord
		for j := i; j < len(instances); j += lanes {
			lane = append(lane, instances[j])
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.sendLane(ctx, peer, h, lane, serialised); err != nil {
				errs[i] = err
				cancel(err) // one broken lane stops the others: the attempt is retried whole
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	return errors.Join(errs...)
}

// sendLane sends instances over one association at a time.
func (s *Sender) sendLane(ctx context.Context, peer gateway.Peer, h gateway.SendHeader, instances []*gateway.InstanceRecord, report func([]gateway.SendResult)) error {
	for len(instances) > 0 {
		keys := map[contextKey]bool{}
		n := 0
		for ; n < len(instances); n++ {
			k := contextKey{instances[n].SOPClassUID, instances[n].TransferSyntaxUID}
			if !keys[k] && len(keys) == maxContextPairs {
				break
			}
			keys[k] = true
		}
		if err := s.sendAssociation(ctx, peer, h, instances[:n], keys, report); err != nil {
			return err
		}
		instances = instances[n:]
	}
	return nil
}

func (s *Sender) sendAssociation(ctx context.Context, peer gateway.Peer, h gateway.SendHeader, instances []*gateway.InstanceRecord, keys map[contextKey]bool, report func([]gateway.SendResult)) error {
	d := peer.DIMSE
	var proposed []PresentationContext
	fallback := map[string]bool{}
	for _, rec := range instances { // in order, so the IDs are stable
		k := contextKey{rec.SOPClassUID, rec.TransferSyntaxUID}
		if !keys[k] {
			continue
		}
		delete(keys, k)
		proposed = append(proposed, PresentationContext{AbstractSyntax: k.class, TransferSyntax: []string{k.ts}})
		if k.ts != ExplicitVRLittleEndian && dicomcodec.CanTranscode(k.ts, ExplicitVRLittleEndian) && !fallback[k.class] {
			fallback[k.class] = true
			proposed = append(proposed, PresentationContext{AbstractSyntax: k.class, TransferSyntax: []string{ExplicitVRLittleEndian}})
		}
	}
	addr := net.JoinHostPort(d.Host, strconv.Itoa(d.Port))
	opts, err := s.dialOptions(peer, proposed)
	if err != nil {
		return err
	}
	cl, err := Dial(ctx, addr, opts)
	if err != nil {
		temporary := true
		if rj, ok := errors.AsType[*RejectError](err); ok {
			temporary = rj.Temporary()
		}
		return &gateway.SendError{Peer: peer.Name, Temporary: temporary, Err: fmt.Errorf("association with %s at %s: %w", d.CalledAE, addr, err)}
	}
	released := false
	defer func() {
		if !released {
			cl.Abort()
		}
	}()
	sent := 0
	for _, rec := range instances {
		if ctx.Err() != nil {
			// Stopped between two instances (a C-MOVE its caller
			// cancelled): every C-STORE begun has its answer, so the
			// association is released below, not aborted.
			break
		}
		res, err := s.storeOne(ctx, cl, h, rec)
		if err != nil {
			return &gateway.SendError{Peer: peer.Name, Temporary: true, Err: fmt.Errorf("C-STORE of %s: %w", rec.SOPInstanceUID, err)}
		}
		report([]gateway.SendResult{res})
		sent++
	}
	released = true
	if err := cl.Release(); err != nil {
		// Every instance has its answer already: a lost release costs nothing.
		s.logger().WarnContext(ctx, "DIMSE release not acknowledged", gateway.LogKeyPeer, peer.Name, gateway.LogKeyError, err.Error())
	}
	if sent < len(instances) {
		return &gateway.SendError{Peer: peer.Name, Temporary: true, Err: fmt.Errorf("stopped after %d of %d instances: %w", sent, len(instances), context.Cause(ctx))}
	}
	return nil
}

// storeOne sends one instance: its stored bytes (h.StoredKey) through
// h.Rewrite when set (identity coercion, de-identification: rec then
// carries the UIDs, size and SHA-256 of the rewritten bytes, and the
// C-STORE names rec's SOP Instance UID). An error means the association
// broke; a refusal is a SendResult.
func (s *Sender) storeOne(ctx context.Context, cl *Client, h gateway.SendHeader, rec *gateway.InstanceRecord) (gateway.SendResult, error) {
	refused := func(code uint16, retryable bool, format string, args ...any) gateway.SendResult {
		return gateway.SendResult{SOPInstanceUID: rec.SOPInstanceUID, Reason: fmt.Sprintf(format, args...), ReasonCode: code, Retryable: retryable}
	}
	pc, ok := cl.Accepted(rec.SOPClassUID, rec.TransferSyntaxUID)
	transcode := false
	if !ok {
		if pc, ok = cl.Accepted(rec.SOPClassUID, ExplicitVRLittleEndian); ok && dicomcodec.CanTranscode(rec.TransferSyntaxUID, ExplicitVRLittleEndian) {
			transcode = true
		} else {
			return refused(uint16(StatusSOPClassNotSupported), false,
				"the peer accepted SOP class %s neither in the stored transfer syntax %s nor in one it can be transcoded to", rec.SOPClassUID, rec.TransferSyntaxUID), nil
		}
	}
	blob, err := s.Blobs.Get(ctx, h.StoredKey(rec), 0, -1)
	if err != nil {
		if errors.Is(err, gateway.ErrNotFound) {
			return refused(gateway.ReasonProcessingFailure, false, "the stored instance is gone from this gateway's blob store"), nil
		}
		return gateway.SendResult{}, fmt.Errorf("reading the stored instance: %w", err)
	}
	if h.Rewrite != nil {
		blob = h.Rewrite(rec, blob)
	}
	defer func() { _ = blob.Close() }() // read-only: nothing to lose on close
	var src io.Reader = blob
	// transcoded, when transcoding, stops the transcoder (whatever was
	// read of its output) and returns its error.
	transcoded := func() error { return nil }
	if transcode {
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			_, err := dicomcodec.TranscodeToExplicitLE(pw, blob)
			pw.CloseWithError(err)
			done <- err
		}()
		src = pr
		var once sync.Once
		var terr error
		transcoded = func() error {
			once.Do(func() {
				pr.CloseWithError(errors.New("sending stopped"))
				terr = <-done
			})
			return terr
		}
		defer func() { _ = transcoded() }() // reported below when it matters
	}
	dataset, err := SkipFileMeta(src)
	if err != nil {
		return refused(gateway.ReasonCannotUnderstand, false, "stored instance: %v", err), nil
	}
	res, err := cl.Store(ctx, pc, rec.SOPInstanceUID, dataset)
	if terr := transcoded(); terr != nil && err == nil {
		// The peer has stored a dataset cut short: say so loudly.
		return refused(gateway.ReasonCannotUnderstand, false, "transcoding to Explicit VR Little Endian failed after sending began (the peer may hold a truncated copy): %v", terr), nil
	}
	if err != nil {
		return gateway.SendResult{}, err
	}
	answer := "C-STORE " + res.Status.String()
	if comment := strings.TrimSpace(res.Comment); comment != "" {
		answer += " " + gateway.QuotePeer(comment) // the peer's words: kept out of the log
	}
	switch {
	case res.Status.Success():
		return gateway.SendResult{SOPInstanceUID: rec.SOPInstanceUID, OK: true, Bytes: rec.Size}, nil
	case res.Status.Warning():
		return gateway.SendResult{SOPInstanceUID: rec.SOPInstanceUID, OK: true, Bytes: rec.Size, Warning: answer}, nil
	case res.Status.OutOfResources():
		return refused(uint16(res.Status), true, "%s", answer), nil
	}
	return refused(uint16(res.Status), false, "%s", answer), nil
}

// Verify implements gateway.Sender. DIMSE has no read-back of what a
// C-STORE SCP keeps, short of a C-FIND the peer may not offer, so without
// storage commitment the check is the per-instance C-STORE status already
// recorded: every instance reaching Verify was acknowledged with success or
// a warning. With dimse.storage_commitment the peer is asked to commit
// every instance (PS3.4 Annex J): those it reports failed are Missing, to
// be sent again; no report in time is a temporary error, asked again on the
// next attempt.
func (s *Sender) Verify(ctx context.Context, peer gateway.Peer, studyUID string, instances []*gateway.InstanceRecord) (*gateway.Verification, error) {
	d := peer.DIMSE
	if d == nil || !d.StorageCommitment {
		return &gateway.Verification{OK: true, Checked: fmt.Sprintf("c-store: %d/%d instances acknowledged with a success status (DIMSE offers no SHA-256 read-back)", len(instances), len(instances))}, nil
	}
	addr := net.JoinHostPort(d.Host, strconv.Itoa(d.Port))
	opts, err := s.dialOptions(peer, []PresentationContext{{AbstractSyntax: StorageCommitmentClass, TransferSyntax: []string{ImplicitVRLittleEndian}}})
	if err != nil {
		return nil, err
	}
	cl, err := Dial(ctx, addr, opts)
	if err != nil {
		temporary := true
		if rj, ok := errors.AsType[*RejectError](err); ok {
			temporary = rj.Temporary()
		}
		return nil, &gateway.SendError{Peer: peer.Name, Temporary: temporary, Err: fmt.Errorf("storage commitment association with %s at %s: %w", d.CalledAE, addr, err)}
	}
	defer cl.Abort() // the association is spent once the report is in (or not)
	refs := make([][2]string, len(instances))
	for i, rec := range instances {
		refs[i] = [2]string{rec.SOPClassUID, rec.SOPInstanceUID}
	}
	r, err := cl.RequestCommitment(ctx, s.Commitments, d.CalledAE, refs, cmpOr(d.CommitmentTimeout, 2*time.Minute))
	if err != nil {
		return nil, &gateway.SendError{Peer: peer.Name, Temporary: true, Err: fmt.Errorf("storage commitment: %w", err)}
	}
	committed := map[string]bool{}
	for _, sop := range r.Committed {
		committed[sop] = true
	}
	v := &gateway.Verification{}
	for _, rec := range instances {
		if !committed[rec.SOPInstanceUID] {
			v.Missing = append(v.Missing, rec.SOPInstanceUID)
		}
	}
	v.OK = len(v.Missing) == 0
	v.Checked = fmt.Sprintf("storage commitment: %d/%d instances committed (transaction %s)", len(instances)-len(v.Missing), len(instances), r.TransactionUID)
	return v, nil
}

func (s *Sender) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// maxFileMetaBytes bounds the File Meta Information SkipFileMeta reads.
const maxFileMetaBytes = 64 << 10

// SkipFileMeta reads past the preamble, "DICM" and the group 0002 elements
// of a Part 10 stream and returns the rest: the dataset. The meta group is
// walked element by element (Explicit VR Little Endian, PS3.10 7.1), not
// trusted by its group length.
func SkipFileMeta(r io.Reader) (io.Reader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head := make([]byte, 132)
	if _, err := io.ReadFull(br, head); err != nil {
		return nil, fmt.Errorf("no Part 10 preamble: %w", err)
	}
	if !bytes.Equal(head[128:], []byte("DICM")) {
		return nil, errors.New("no DICM prefix after the preamble")
	}
	read := 0
	for {
		tag, err := br.Peek(8)
		if err != nil {
			if errors.Is(err, io.EOF) && len(tag) == 0 {
				return br, nil // meta only: an empty dataset
			}
			return nil, fmt.Errorf("file meta information: %w", err)
		}
		if binary.LittleEndian.Uint16(tag[0:2]) != 0x0002 {
			return br, nil
		}
		vr := string(tag[4:6])
		hdr, n := 8, int64(binary.LittleEndian.Uint16(tag[6:8]))
		switch vr {
		case "OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR", "OD", "OL", "OV", "SV", "UV":
			long, err := br.Peek(12)
			if err != nil {
				return nil, fmt.Errorf("file meta information: %w", err)
			}
			hdr, n = 12, int64(binary.LittleEndian.Uint32(long[8:12]))
		}
		read += hdr + int(min(n, maxFileMetaBytes+1))
		if read > maxFileMetaBytes {
			return nil, fmt.Errorf("file meta information longer than %d bytes", maxFileMetaBytes)
		}
		if _, err := br.Discard(hdr + int(n)); err != nil {
			return nil, fmt.Errorf("file meta information: %w", err)
		}
	}
}

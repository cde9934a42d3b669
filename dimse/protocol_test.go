package dimse

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
	"github.com/dicom-gateway/gateway/internal/testcorpus"
)

// pduLength is the length field of an encoded PDU.
func pduLength(b []byte) uint32 { return binary.BigEndian.Uint32(b[2:6]) }

func TestAssociateRoundTrip(t *testing.T) {
	rq := &AssociateRQ{
		ProtocolVersion: 1, CalledAE: "GATEWAY", CallingAE: "MODALITY", ApplicationContext: ApplicationContext,
		Contexts: []PresentationContext{
			{ID: 1, AbstractSyntax: VerificationSOPClass, TransferSyntax: []string{ImplicitVRLittleEndian}},
			{ID: 3, AbstractSyntax: synth.CTImageStorage, TransferSyntax: []string{ExplicitVRLittleEndian, ImplicitVRLittleEndian}},
		},
		MaxPDULength: 16384, ImplementationUID: ImplementationClassUID, ImplementationVersion: ImplementationVersion,
	}
	b := encodeAssociate(pduAssociateRQ, rq)
	if int(pduLength(b)) != len(b)-6 {
		t.Fatalf("PDU length %d for %d bytes of body", pduLength(b), len(b)-6)
	}
	got, err := decodeAssociate(pduAssociateRQ, b[6:])
	if err != nil {
		t.Fatal(err)
	}
	if got.CalledAE != rq.CalledAE || got.CallingAE != rq.CallingAE || got.MaxPDULength != 16384 ||
		got.ImplementationUID != ImplementationClassUID || got.ImplementationVersion != ImplementationVersion ||
		len(got.Contexts) != 2 || !slices.Equal(got.Contexts[1].TransferSyntax, rq.Contexts[1].TransferSyntax) ||
		got.Contexts[1].AbstractSyntax != synth.CTImageStorage {
		t.Errorf("decoded %+v", got)
	}
}

func TestPDataFragmentation(t *testing.T) {
	// A dataset sent with a peer maximum of 4096 arrives in PDUs of at most
	// 4096 bytes of body, flagged last on the final one only, and whole.
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	payload := bytes.Repeat([]byte("0123456789"), 3000)
	errc := make(chan error, 1)
	go func() {
		s := newSender(newConn(client, 4096, time.Second), 4096)
		_, err := s.sendDataSet(5, bytes.NewReader(payload))
		errc <- err
	}()
	rc := newConn(server, 4096, time.Second)
	var got []byte
	for {
		typ, body, err := rc.readPDU(time.Second)
		if err != nil || typ != pduPData {
			t.Fatalf("PDU %d: %v", typ, err)
		}
		if len(body) > 4096 {
			t.Fatalf("PDU body of %d bytes over the peer's 4096", len(body))
		}
		pdvs, err := decodePData(body, nil)
		if err != nil || len(pdvs) != 1 || pdvs[0].ContextID != 5 || pdvs[0].Command {
			t.Fatalf("PDVs %+v: %v", pdvs, err)
		}
		got = append(got, pdvs[0].Data...)
		if pdvs[0].Last {
			break
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Errorf("reassembled %d bytes, sent %d", len(got), len(payload))
	}
}

func TestCommandRoundTrip(t *testing.T) {
	c := NewCommand()
	c.SetString(elAffectedSOPClassUID, synth.CTImageStorage, true)
	c.SetUint16(elCommandField, CommandCStoreRQ)
	c.SetUint16(elMessageID, 7)
	c.SetString(elAffectedSOPInstanceUID, "1.2.3", true)
	got, err := DecodeCommand(c.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if got.Field() != CommandCStoreRQ || got.String(elAffectedSOPInstanceUID) != "1.2.3" || got.String(elAffectedSOPClassUID) != synth.CTImageStorage {
		t.Errorf("decoded %+v", got.elements)
	}
	if gl := binary.LittleEndian.Uint32(c.Encode()[8:12]); int(gl) != len(c.Encode())-12 {
		t.Errorf("group length %d", gl)
	}
	if _, err := DecodeCommand([]byte{0, 0, 0, 1, 0xFF, 0xFF, 0, 0}); !errors.Is(err, ErrMalformed) {
		t.Errorf("element longer than the set: %v", err)
	}
}

func TestIsStorageSOPClass(t *testing.T) {
	for uid, want := range map[string]bool{
		synth.CTImageStorage:            true,
		"1.2.840.10008.5.1.4.1.1.999.1": true,  // a future class in the storage arc
		"1.2.840.10008.5.1.4.39.1":      true,  // Color Palette Storage, by the dictionary
		"1.2.840.10008.5.1.4.38.1":      true,  // Hanging Protocol Storage
		"1.2.840.10008.5.1.4.1.2.2.1":   false, // Study Root Q/R FIND
		"1.2.840.10008.5.1.4.31":        false, // Modality Worklist
		"1.2.840.10008.5.1.4.39.2":      false, // Color Palette FIND
		"1.2.840.10008.1.20.1":          false, // Storage Commitment
		"1.2.840.10008.1.3.10":          false, // DICOMDIR
		"1.2.3.4.5":                     false, // private
	} {
		if got := IsStorageSOPClass(uid); got != want {
			t.Errorf("IsStorageSOPClass(%s) = %v", uid, got)
		}
	}
}

// TestStatusString: the words logs give a status, Cancel and Pending
// included (they are neither failures nor successes).
func TestStatusString(t *testing.T) {
	for s, want := range map[Status]string{
		StatusSuccess: "success (0000)", StatusCancel: "cancel (FE00)", StatusPending: "pending (FF00)", 0xFF01: "pending (FF01)",
		StatusSubOpsFailed: "warning (B000)", StatusUnableToSubOps: "refused: out of resources (A702)", 0x0110: "failure (0110)",
	} {
		if got := s.String(); got != want {
			t.Errorf("Status(%04X).String() = %q, want %q", uint16(s), got, want)
		}
	}
}

func TestStatusOf(t *testing.T) {
	for _, c := range []struct {
		err  error
		want Status
	}{
		{nil, StatusSuccess},
		{&gateway.InstanceError{Reason: gateway.ReasonOutOfResources, Err: gateway.ErrUnavailable}, StatusOutOfResources},
		{&gateway.InstanceError{Reason: gateway.ReasonDataSetSOPClassMismatch, Err: gateway.ErrInvalid}, StatusDataSetMismatch},
		{&gateway.InstanceError{Reason: gateway.ReasonCannotUnderstand, Err: gateway.ErrInvalid}, StatusCannotUnderstand},
		{&gateway.InstanceError{Reason: gateway.ReasonTransferSyntaxUnsupported, Err: gateway.ErrInvalid}, StatusCannotUnderstand},
		{&gateway.InstanceError{Reason: gateway.ReasonDuplicateRejected, Err: gateway.ErrConflict}, StatusDuplicateSOPInstance},
		{&gateway.InstanceError{Reason: gateway.ReasonNoSuchSOPClass, Err: gateway.ErrInvalid}, StatusSOPClassNotSupported},
		{gateway.ErrTooLarge, StatusOutOfResources},
		{io.ErrUnexpectedEOF, StatusProcessingFailure},
	} {
		if got, _ := StatusOf(nil, c.err); got != c.want {
			t.Errorf("StatusOf(%v) = %s, want %s", c.err, got, c.want)
		}
	}
	if s, _ := StatusOf(&gateway.InstanceRecord{SOPInstanceUID: "1.02.3", StudyInstanceUID: "1.2", SeriesInstanceUID: "1.3"}, nil); s != StatusWarningDataSetMismatch {
		t.Errorf("stored with a tolerated UID deviation: %s", s)
	}
}

func dial(t *testing.T, ts *testServer, calling string, contexts ...PresentationContext) (*Client, error) {
	t.Helper()
	if len(contexts) == 0 {
		contexts = []PresentationContext{
			{AbstractSyntax: VerificationSOPClass, TransferSyntax: []string{ImplicitVRLittleEndian}},
			{AbstractSyntax: synth.CTImageStorage, TransferSyntax: []string{ExplicitVRLittleEndian}},
		}
	}
	return Dial(t.Context(), ts.addr, DialOptions{CallingAE: calling, CalledAE: "GATEWAY", Contexts: contexts})
}

func wantReject(t *testing.T, err error, want RejectError) {
	t.Helper()
	rj, ok := errors.AsType[*RejectError](err)
	if !ok || *rj != want {
		t.Errorf("got %v, want %v", err, &want)
	}
}

// TestAccess: the allow-list decides at association time, with the reject
// result, source and reason PS3.8 9.3.4 gives each case; roles decide which
// presentation contexts are accepted.
func TestAccess(t *testing.T) {
	noGoroutineLeak(t)
	ts := startServer(t, func(s *Server) {
		a, err := NewAccess([]AllowRule{
			{AETitle: "PACS1", Hosts: []string{"10.0.0.7"}, Roles: []gateway.Role{gateway.RoleStore}},
			{AETitle: "LOCALSTORE", Hosts: []string{"127.0.0.0/8"}, Roles: []gateway.Role{gateway.RoleStore}},
			{AETitle: "VIEWER", Hosts: []string{"127.0.0.1"}, Roles: []gateway.Role{gateway.RoleRead}},
		}, false)
		if err != nil {
			t.Fatal(err)
		}
		s.Access = a
	})
	_, err := dial(t, ts, "STRANGER")
	wantReject(t, err, RejectError{RejectPermanent, SourceServiceUser, ReasonCallingAENotRecognized})
	_, err = dial(t, ts, "PACS1") // known AE, wrong address
	wantReject(t, err, RejectError{RejectPermanent, SourceServiceUser, ReasonNoReason})
	_, err = Dial(t.Context(), ts.addr, DialOptions{CallingAE: "LOCALSTORE", CalledAE: "OTHER",
		Contexts: []PresentationContext{{AbstractSyntax: VerificationSOPClass, TransferSyntax: []string{ImplicitVRLittleEndian}}}})
	wantReject(t, err, RejectError{RejectPermanent, SourceServiceUser, ReasonCalledAENotRecognized})

	cl, err := dial(t, ts, "LOCALSTORE")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := cl.Accepted(synth.CTImageStorage, ExplicitVRLittleEndian); !ok {
		t.Error("store role: CT storage context not accepted")
	}
	if st, err := cl.Echo(t.Context()); err != nil || !st.Success() {
		t.Errorf("echo: %s %v", st, err)
	}
	if err := cl.Release(); err != nil {
		t.Error(err)
	}
	cl, err = dial(t, ts, "VIEWER")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := cl.Accepted(synth.CTImageStorage, ""); ok {
		t.Error("read role: CT storage context accepted")
	}
	if _, ok := cl.Accepted(VerificationSOPClass, ""); !ok {
		t.Error("read role: verification refused")
	}
	_ = cl.Release()

	if _, err := NewAccess([]AllowRule{{AETitle: "X", Hosts: []string{"pacs.example.org"}}}, false); err == nil {
		t.Error("a host name in hosts was accepted")
	}
	if _, err := NewAccess([]AllowRule{{AETitle: "WAY TOO LONG AE TITLE", Hosts: []string{"10.0.0.1"}}}, false); err == nil {
		t.Error("an AE title of 21 characters was accepted")
	}
}

// TestAssociationLimit: beyond MaxAssociations a caller is rejected
// transiently with "local limit exceeded", and admitted again once one
// ends.
func TestAssociationLimit(t *testing.T) {
	noGoroutineLeak(t)
	ts := startServer(t, func(s *Server) { s.MaxAssociations = 2 })
	a, err := dial(t, ts, "ONE")
	if err != nil {
		t.Fatal(err)
	}
	b, err := dial(t, ts, "TWO")
	if err != nil {
		t.Fatal(err)
	}
	_, err = dial(t, ts, "THREE")
	wantReject(t, err, RejectError{RejectTransient, SourceServiceProviderPresentn, ReasonLocalLimitExceeded})
	_ = a.Release()
	_ = b.Release()
	var c *Client
	for range 100 { // the server frees the slot once it sees the close
		if c, err = dial(t, ts, "THREE"); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("after two releases: %v", err)
	}
	_ = c.Release()
}

// rawConn opens a TCP connection to the server for hand-made PDUs.
func rawConn(t *testing.T, ts *testServer) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// answer reads what the server sends until it closes: the PDU types seen.
func answer(t *testing.T, nc net.Conn) []byte {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	var types []byte
	hdr := make([]byte, 6)
	for {
		if _, err := io.ReadFull(nc, hdr); err != nil {
			if isTimeout(err) {
				t.Fatal("server kept the connection open")
			}
			return types
		}
		types = append(types, hdr[0])
		if _, err := io.CopyN(io.Discard, nc, int64(binary.BigEndian.Uint32(hdr[2:]))); err != nil {
			return types
		}
	}
}

// associated opens an association by hand and returns the raw connection
// and the accepted CT context ID.
func associated(t *testing.T, ts *testServer) net.Conn {
	t.Helper()
	nc := rawConn(t, ts)
	rq := &AssociateRQ{CalledAE: "GATEWAY", CallingAE: "RAW", ApplicationContext: ApplicationContext,
		Contexts:     []PresentationContext{{ID: 1, AbstractSyntax: synth.CTImageStorage, TransferSyntax: []string{ExplicitVRLittleEndian}}},
		MaxPDULength: 16384, ImplementationUID: "1.2.3"}
	if _, err := nc.Write(encodeAssociate(pduAssociateRQ, rq)); err != nil {
		t.Fatal(err)
	}
	c := newConn(nc, 1<<20, 5*time.Second)
	typ, _, err := c.readPDU(5 * time.Second)
	if err != nil || typ != pduAssociateAC {
		t.Fatalf("association: type %d, %v", typ, err)
	}
	return nc
}

func storeCommand(sop string) []byte {
	c := NewCommand()
	c.SetString(elAffectedSOPClassUID, synth.CTImageStorage, true)
	c.SetUint16(elCommandField, CommandCStoreRQ)
	c.SetUint16(elMessageID, 1)
	c.SetUint16(elCommandDataSetType, 0)
	c.SetString(elAffectedSOPInstanceUID, sop, true)
	return appendPData(nil, PDV{ContextID: 1, Command: true, Last: true, Data: c.Encode()})
}

// TestHostilePeers: malformed PDUs, lies about lengths, early aborts and
// slow or silent peers end in an A-ABORT or a closed connection, store
// nothing, and leave no goroutine behind.
func TestHostilePeers(t *testing.T) {
	noGoroutineLeak(t)
	ts := startServer(t, func(s *Server) {
		s.ARTIM, s.PDUTimeout, s.IdleTimeout = 300*time.Millisecond, 300*time.Millisecond, 500*time.Millisecond
	})
	inst := synth.Study(synth.StudySpec{Seed: 19})[0]
	var part10 bytes.Buffer
	if _, err := inst.WriteTo(&part10); err != nil {
		t.Fatal(err)
	}
	dataset, err := SkipFileMeta(bytes.NewReader(part10.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	ds, _ := io.ReadAll(dataset)

	cases := []struct {
		name string
		send func(nc net.Conn)
		want []byte // PDU types answered before the close
	}{
		{"unknown PDU type", func(nc net.Conn) { nc.Write([]byte{0x09, 0, 0, 0, 0, 4, 0, 0, 0, 0}) }, []byte{pduAbort}},
		{"P-DATA before association", func(nc net.Conn) { nc.Write(appendPData(nil, PDV{ContextID: 1, Data: []byte{1, 2}})) }, []byte{pduAbort}},
		{"association request of 1 GiB", func(nc net.Conn) { nc.Write(appendPDUHeader(nil, pduAssociateRQ, 1<<30)) }, []byte{pduAbort}},
		{"association request with a lying item length", func(nc net.Conn) {
			b := encodeAssociate(pduAssociateRQ, &AssociateRQ{CalledAE: "GATEWAY", CallingAE: "X", ApplicationContext: ApplicationContext})
			binary.BigEndian.PutUint16(b[6+68+2:], 0xFFFF)
			nc.Write(b)
		}, []byte{pduAbort}},
		{"release PDU of length 9", func(nc net.Conn) { nc.Write(append(appendPDUHeader(nil, pduReleaseRQ, 9), make([]byte, 9)...)) }, []byte{pduAbort}},
		{"silent after connecting (ARTIM)", func(nc net.Conn) {}, nil},
		{"association request cut short (PDU timeout)", func(nc net.Conn) {
			b := encodeAssociate(pduAssociateRQ, &AssociateRQ{CalledAE: "GATEWAY", CallingAE: "X", ApplicationContext: ApplicationContext})
			nc.Write(b[:20])
		}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			nc := rawConn(t, ts)
			c.send(nc)
			if got := answer(t, nc); !bytes.Equal(got, c.want) {
				t.Errorf("answered PDU types %v, want %v", got, c.want)
			}
		})
	}

	after := []struct {
		name string
		send func(nc net.Conn)
		want []byte
	}{
		{"PDV on a context never accepted", func(nc net.Conn) {
			nc.Write(appendPData(nil, PDV{ContextID: 3, Command: true, Last: true, Data: []byte{0}}))
		}, []byte{pduAbort}},
		{"PDV longer than its PDU", func(nc net.Conn) {
			b := appendPData(nil, PDV{ContextID: 1, Command: true, Last: true, Data: []byte{0, 0}})
			binary.BigEndian.PutUint32(b[6:], 1000)
			nc.Write(b)
		}, []byte{pduAbort}},
		{"P-DATA over the announced maximum", func(nc net.Conn) { nc.Write(appendPDUHeader(nil, pduPData, 10<<20)) }, []byte{pduAbort}},
		{"command set over 64 KiB", func(nc net.Conn) {
			for range 20 {
				nc.Write(appendPData(nil, PDV{ContextID: 1, Command: true, Data: make([]byte, 4000)}))
			}
		}, []byte{pduAbort}},
		{"dataset without a command", func(nc net.Conn) { nc.Write(appendPData(nil, PDV{ContextID: 1, Last: true, Data: ds[:100]})) }, []byte{pduAbort}},
		{"peer aborts in the middle of a dataset", func(nc net.Conn) {
			nc.Write(storeCommand(inst.SOPInstanceUID))
			nc.Write(appendPData(nil, PDV{ContextID: 1, Data: ds[:len(ds)/2]}))
			nc.Write(encodeAbort(AbortSourceUser, 0))
		}, nil},
		{"connection closed in the middle of a dataset", func(nc net.Conn) {
			nc.Write(storeCommand(inst.SOPInstanceUID))
			nc.Write(appendPData(nil, PDV{ContextID: 1, Data: ds[:len(ds)/2]}))
			nc.(*net.TCPConn).CloseWrite()
		}, nil},
		{"release in the middle of a dataset", func(nc net.Conn) {
			nc.Write(storeCommand(inst.SOPInstanceUID))
			nc.Write(appendPData(nil, PDV{ContextID: 1, Data: ds[:100]}))
			nc.Write(encodeRelease(pduReleaseRQ))
		}, []byte{pduAbort}},
		{"stalls in the middle of a dataset (idle timeout)", func(nc net.Conn) {
			nc.Write(storeCommand(inst.SOPInstanceUID))
			nc.Write(appendPData(nil, PDV{ContextID: 1, Data: ds[:100]}))
		}, []byte{pduAbort}},
		{"stalls in the middle of a PDU (PDU timeout)", func(nc net.Conn) {
			nc.Write(storeCommand(inst.SOPInstanceUID))
			b := appendPData(nil, PDV{ContextID: 1, Last: true, Data: ds})
			nc.Write(b[:len(b)/2])
		}, []byte{pduAbort}},
	}
	for _, c := range after {
		t.Run(c.name, func(t *testing.T) {
			nc := associated(t, ts)
			c.send(nc)
			if got := answer(t, nc); !bytes.Equal(got, c.want) {
				t.Errorf("answered PDU types %v, want %v", got, c.want)
			}
		})
	}
	if _, err := ts.b.Index.GetInstance(t.Context(), inst.SOPInstanceUID); !errors.Is(err, gateway.ErrNotFound) {
		t.Errorf("an instance whose dataset never arrived whole is indexed: %v", err)
	}
	if got := ts.storedDatasets(t); len(got) != 0 {
		t.Errorf("blobs left behind: %v", got)
	}

	// After all that, the server still serves an honest peer.
	cl, err := dial(t, ts, "HONEST")
	if err != nil {
		t.Fatal(err)
	}
	pc, _ := cl.Accepted(synth.CTImageStorage, ExplicitVRLittleEndian)
	res, err := cl.Store(t.Context(), pc, inst.SOPInstanceUID, bytes.NewReader(ds))
	if err != nil || !res.Status.Success() {
		t.Fatalf("store: %+v %v", res, err)
	}
	_ = cl.Release()
	if got, _ := ts.storedDatasetSHA256(t, inst.SOPInstanceUID); got != datasetSHA256(t, bytes.NewReader(part10.Bytes())) {
		t.Error("stored dataset differs from the one sent")
	}
}

// TestStoreStatuses: the ingest's refusals reach the SCU as the statuses of
// the table in status.go, and an identical resend is a success.
func TestStoreStatuses(t *testing.T) {
	noGoroutineLeak(t)
	ts := startServer(t, nil)
	insts := synth.Study(synth.StudySpec{Seed: 20, InstancesPerSeries: 2})
	datasets := make([][]byte, len(insts))
	for i, in := range insts {
		var b bytes.Buffer
		in.WriteTo(&b)
		d, _ := SkipFileMeta(&b)
		datasets[i], _ = io.ReadAll(d)
	}
	palette := filepath.Join(testcorpus.Dir(t), "color_palette_hot_iron.dcm")
	pf, err := os.Open(palette)
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	paletteDS, _ := SkipFileMeta(pf)
	mr := synth.Instance{PatientID: "MM1", StudyInstanceUID: synth.UIDRoot + ".91.1", SeriesInstanceUID: synth.UIDRoot + ".91.1.1",
		SOPInstanceUID: synth.UIDRoot + ".91.1.1.1", SOPClassUID: synth.MRImageStorage, Modality: "MR"}
	var mrFile bytes.Buffer
	mr.WriteTo(&mrFile)
	mrDS, _ := SkipFileMeta(&mrFile)
	cl, err := dial(t, ts, "MODALITY",
		PresentationContext{AbstractSyntax: synth.CTImageStorage, TransferSyntax: []string{ExplicitVRLittleEndian}},
		PresentationContext{AbstractSyntax: "1.2.840.10008.5.1.4.39.1", TransferSyntax: []string{ExplicitVRLittleEndian}},
		PresentationContext{AbstractSyntax: "1.2.840.10008.5.1.4.1.2.2.1", TransferSyntax: []string{ExplicitVRLittleEndian}},
		PresentationContext{AbstractSyntax: synth.MRImageStorage, TransferSyntax: []string{"1.2.840.10008.1.2.4.999.9"}},
	)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Abort()
	if _, ok := cl.Accepted("1.2.840.10008.5.1.4.1.2.2.1", ""); ok {
		t.Error("a Query/Retrieve model was accepted as a storage class")
	}
	if _, ok := cl.Accepted(synth.MRImageStorage, ""); ok {
		t.Error("a transfer syntax the ingest does not read was accepted")
	}
	ct, _ := cl.Accepted(synth.CTImageStorage, "")
	for _, c := range []struct {
		name string
		pc   PresentationContext
		sop  string
		ds   io.Reader
		want Status
	}{
		{"stored", ct, insts[0].SOPInstanceUID, bytes.NewReader(datasets[0]), StatusSuccess},
		{"identical resend", ct, insts[0].SOPInstanceUID, bytes.NewReader(datasets[0]), StatusSuccess},
		{"other bytes under a stored SOP instance", ct, insts[0].SOPInstanceUID, bytes.NewReader(append(slices.Clip(datasets[0]), 0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0)), StatusCannotUnderstand},
		{"truncated dataset", ct, insts[1].SOPInstanceUID, bytes.NewReader(datasets[1][:len(datasets[1])-1000]), StatusCannotUnderstand},
		{"dataset of another instance than the command's", ct, insts[1].SOPInstanceUID, bytes.NewReader(datasets[0]), StatusDataSetMismatch},
		{"dataset of another class than the context's", ct, mr.SOPInstanceUID, mrDS, StatusDataSetMismatch},
		{"no Study Instance UID", func() PresentationContext { pc, _ := cl.Accepted("1.2.840.10008.5.1.4.39.1", ""); return pc }(), "1.2.840.10008.1.5.1", paletteDS, StatusDataSetMismatch},
		{"SOP instance of the command is not a UID", ct, "not.a.uid", bytes.NewReader(datasets[1]), StatusCannotUnderstand},
	} {
		res, err := cl.Store(t.Context(), c.pc, c.sop, c.ds)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if res.Status != c.want {
			t.Errorf("%s: status %s (%s), want %s", c.name, res.Status, res.Comment, c.want)
		}
	}
	for _, sop := range []string{insts[1].SOPInstanceUID, mr.SOPInstanceUID} {
		if _, err := ts.b.Index.GetInstance(t.Context(), sop); !errors.Is(err, gateway.ErrNotFound) {
			t.Errorf("instance %s stored although its C-STORE was refused: %v", sop, err)
		}
	}
	// A differing resend: the trailing item above makes the dataset
	// unparsable, so check the duplicate policy with real other bytes.
	other := slices.Clone(datasets[0])
	other[len(other)-1] ^= 0xFF // a pixel changed
	res, err := cl.Store(t.Context(), ct, insts[0].SOPInstanceUID, bytes.NewReader(other))
	if err != nil || res.Status != StatusDuplicateSOPInstance {
		t.Errorf("other bytes under a stored SOP instance: %+v %v", res, err)
	}
	if err := cl.Release(); err != nil {
		t.Error(err)
	}
}

func FuzzDecodePDU(f *testing.F) {
	rq := encodeAssociate(pduAssociateRQ, &AssociateRQ{CalledAE: "GATEWAY", CallingAE: "X", ApplicationContext: ApplicationContext,
		Contexts: []PresentationContext{{ID: 1, AbstractSyntax: synth.CTImageStorage, TransferSyntax: []string{ExplicitVRLittleEndian}}}})
	f.Add(rq[6:], pduAssociateRQ)
	f.Add(appendPData(nil, PDV{ContextID: 1, Command: true, Last: true, Data: NewCommand().Encode()})[6:], pduPData)
	f.Fuzz(func(t *testing.T, body []byte, typ byte) {
		switch typ % 3 {
		case 0:
			if a, err := decodeAssociate(pduAssociateRQ, body); err == nil && len(a.Contexts) > maxPresentationContexts {
				t.Fatal("too many contexts accepted")
			}
		case 1:
			_, _ = decodeAssociate(pduAssociateAC, body)
		case 2:
			pdvs, err := decodePData(body, nil)
			if err == nil {
				for _, v := range pdvs {
					_, _ = DecodeCommand(v.Data)
					if ident, err := parseIdentifier(v.Data, v.Last); err == nil {
						_, _, _ = findQuery(ident, StudyRootFind)
					}
				}
			}
		}
	})
}

// TestCloseEndsIdleAssociations: Close does not wait for an idle
// association's idle timeout; it aborts it, and the peer learns so.
func TestCloseEndsIdleAssociations(t *testing.T) {
	noGoroutineLeak(t)
	ts := startServer(t, nil)
	cl, err := dial(t, ts, "IDLE")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := ts.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		t.Fatal("Close waited for the idle association until its deadline")
	}
	if _, err := cl.Echo(t.Context()); err == nil {
		t.Error("echo on an association the server closed succeeded")
	}
	cl.Abort()
}

// TestSenderParallel: with max_parallel 3 a study goes over three
// concurrent associations, every instance reported once and stored once.
func TestSenderParallel(t *testing.T) {
	noGoroutineLeak(t)
	src := startServer(t, nil)
	insts := synth.Study(synth.StudySpec{Seed: 21, Series: 2, InstancesPerSeries: 6})
	for _, in := range insts {
		if _, err := src.store.in.Store(t.Context(), in.Reader(), gateway.StoreOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	recs := src.records(t)
	var associations []Caller
	dst := startServer(t, nil)
	host, portS, _ := net.SplitHostPort(dst.addr)
	port, _ := strconv.Atoi(portS)
	peer := gateway.Peer{Name: "p", MaxParallel: 3, DIMSE: &gateway.DIMSEPeer{Host: host, Port: port, CalledAE: "GATEWAY"}}
	seen := map[string]int{}
	snd := &Sender{Blobs: src.b.Blobs}
	if err := snd.Send(t.Context(), peer, gateway.SendHeader{}, recs, func(res []gateway.SendResult) {
		for _, r := range res {
			if !r.OK {
				t.Errorf("%s refused: %s", r.SOPInstanceUID, r.Reason)
			}
			seen[r.SOPInstanceUID]++
		}
	}); err != nil {
		t.Fatal(err)
	}
	for _, rec := range recs {
		if seen[rec.SOPInstanceUID] != 1 {
			t.Errorf("%s reported %d times", rec.SOPInstanceUID, seen[rec.SOPInstanceUID])
		}
	}
	if got, want := dst.storedDatasets(t), src.storedDatasets(t); !slices.Equal(got, want) {
		t.Errorf("peer holds %d datasets, sent %d", len(got), len(want))
	}
	associations, _ = dst.waitAudits(t, 3)
	if len(associations) != 3 {
		t.Errorf("%d associations, want 3", len(associations))
	}
}

// TestSenderQuotesThePeersComment: a destination's Error Comment reaches
// the transfer's reason marked as the peer's words, which the application
// log withholds (it may name a patient); the status stays readable.
func TestSenderQuotesThePeersComment(t *testing.T) {
	noGoroutineLeak(t)
	src, dst := startServer(t, nil), startServer(t, nil)
	in := synth.Study(synth.StudySpec{Seed: 23})[0]
	if _, err := src.store.in.Store(t.Context(), in.Reader(), gateway.StoreOptions{}); err != nil {
		t.Fatal(err)
	}
	other := in
	other.PixelSeed++ // same UIDs, other bytes: the destination refuses ours
	if _, err := dst.store.in.Store(t.Context(), other.Reader(), gateway.StoreOptions{}); err != nil {
		t.Fatal(err)
	}
	host, portS, _ := net.SplitHostPort(dst.addr)
	port, _ := strconv.Atoi(portS)
	peer := gateway.Peer{Name: "p", DIMSE: &gateway.DIMSEPeer{Host: host, Port: port, CalledAE: "GATEWAY"}}
	var got []gateway.SendResult
	if err := (&Sender{Blobs: src.b.Blobs}).Send(t.Context(), peer, gateway.SendHeader{}, src.records(t), func(res []gateway.SendResult) {
		got = append(got, res...)
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].OK || !strings.HasPrefix(got[0].Reason, "C-STORE ") {
		t.Fatalf("results %+v, want one refusal", got)
	}
	reason := got[0].Reason
	open, end := strings.Index(reason, "«"), strings.LastIndex(reason, "»")
	if open < 0 || end != len(reason)-len("»") || end <= open+len("«") {
		t.Fatalf("reason %q: the peer's Error Comment is not quoted as its words", reason)
	}
	if redacted := gateway.RedactPeerWords(reason); redacted != reason[:open]+"[the peer's words, withheld from the log]" || !strings.Contains(redacted, "(0111)") {
		t.Errorf("reason %q redacted to %q, want the status kept and the comment withheld", reason, redacted)
	}
}

// TestIdentifier: a C-FIND identifier with a sequence of undefined length
// parses in both VR encodings, and a match encodes back in tag order.
func TestIdentifier(t *testing.T) {
	for _, explicit := range []bool{false, true} {
		var b []byte
		b = appendElement(b, "00080052", "CS", padText("STUDY"), explicit)
		b = appendElement(b, "00100010", "PN", padText("Doe*"), explicit)
		// (0008,1110) SQ of undefined length with one item of undefined length.
		b = append(b, 0x08, 0x00, 0x10, 0x11)
		if explicit {
			b = append(b, 'S', 'Q', 0, 0)
		}
		b = append(b, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF)
		b = appendElement(b, "00081150", "UI", padUID("1.2.3"), explicit)
		b = append(b, 0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0, 0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0)
		b = appendElement(b, "0020000D", "UI", nil, explicit)
		ident, err := parseIdentifier(b, explicit)
		if err != nil {
			t.Fatalf("explicit=%v: %v", explicit, err)
		}
		q, keys, err := findQuery(ident, StudyRootFind)
		if err != nil {
			t.Fatal(err)
		}
		if q.Level != gateway.LevelStudy || len(q.Conditions) != 1 || len(keys) != 3 {
			t.Errorf("explicit=%v: query %+v, keys %+v", explicit, q, keys)
		}
		out := encodeMatch("STUDY", keys, dicomcodec.Dataset{
			"00100010": {VR: "PN", Value: []any{dicomcodec.PersonName{Alphabetic: "Doe^Jane"}}},
			"0020000D": {VR: "UI", Value: []any{"1.2.840.99"}},
		}, explicit)
		back, err := parseIdentifier(out, explicit)
		if err != nil {
			t.Fatal(err)
		}
		var tags []string
		vals := map[string]string{}
		for _, e := range back {
			tags = append(tags, e.tag)
			vals[e.tag] = string(bytes.TrimRight(e.value, " \x00"))
		}
		if !slices.IsSorted(tags) || vals["00100010"] != "Doe^Jane" || vals["0020000D"] != "1.2.840.99" || vals["00080052"] != "STUDY" {
			t.Errorf("explicit=%v: encoded match %v %v", explicit, tags, vals)
		}
	}
	if _, _, err := findQuery([]element{{tag: "00080052", value: []byte("PATIENT ")}}, PatientRootFind); err == nil {
		t.Error("PATIENT level accepted")
	}
}

// TestCloseLetsAMessageFinish: a C-STORE whose dataset is half-sent when
// Close is called is received, stored and answered; then the association
// is aborted.
func TestCloseLetsAMessageFinish(t *testing.T) {
	noGoroutineLeak(t)
	ts := startServer(t, nil)
	ts.store.began = make(chan struct{}, 1)
	inst := synth.Study(synth.StudySpec{Seed: 22})[0]
	var part10 bytes.Buffer
	inst.WriteTo(&part10)
	dsr, _ := SkipFileMeta(bytes.NewReader(part10.Bytes()))
	ds, _ := io.ReadAll(dsr)
	nc := associated(t, ts)
	nc.Write(storeCommand(inst.SOPInstanceUID))
	nc.Write(appendPData(nil, PDV{ContextID: 1, Data: ds[:len(ds)/2]}))
	<-ts.store.began // the message is in progress
	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		closed <- ts.Close(ctx)
	}()
	for !ts.closing() {
		time.Sleep(5 * time.Millisecond)
	}
	nc.Write(appendPData(nil, PDV{ContextID: 1, Last: true, Data: ds[len(ds)/2:]}))
	c := newConn(nc, 1<<20, 10*time.Second)
	typ, body, err := c.readPDU(10 * time.Second)
	if err != nil || typ != pduPData {
		t.Fatalf("response: type %d, %v", typ, err)
	}
	pdvs, err := decodePData(body, nil)
	if err != nil {
		t.Fatal(err)
	}
	rsp, err := DecodeCommand(pdvs[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := rsp.Uint16(elStatus); Status(st) != StatusSuccess {
		t.Errorf("status %s", Status(st))
	}
	// c's buffer may hold what follows already: read on through it.
	if typ, _, err := c.readPDU(10 * time.Second); err != nil || typ != pduAbort {
		t.Errorf("after the message: PDU type %d, %v; want an A-ABORT", typ, err)
	}
	if err := <-closed; err != nil {
		t.Error(err)
	}
	if _, err := ts.b.Index.GetInstance(t.Context(), inst.SOPInstanceUID); err != nil {
		t.Errorf("instance not stored: %v", err)
	}
}

// TestLargeInstanceMemoryBounded: a 256 MiB instance goes through the SCP
// into the ingest while the heap stays at a few PDU buffers: the dataset is
// piped, never held whole (sampled with runtime.ReadMemStats).
func TestLargeInstanceMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("256 MiB through the SCP")
	}
	noGoroutineLeak(t)
	ts := startServer(t, nil)
	inst := synth.Study(synth.StudySpec{Seed: 23, Rows: 512, Columns: 512, Frames: 512})[0]
	cl, err := dial(t, ts, "MODALITY")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Abort()
	pc, _ := cl.Accepted(synth.CTImageStorage, ExplicitVRLittleEndian)
	part10 := inst.Reader()
	defer part10.Close()
	ds, err := SkipFileMeta(part10)
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	stop := make(chan struct{})
	peak := make(chan uint64, 1)
	go func() {
		var m runtime.MemStats
		var hi uint64
		for {
			runtime.ReadMemStats(&m)
			hi = max(hi, m.HeapInuse)
			select {
			case <-stop:
				peak <- hi
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	res, err := cl.Store(t.Context(), pc, inst.SOPInstanceUID, ds)
	close(stop)
	hi := <-peak
	if err != nil || !res.Status.Success() {
		t.Fatalf("store: %+v %v", res, err)
	}
	if res.Bytes < 256<<20 {
		t.Fatalf("sent %d bytes", res.Bytes)
	}
	// Client, server and ingest together hold a handful of 256 KiB
	// buffers; 64 MiB over the baseline leaves the GC its slack and is
	// still a quarter of the instance.
	if grew := int64(hi) - int64(base.HeapInuse); grew > 64<<20 {
		t.Errorf("heap grew by %d MiB while a %d MiB instance went through", grew>>20, res.Bytes>>20)
	}
	t.Logf("heap in use: %d MiB at the start, at most %d MiB while %d MiB went through", base.HeapInuse>>20, hi>>20, res.Bytes>>20)
	rec, err := ts.b.Index.GetInstance(t.Context(), inst.SOPInstanceUID)
	meta, _ := io.ReadAll(FileMeta(synth.CTImageStorage, inst.SOPInstanceUID, ExplicitVRLittleEndian, "MODALITY"))
	if err != nil || rec.Size != int64(len(meta))+res.Bytes {
		t.Errorf("stored %+v (%v), want the meta and the %d dataset bytes", rec, err, res.Bytes)
	}
	if err := cl.Release(); err != nil {
		t.Error(err)
	}
}

// TestCommitmentReport: an N-EVENT-REPORT dataset with committed and failed
// instances decodes in both VR encodings, with items of defined and
// undefined length, and only the waiting transfer's AE may deliver it.
func TestCommitmentReport(t *testing.T) {
	for _, explicit := range []bool{false, true} {
		el := func(tag uint32, vr string, v []byte) []byte {
			return appendElement(nil, fmt.Sprintf("%08X", tag), vr, v, explicit)
		}
		seqHeader := func(tag uint32) []byte {
			b := binary.LittleEndian.AppendUint16(nil, uint16(tag>>16))
			b = binary.LittleEndian.AppendUint16(b, uint16(tag))
			if explicit {
				b = append(b, 'S', 'Q', 0, 0)
			}
			return binary.LittleEndian.AppendUint32(b, 0xFFFFFFFF)
		}
		var b []byte
		b = append(b, el(tagTransactionUID, "UI", padUID("2.25.7"))...)
		b = append(b, seqHeader(tagFailedSOPSeq)...)
		item := append(el(tagReferencedSOPClass, "UI", padUID(synth.CTImageStorage)), el(tagReferencedSOPInst, "UI", padUID("1.2.3"))...)
		item = append(item, el(tagFailureReason, "US", []byte{0x12, 0x01})...)
		b = appendImplicitHeader(b, tagItem, 0xFFFFFFFF)
		b = append(b, item...)
		b = appendImplicitHeader(b, tagItemDelimitation, 0)
		b = appendImplicitHeader(b, tagSequenceDelimitation, 0)
		b = append(b, seqHeader(tagReferencedSOPSeq)...)
		for _, sop := range []string{"1.2.4", "1.2.5"} {
			item := append(el(tagReferencedSOPClass, "UI", padUID(synth.CTImageStorage)), el(tagReferencedSOPInst, "UI", padUID(sop))...)
			b = appendImplicitHeader(b, tagItem, uint32(len(item)))
			b = append(b, item...)
		}
		b = appendImplicitHeader(b, tagSequenceDelimitation, 0)
		r, err := decodeCommitReport(b, explicit)
		if err != nil {
			t.Fatalf("explicit=%v: %v", explicit, err)
		}
		if r.TransactionUID != "2.25.7" || !slices.Equal(r.Committed, []string{"1.2.4", "1.2.5"}) || r.Failed["1.2.3"] != 0x0112 || len(r.Failed) != 1 {
			t.Errorf("explicit=%v: decoded %+v", explicit, r)
		}
	}
	// A report whose UIDs are not UIDs is refused without echoing them:
	// the text would reach the log and the transfer's last_error.
	for _, bad := range [][]byte{
		encodeCommitRequest("QUIXOTE^ALONSO MRN 4417", [][2]string{{synth.CTImageStorage, "1.2.6"}}),
		encodeCommitRequest("2.25.8", [][2]string{{synth.CTImageStorage, "QUIXOTE^ALONSO"}}),
	} {
		if _, err := decodeCommitReport(bad, false); err == nil || strings.Contains(err.Error(), "QUIXOTE") {
			t.Errorf("a report with a non-UID decoded: %v", err)
		}
	}
	// The request our SCU sends decodes as a report of what it asks for.
	req := encodeCommitRequest("2.25.8", [][2]string{{synth.CTImageStorage, "1.2.6"}})
	if r, err := decodeCommitReport(req, false); err != nil || !slices.Equal(r.Committed, []string{"1.2.6"}) {
		t.Errorf("request round trip: %+v %v", r, err)
	}
	var reg Commitments
	ch := reg.expect("2.25.9", "PACS")
	if reg.deliver("INTRUDER", CommitmentReport{TransactionUID: "2.25.9"}) {
		t.Error("a report from another AE was delivered")
	}
	if !reg.deliver("PACS", CommitmentReport{TransactionUID: "2.25.9"}) || (<-ch).TransactionUID != "2.25.9" {
		t.Error("the peer's report was not delivered")
	}
	if reg.deliver("PACS", CommitmentReport{TransactionUID: "2.25.9"}) {
		t.Error("a second report for one transaction was delivered")
	}
}

// TestCommitmentUnsupportedPeer: a peer that does not offer storage
// commitment makes Verify a temporary failure, not a silent success.
func TestCommitmentUnsupportedPeer(t *testing.T) {
	noGoroutineLeak(t)
	ts := startServer(t, nil)
	host, portS, _ := net.SplitHostPort(ts.addr)
	port, _ := strconv.Atoi(portS)
	peer := gateway.Peer{Name: "p", DIMSE: &gateway.DIMSEPeer{Host: host, Port: port, CalledAE: "GATEWAY", StorageCommitment: true}}
	_, err := (&Sender{Blobs: ts.b.Blobs}).Verify(t.Context(), peer, "1.2", []*gateway.InstanceRecord{{SOPClassUID: synth.CTImageStorage, SOPInstanceUID: "1.2.3"}})
	se, ok := errors.AsType[*gateway.SendError](err)
	if !ok || !se.Temporary || !strings.Contains(err.Error(), "Storage Commitment") {
		t.Errorf("Verify: %v", err)
	}
}

func TestMoveKeys(t *testing.T) {
	el := func(tag, v string) element { return element{tag: tag, value: []byte(v)} }
	for _, c := range []struct {
		ident  []element
		series string
		sops   int
		ok     bool
	}{
		{[]element{el("00080052", "STUDY "), el("0020000D", "1.2.3")}, "", 0, true},
		{[]element{el("00080052", "SERIES"), el("0020000D", "1.2.3"), el("0020000E", "1.2.3.4")}, "1.2.3.4", 0, true},
		{[]element{el("00080052", "IMAGE "), el("0020000D", "1.2.3"), el("0020000E", "1.2.3.4"), el("00080018", `1.2.3.4.5\1.2.3.4.6`)}, "1.2.3.4", 2, true},
		{[]element{el("00080052", "SERIES"), el("0020000D", "1.2.3")}, "", 0, false},       // no series UID
		{[]element{el("00080052", "STUDY "), el("0020000D", `1.2.3\1.2.4`)}, "", 0, false}, // two studies
		{[]element{el("00080052", "STUDY "), el("0020000D", "../etc")}, "", 0, false},      // not a UID
	} {
		_, _, series, sops, err := moveKeys(c.ident)
		if (err == nil) != c.ok || (c.ok && (series != c.series || len(sops) != c.sops)) {
			t.Errorf("%v: series %q, %d sops, %v", c.ident, series, len(sops), err)
		}
	}
}

// TestCommitmentReportNestingBounded: a report of sequences nested in
// undefined-length items down to half of maxReportBytes is refused as
// malformed once past maxWalkDepth, before its walk grows a goroutine
// stack by the megabyte (64 MiB before the bound).
func TestCommitmentReportNestingBounded(t *testing.T) {
	b := appendElement(nil, "00081195", "UI", padUID("1.2.3"), true)
	open := []byte{'S', 'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF}
	depth := 0
	for len(b)+36 < maxReportBytes/2 {
		b = append(b, 0x08, 0x00, 0x99, 0x11)
		b = append(b, open...)
		depth++
	}
	for range depth {
		b = append(b, 0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0, 0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0)
	}
	var stats runtime.MemStats
	_, err := decodeCommitReport(b, true)
	runtime.ReadMemStats(&stats)
	if !errors.Is(err, ErrMalformed) {
		t.Errorf("a report nested %d deep: err = %v, want malformed", depth, err)
	}
	if stats.StackInuse > 16<<20 {
		t.Errorf("decoding the report left %d MiB of stacks in use", stats.StackInuse>>20)
	}
}

// TestFindHierarchicalKeys: a SERIES query names one study and an IMAGE
// query one study and one series (PS3.4 C.4.1.2.1): without them, or with
// a wildcard or a list there, it is refused (A900) instead of matching
// across every study. A STUDY query needs no key. The rule is the same in
// both models (findQuery ignores the model); the cases name one each.
func TestFindHierarchicalKeys(t *testing.T) {
	el := func(tag, v string) element { return element{tag: tag, value: []byte(v)} }
	level := func(l string) element { return el(tagQueryRetrieveLevel, l) }
	study, series := el("0020000D", "1.2.3\x00"), el("0020000E", "1.2.3.4 ")
	for _, tt := range []struct {
		ident []element
		model string
		ok    bool
	}{
		{[]element{level("STUDY")}, StudyRootFind, true},
		{[]element{level("STUDY"), el("00100010", "Doe*")}, PatientRootFind, true},
		{[]element{level("SERIES"), study}, StudyRootFind, true},
		{[]element{level("SERIES"), study, el("00080060", "CT")}, PatientRootFind, true},
		{[]element{level("SERIES"), el("00080060", "CT")}, StudyRootFind, false},
		{[]element{level("SERIES"), el("0020000D", "")}, StudyRootFind, false},
		{[]element{level("SERIES"), el("0020000D", "*")}, StudyRootFind, false},
		{[]element{level("SERIES"), el("0020000D", "1.2.3*")}, StudyRootFind, false},
		{[]element{level("SERIES"), el("0020000D", `1.2.3\1.2.4`)}, StudyRootFind, false},
		{[]element{level("SERIES"), el("0020000D", "1.2.3,1.2.4")}, StudyRootFind, false},
		{[]element{level("IMAGE"), study, el("0020000E", "1.2.3.4,1.2.3.5")}, StudyRootFind, false},
		{[]element{level("IMAGE"), study, series}, StudyRootFind, true},
		{[]element{level("IMAGE"), study}, StudyRootFind, false},
		{[]element{level("IMAGE"), series}, PatientRootFind, false},
		{[]element{level("IMAGE"), study, el("0020000E", "1.2.3.?")}, StudyRootFind, false},
	} {
		_, _, err := findQuery(tt.ident, tt.model)
		if (err == nil) != tt.ok {
			t.Errorf("%v (%s): err %v, want ok=%v", tt.ident, tt.model, err, tt.ok)
		}
		if err != nil && len(err.Error()) > 64 {
			t.Errorf("%q is longer than an Error Comment holds", err)
		}
	}
}

// TestFindReturnsTheFlagsCreator: an identifier that asks for the
// gateway's identity conflict flag (0009,1001) alone gets its private
// creator (0009,0010) returned too, as a private element must travel.
func TestFindReturnsTheFlagsCreator(t *testing.T) {
	ident := []element{{tag: tagQueryRetrieveLevel, value: []byte("STUDY ")}, {tag: gateway.TagIdentityConflict, vr: "LO"}}
	_, keys, err := findQuery(ident, StudyRootFind)
	if err != nil {
		t.Fatal(err)
	}
	match := dicomcodec.Dataset{
		gateway.TagGatewayPrivateCreator: {VR: "LO", Value: []any{gateway.GatewayPrivateCreator}},
		gateway.TagIdentityConflict:      {VR: "LO", Value: []any{gateway.IdentityConflictValue, "A100", ""}},
	}
	back, err := parseIdentifier(encodeMatch("STUDY", keys, match, true), true)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range back {
		got[e.tag] = strings.TrimRight(string(e.value), " \x00")
	}
	if got[gateway.TagGatewayPrivateCreator] != gateway.GatewayPrivateCreator || !strings.HasPrefix(got[gateway.TagIdentityConflict], gateway.IdentityConflictValue) {
		t.Errorf("match returned %v, want the flag with its creator", got)
	}
}

// TestFindBinaryKey: a matching key of a binary VR (Rows, US) is matched by
// its number, in Implicit and Explicit VR: 512 becomes the condition
// Rows = 512, and 8224 (whose two bytes are spaces) is not trimmed into a
// universal match. Before, the raw bytes went to the query parser as text:
// A900 for 512, no condition at all for 8224.
func TestFindBinaryKey(t *testing.T) {
	for _, explicit := range []bool{false, true} {
		for _, rows := range []uint16{512, 0x2020} {
			var b []byte
			b = appendElement(b, "00080052", "CS", padText("IMAGE"), explicit)
			b = appendElement(b, "0020000D", "UI", padUID("1.2.3"), explicit)
			b = appendElement(b, "0020000E", "UI", padUID("1.2.3.4"), explicit)
			b = appendElement(b, "00280010", "US", binary.LittleEndian.AppendUint16(nil, rows), explicit)
			ident, err := parseIdentifier(b, explicit)
			if err != nil {
				t.Fatal(err)
			}
			q, _, err := findQuery(ident, StudyRootFind)
			if err != nil {
				t.Errorf("explicit=%v: Rows=%d refused: %v", explicit, rows, err)
				continue
			}
			if got := fmt.Sprint(q.Conditions); !strings.Contains(got, strconv.Itoa(int(rows))) {
				t.Errorf("explicit=%v: Rows=%d: conditions %s", explicit, rows, got)
			}
		}
	}
}

package gateway_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/testpki"
)

// syslogAuditMessage is what the tests read back from a DICOM Audit
// Message.
type syslogAuditMessage struct {
	Event struct {
		ActionCode string `xml:"EventActionCode,attr"`
		Outcome    string `xml:"EventOutcomeIndicator,attr"`
		DateTime   string `xml:"EventDateTime,attr"`
		EventID    struct {
			Code   string `xml:"csd-code,attr"`
			System string `xml:"codeSystemName,attr"`
			Text   string `xml:"originalText,attr"`
		} `xml:"EventID"`
		OutcomeDescription string `xml:"EventOutcomeDescription"`
	} `xml:"EventIdentification"`
	Participants []struct {
		UserID    string `xml:"UserID,attr"`
		Requestor bool   `xml:"UserIsRequestor,attr"`
		NAP       string `xml:"NetworkAccessPointID,attr"`
		NAPType   string `xml:"NetworkAccessPointTypeCode,attr"`
		Roles     []struct {
			Code string `xml:"csd-code,attr"`
		} `xml:"RoleIDCode"`
	} `xml:"ActiveParticipant"`
	Source struct {
		SourceID string `xml:"AuditSourceID,attr"`
	} `xml:"AuditSourceIdentification"`
	Objects []struct {
		ID       string `xml:"ParticipantObjectID,attr"`
		TypeCode string `xml:"ParticipantObjectTypeCode,attr"`
		TypeRole string `xml:"ParticipantObjectTypeCodeRole,attr"`
		IDType   struct {
			Code string `xml:"csd-code,attr"`
		} `xml:"ParticipantObjectIDTypeCode"`
	} `xml:"ParticipantObjectIdentification"`
}

func retrieveEvent(n int) *gateway.AuditEvent {
	return &gateway.AuditEvent{
		ID: fmt.Sprintf("a%d", n), Seq: int64(n), Time: time.Date(2026, 12, 1, 10, 0, n, 0, time.UTC), Gateway: "hampshire",
		Actor:  gateway.Principal{Name: "dr-jones", Address: "192.0.2.7"},
		Action: gateway.ActionRetrieve, Outcome: gateway.OutcomeSuccess,
		StudyUIDs: []string{"1.2.3.4"}, PatientIDs: []string{fmt.Sprintf("PID-%d", n)},
	}
}

// parseSyslog checks an RFC 5424 message's header (pri: "<85>" is authpriv
// notice, "<84>" authpriv warning) and returns its DICOM Audit Message.
func parseSyslog(t *testing.T, msg []byte, pri string) syslogAuditMessage {
	t.Helper()
	fields := strings.SplitN(string(msg), " ", 8)
	if len(fields) != 8 || fields[0] != pri+"1" || fields[3] != "dicom-gateway" || fields[5] != "IHE+RFC-3881" || fields[6] != "-" {
		t.Fatalf("not an RFC 5424 message as expected: %.200q", msg)
	}
	if _, err := time.Parse(time.RFC3339Nano, fields[1]); err != nil {
		t.Fatalf("timestamp %q: %v", fields[1], err)
	}
	var m syslogAuditMessage
	if err := xml.Unmarshal([]byte(fields[7]), &m); err != nil {
		t.Fatalf("MSG is not a DICOM Audit Message: %v\n%s", err, fields[7])
	}
	return m
}

// readFrames reads octet-counted syslog frames (RFC 6587 3.4.1).
func readFrames(t *testing.T, r *bufio.Reader, n int) [][]byte {
	t.Helper()
	var out [][]byte
	for range n {
		lenText, err := r.ReadString(' ')
		if err != nil {
			t.Fatalf("frame length: %v", err)
		}
		size, err := strconv.Atoi(strings.TrimSpace(lenText))
		if err != nil {
			t.Fatalf("frame length %q", lenText)
		}
		msg := make([]byte, size)
		if _, err := io.ReadFull(r, msg); err != nil {
			t.Fatal(err)
		}
		out = append(out, msg)
	}
	return out
}

func startExporter(t *testing.T, e *gateway.SyslogExporter) {
	t.Helper()
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		e.Close(ctx)
	})
}

// TestSyslogExportTCP: events arrive in order as octet-counted RFC 5424
// messages whose DICOM Audit Message names the event, the user and its
// address, this gateway, the patient and the study; a receiver that drops
// the connection gets the rest on a new one.
func TestSyslogExportTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	e := &gateway.SyslogExporter{URL: "tcp://" + ln.Addr().String(), Hostname: "gw-host"}
	startExporter(t, e)
	for i := 1; i <= 3; i++ {
		e.Export(retrieveEvent(i))
	}
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	frames := readFrames(t, bufio.NewReader(conn), 3)
	for i, f := range frames {
		m := parseSyslog(t, f, "<85>")
		if m.Event.EventID.Code != "110104" || m.Event.EventID.System != "DCM" || m.Event.ActionCode != "R" || m.Event.Outcome != "0" {
			t.Errorf("event %d: %+v", i+1, m.Event)
		}
		if len(m.Participants) != 2 || m.Participants[0].UserID != "dr-jones" || !m.Participants[0].Requestor ||
			m.Participants[0].NAP != "192.0.2.7" || m.Participants[0].NAPType != "2" || m.Participants[1].UserID != "hampshire" {
			t.Errorf("event %d participants: %+v", i+1, m.Participants)
		}
		if len(m.Participants[0].Roles) != 1 || m.Participants[0].Roles[0].Code != "110152" {
			t.Errorf("event %d: the reader is not in the destination role: %+v", i+1, m.Participants[0].Roles)
		}
		if len(m.Objects) != 2 || m.Objects[0].ID != fmt.Sprintf("PID-%d", i+1) || m.Objects[0].TypeCode != "1" ||
			m.Objects[1].ID != "1.2.3.4" || m.Objects[1].IDType.Code != "110180" {
			t.Errorf("event %d objects: %+v", i+1, m.Objects)
		}
		if m.Source.SourceID != "hampshire" {
			t.Errorf("source %q", m.Source.SourceID)
		}
	}
	// The receiver goes away; the next events come on a new connection.
	conn.Close()
	for i := 4; i <= 5; i++ {
		e.Export(retrieveEvent(i))
	}
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	var got []string
	for len(got) < 2 {
		conn, err := ln.Accept()
		if err != nil {
			t.Fatalf("no reconnection: %v (received %v)", err, got)
		}
		r := bufio.NewReader(conn)
		for len(got) < 2 {
			conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := r.Peek(1); err != nil {
				break // this connection failed under the exporter: it reconnects
			}
			for _, f := range readFrames(t, r, 1) {
				got = append(got, parseSyslog(t, f, "<85>").Objects[0].ID)
			}
		}
		conn.Close()
	}
	// The write into a dropped connection may succeed before the drop is
	// seen, so event 4 can be lost with it, as with any syslog over TCP;
	// event 5 must arrive.
	if got[len(got)-1] != "PID-5" {
		t.Fatalf("after reconnecting received %v, want PID-5 last", got)
	}
}

// TestSyslogExportTLS: TLS with the receiver's CA; a receiver whose
// certificate the exporter does not trust gets nothing.
func TestSyslogExportTLS(t *testing.T) {
	ca := testpki.NewCA(t, "ARR CA")
	pool := ca.Pool
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{ca.Server(t, "arr.test").TLS}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	e := &gateway.SyslogExporter{URL: "tls://" + ln.Addr().String(), TLS: &tls.Config{RootCAs: pool, ServerName: "arr.test"}}
	startExporter(t, e)
	e.Export(retrieveEvent(1))
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	m := parseSyslog(t, readFrames(t, bufio.NewReader(conn), 1)[0], "<85>")
	if m.Objects[0].ID != "PID-1" {
		t.Fatalf("objects %+v", m.Objects)
	}

	untrusting := &gateway.SyslogExporter{URL: "tls://" + ln.Addr().String(), TLS: &tls.Config{ServerName: "arr.test"}}
	startExporter(t, untrusting)
	untrusting.Export(retrieveEvent(2))
	c2, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, _ := c2.Read(make([]byte, 1)); n > 0 || untrusting.Sent() != 0 {
		t.Fatal("an exporter that does not trust the receiver's certificate sent data")
	}
}

// TestSyslogExportUDP: one message per datagram.
func TestSyslogExportUDP(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	e := &gateway.SyslogExporter{URL: "udp://" + pc.LocalAddr().String()}
	startExporter(t, e)
	e.Export(retrieveEvent(1))
	failed := retrieveEvent(2)
	failed.Action, failed.Outcome, failed.Detail = gateway.ActionAccessDenied, gateway.OutcomeFailure, map[string]any{"reason": "role read missing"}
	e.Export(failed)
	buf := make([]byte, 65536)
	var msgs []syslogAuditMessage
	for len(msgs) < 2 {
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		pri := "<85>"
		if len(msgs) == 1 {
			pri = "<84>" // the failure: severity warning
		}
		msgs = append(msgs, parseSyslog(t, buf[:n], pri))
	}
	if m := msgs[1]; m.Event.EventID.Code != "110113" || m.Event.Outcome != "4" || m.Event.OutcomeDescription != "role read missing" {
		t.Fatalf("access denied event: %+v", m.Event)
	}
}

// TestSyslogExportNeverBlocks: with nobody listening, Export returns at once
// and counts what the full queue drops; the audit log's own outcome is what
// ExportingAuditor returns, and a refused event is not exported.
func TestSyslogExportNeverBlocks(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close() // nobody listens there now
	e := &gateway.SyslogExporter{URL: "tcp://" + addr, QueueSize: 2}
	startExporter(t, e)
	start := time.Now()
	for i := range 10 {
		e.Export(retrieveEvent(i))
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Export blocked for %v", d)
	}
	if e.Dropped() < 7 {
		t.Fatalf("dropped %d of 10 with a queue of 2 and no receiver, want at least 7", e.Dropped())
	}
	down := errors.New("audit disk full")
	a := gateway.ExportingAuditor{Log: failingAuditor{down}, Exporter: e}
	before := e.Dropped()
	if err := a.Record(t.Context(), retrieveEvent(99)); !errors.Is(err, down) {
		t.Fatalf("Record: %v, want the audit log's error", err)
	}
	if e.Dropped() != before {
		t.Fatal("an event the audit log refused was handed to the exporter")
	}
	for _, bad := range []string{"http://x:1", "tcp://nohostport", "udp://:", "::"} {
		if err := (&gateway.SyslogExporter{URL: bad}).Start(); !errors.Is(err, gateway.ErrInvalid) {
			t.Errorf("URL %q: err=%v, want ErrInvalid", bad, err)
		}
	}
}

type failingAuditor struct{ err error }

func (f failingAuditor) Record(context.Context, *gateway.AuditEvent) error { return f.err }

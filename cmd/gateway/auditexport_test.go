package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestAuditExportToSyslog: with --audit-syslog, a QIDO-RS search is
// recorded in the audit log and also arrives at the syslog receiver as a
// DICOM "Query" audit message (EventID 110112), and /metrics counts it.
func TestAuditExportToSyslog(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := testConfig(t)
	cfg.AuditSyslog = "tcp://" + ln.Addr().String()
	cfg.File.AuditSyslog.URL = cfg.AuditSyslog
	m := MustRunMain(t, cfg, nil)
	base := "http://" + m.Addr
	if code, body := get(t, base+"/dicomweb/studies?PatientID=SYN-AUDIT"); code != http.StatusOK {
		t.Fatalf("QIDO: %d %s", code, body)
	}
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	lenText, err := r.ReadString(' ')
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(lenText))
	msg := make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		t.Fatal(err)
	}
	if s := string(msg); !strings.HasPrefix(s, "<85>1 ") || !strings.Contains(s, `<EventID csd-code="110112" codeSystemName="DCM" originalText="Query">`) ||
		!strings.Contains(s, `AuditSourceID="hampshire"`) {
		t.Fatalf("syslog message is not the query's DICOM audit message:\n%s", s)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, body := get(t, base+"/metrics")
		if strings.Contains(body, "gateway_audit_export_sent_total 1") || strings.Contains(body, "gateway_audit_export_sent_total 2") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics does not count the exported event:\n%.3000s", body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Audit export to a hospital's Audit Record Repository (IHE ATNA): each
// recorded audit event is also sent as a DICOM Audit Message (PS3.15 A.5,
// the XML schema of A.5.1) in an RFC 5424 syslog message, over TLS (RFC
// 5425), TCP (octet counting, RFC 6587) or UDP (RFC 5426). The local
// hash-chained log stays the source of truth and is written first; export
// is best effort behind it, so a repository that is down never blocks or
// fails a request: events wait in a bounded queue, and past its bound the
// newest are dropped and counted.

// SyslogExporter sends audit events to one syslog receiver. Configure the
// exported fields, call Start, and Close when done.
type SyslogExporter struct {
	// URL is tls://host:port, tcp://host:port or udp://host:port.
	URL string
	// TLS configures tls:// (server verification, client certificate).
	TLS *tls.Config
	// Hostname and AppName go into every message header (defaults: the
	// host's name, "dicom-gateway").
	Hostname, AppName string
	// QueueSize bounds the events waiting to be sent (default 10,000).
	QueueSize int
	// Logger receives connection problems, never message contents; nil
	// discards them (the exporter never falls back to a process-wide
	// logger).
	Logger *slog.Logger

	queue   chan []byte
	sent    atomic.Int64
	dropped atomic.Int64
	stop    context.CancelFunc
	done    chan struct{}
	mu      sync.RWMutex // guards closed against Export during Close
	closed  bool
	network string
	address string
	dial    func(ctx context.Context) (net.Conn, error)
}

// Start checks the URL and starts the sender.
func (e *SyslogExporter) Start() error {
	u, err := url.Parse(e.URL)
	if err != nil || u.Host == "" || u.Port() == "" {
		return fmt.Errorf("audit syslog URL %q: want tls://host:port, tcp://host:port or udp://host:port: %w", e.URL, ErrInvalid)
	}
	e.network, e.address = u.Scheme, u.Host
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	switch u.Scheme {
	case "tcp", "udp":
		e.dial = func(ctx context.Context) (net.Conn, error) { return dialer.DialContext(ctx, u.Scheme, u.Host) }
	case "tls":
		conf := e.TLS
		if conf == nil {
			conf = &tls.Config{}
		}
		conf = conf.Clone()
		conf.MinVersion = max(conf.MinVersion, tls.VersionTLS12)
		if conf.ServerName == "" {
			conf.ServerName = u.Hostname()
		}
		td := &tls.Dialer{NetDialer: dialer, Config: conf}
		e.dial = func(ctx context.Context) (net.Conn, error) { return td.DialContext(ctx, "tcp", u.Host) }
	default:
		return fmt.Errorf("audit syslog URL %q: scheme %q: want tls, tcp or udp: %w", e.URL, u.Scheme, ErrInvalid)
	}
	if e.Hostname == "" {
		e.Hostname, _ = os.Hostname()
	}
	if e.AppName == "" {
		e.AppName = "dicom-gateway"
	}
	size := e.QueueSize
	if size <= 0 {
		size = 10000
	}
	e.queue = make(chan []byte, size)
	e.done = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	e.stop = cancel
	go e.run(ctx)
	return nil
}

// Sent and Dropped count messages delivered to the receiver's connection
// and messages dropped because the queue was full.
func (e *SyslogExporter) Sent() int64    { return e.sent.Load() }
func (e *SyslogExporter) Dropped() int64 { return e.dropped.Load() }

// Export queues ev (already recorded in the audit log) for sending. It
// never blocks.
func (e *SyslogExporter) Export(ev *AuditEvent) {
	msg, err := SyslogMessage(ev, e.Hostname, e.AppName)
	if err != nil {
		e.logger().Error("audit event not exported: cannot encode it", "audit_id", ev.ID, LogKeyError, err.Error())
		return
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		e.dropped.Add(1)
		return
	}
	select {
	case e.queue <- msg:
	default:
		if e.dropped.Add(1)%1000 == 1 {
			e.logger().Warn("audit export queue full: events dropped from the export (the audit log keeps them)",
				"dropped_total", e.dropped.Load(), "receiver", e.address)
		}
	}
}

// Close stops the sender after it has tried, for at most ctx's time, to
// send what is queued.
func (e *SyslogExporter) Close(ctx context.Context) error {
	e.mu.Lock()
	if !e.closed {
		e.closed = true
		close(e.queue)
	}
	e.mu.Unlock()
	select {
	case <-e.done:
		return nil
	case <-ctx.Done():
		e.stop()
		<-e.done
		return fmt.Errorf("audit export: %d events left unsent: %w", len(e.queue), ctx.Err())
	}
}

func (e *SyslogExporter) logger() *slog.Logger {
	if e.Logger != nil {
		return e.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// run sends queued messages, reconnecting with backoff (1 s doubling to 30
// s) and resending the message whose write failed.
func (e *SyslogExporter) run(ctx context.Context) {
	defer close(e.done)
	var conn net.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	backoff := time.Second
	for msg := range e.queue {
		for {
			if ctx.Err() != nil {
				return
			}
			if conn == nil {
				c, err := e.dial(ctx)
				if err != nil {
					e.logger().Warn("audit export: cannot connect to the syslog receiver; retrying", "receiver", e.address,
						"retry_in", backoff.String(), LogKeyError, err.Error())
					select {
					case <-ctx.Done():
						return
					case <-time.After(backoff):
					}
					backoff = min(backoff*2, 30*time.Second)
					continue
				}
				conn, backoff = c, time.Second
			}
			// A connection that cannot take a deadline could block this
			// sender for ever: drop it like one whose write failed.
			err := conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
			switch {
			case err != nil:
			case e.network == "udp":
				_, err = conn.Write(msg)
			default:
				_, err = io.WriteString(conn, strconv.Itoa(len(msg))+" ")
				if err == nil {
					_, err = conn.Write(msg)
				}
			}
			if err != nil {
				e.logger().Warn("audit export: send failed; reconnecting", "receiver", e.address, LogKeyError, err.Error())
				conn.Close()
				conn = nil
				continue
			}
			e.sent.Add(1)
			break
		}
	}
}

// ExportingAuditor records each event in Log (the source of truth; its
// error is returned, so requests still fail closed) and then hands it to
// Exporter.
type ExportingAuditor struct {
	Log      Auditor
	Exporter *SyslogExporter
}

func (a ExportingAuditor) Record(ctx context.Context, ev *AuditEvent) error {
	if err := a.Log.Record(ctx, ev); err != nil {
		return err
	}
	a.Exporter.Export(ev)
	return nil
}

// SyslogMessage is ev as an RFC 5424 message: facility authpriv (10),
// severity notice (5) or warning (4) for failures, MSGID "IHE+RFC-3881" as
// IHE ITI-20 asks, no structured data, and a DICOM Audit Message as MSG.
func SyslogMessage(ev *AuditEvent, hostname, appName string) ([]byte, error) {
	body, err := DICOMAuditMessage(ev)
	if err != nil {
		return nil, err
	}
	severity := 5
	if ev.Outcome != OutcomeSuccess {
		severity = 4
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "<%d>1 %s %s %s %d IHE+RFC-3881 - ", 10*8+severity,
		ev.Time.UTC().Format("2006-01-02T15:04:05.000000Z"), syslogField(hostname, 255), syslogField(appName, 48), os.Getpid())
	b.Write(body)
	return b.Bytes(), nil
}

// syslogField makes s a valid header field: printable US-ASCII, no space,
// "-" when empty.
func syslogField(s string, maxLen int) string {
	out := make([]byte, 0, min(len(s), maxLen))
	for i := 0; i < len(s) && len(out) < maxLen; i++ {
		if c := s[i]; c > 32 && c < 127 {
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return "-"
	}
	return string(out)
}

// The DICOM Audit Message schema (PS3.15 A.5.1), as far as the gateway
// fills it.
type (
	auditMessageXML struct {
		XMLName            xml.Name               `xml:"AuditMessage"`
		Event              eventIdentificationXML `xml:"EventIdentification"`
		ActiveParticipants []activeParticipantXML `xml:"ActiveParticipant"`
		Source             auditSourceXML         `xml:"AuditSourceIdentification"`
		Objects            []participantObjectXML `xml:"ParticipantObjectIdentification"`
	}
	codedValueXML struct {
		Code         string `xml:"csd-code,attr"`
		System       string `xml:"codeSystemName,attr"`
		OriginalText string `xml:"originalText,attr"`
	}
	eventIdentificationXML struct {
		ActionCode         string          `xml:"EventActionCode,attr"`
		DateTime           string          `xml:"EventDateTime,attr"`
		OutcomeIndicator   string          `xml:"EventOutcomeIndicator,attr"`
		EventID            codedValueXML   `xml:"EventID"`
		EventTypeCodes     []codedValueXML `xml:"EventTypeCode"`
		OutcomeDescription string          `xml:"EventOutcomeDescription,omitempty"`
	}
	activeParticipantXML struct {
		UserID                     string          `xml:"UserID,attr"`
		UserName                   string          `xml:"UserName,attr,omitempty"`
		UserIsRequestor            bool            `xml:"UserIsRequestor,attr"`
		NetworkAccessPointID       string          `xml:"NetworkAccessPointID,attr,omitempty"`
		NetworkAccessPointTypeCode string          `xml:"NetworkAccessPointTypeCode,attr,omitempty"`
		RoleIDCodes                []codedValueXML `xml:"RoleIDCode"`
	}
	auditSourceXML struct {
		SiteID   string        `xml:"AuditEnterpriseSiteID,attr,omitempty"`
		SourceID string        `xml:"AuditSourceID,attr"`
		TypeCode codedValueXML `xml:"AuditSourceTypeCode"`
	}
	participantObjectXML struct {
		ID         string        `xml:"ParticipantObjectID,attr"`
		TypeCode   string        `xml:"ParticipantObjectTypeCode,attr"`
		TypeRole   string        `xml:"ParticipantObjectTypeCodeRole,attr"`
		IDTypeCode codedValueXML `xml:"ParticipantObjectIDTypeCode"`
		Query      string        `xml:"ParticipantObjectQuery,omitempty"`
	}
)

func codedXML(c FHIRCoding) codedValueXML {
	return codedValueXML{Code: c.Code, System: "DCM", OriginalText: c.Display}
}

// DICOMAuditMessage is ev as a DICOM Audit Message (PS3.15 A.5.1), with the
// same event IDs, roles and participant objects as the FHIR export
// (FHIRAuditEventOf): the requesting user with its network address, this
// gateway, a transfer's destination, then the patients and studies.
func DICOMAuditMessage(ev *AuditEvent) ([]byte, error) {
	kind, ok := auditKinds[ev.Action]
	if !ok {
		kind = auditKinds[ActionAdmin]
	}
	self := ev.Gateway
	if self == "" {
		self = "gateway"
	}
	m := auditMessageXML{
		Event: eventIdentificationXML{
			ActionCode:       kind.action,
			DateTime:         ev.Time.UTC().Format("2006-01-02T15:04:05.000000Z"),
			OutcomeIndicator: fhirOutcome[ev.Outcome],
			EventID:          codedXML(kind.typ),
		},
		Source: auditSourceXML{SiteID: self, SourceID: self,
			TypeCode: codedValueXML{Code: "4", System: "DCM", OriginalText: "Application Server"}},
	}
	if kind.subtype != nil {
		m.Event.EventTypeCodes = append(m.Event.EventTypeCodes, codedXML(*kind.subtype))
	}
	if reason, ok := ev.Detail["reason"].(string); ok && ev.Outcome != OutcomeSuccess {
		m.Event.OutcomeDescription = reason
	}
	actor := activeParticipantXML{UserID: ev.Actor.Name, UserName: ev.Actor.Name, UserIsRequestor: true}
	if actor.UserID == "" {
		actor.UserID = "anonymous"
	}
	if kind.actorRole != nil {
		actor.RoleIDCodes = []codedValueXML{codedXML(*kind.actorRole)}
	}
	if ev.Actor.Address != "" {
		actor.NetworkAccessPointID, actor.NetworkAccessPointTypeCode = ev.Actor.Address, "1"
		if _, err := netip.ParseAddr(ev.Actor.Address); err == nil {
			actor.NetworkAccessPointTypeCode = "2"
		}
	}
	m.ActiveParticipants = []activeParticipantXML{actor, {UserID: self, RoleIDCodes: []codedValueXML{codedXML(kind.ownRole)}}}
	if peer, ok := ev.Detail["destination"].(string); ok && peer != "" {
		m.ActiveParticipants = append(m.ActiveParticipants, activeParticipantXML{UserID: peer, RoleIDCodes: []codedValueXML{codedXML(dcmDestinationRole)}})
	}
	for _, id := range ev.PatientIDs {
		m.Objects = append(m.Objects, participantObjectXML{ID: id, TypeCode: "1", TypeRole: "1",
			IDTypeCode: codedValueXML{Code: "2", System: "RFC-3881", OriginalText: "Patient Number"}})
	}
	for _, uid := range ev.StudyUIDs {
		m.Objects = append(m.Objects, participantObjectXML{ID: uid, TypeCode: "2", TypeRole: "3", IDTypeCode: codedXML(dcmStudyInstanceUID)})
	}
	out, err := xml.Marshal(m)
	if err != nil {
		return nil, errors.Join(ErrInvalid, err)
	}
	return append([]byte(xml.Header), out...), nil
}

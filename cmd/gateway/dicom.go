package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/dimse"
	"github.com/dicom-gateway/gateway/gateway"
)

// DicomConfig is the dicom: section of --config: who may open associations
// with the DIMSE listener, and its limits.
type DicomConfig struct {
	// Allow lists the calling AE titles admitted, the addresses each may
	// connect from and its roles (store to send by C-STORE; C-ECHO needs
	// none). With no auth configured, loopback callers not listed are
	// admitted too, as HTTP admits them.
	Allow []dimse.AllowRule `yaml:"allow"`
	// MaxAssociations bounds concurrent associations (default 32).
	MaxAssociations int `yaml:"max_associations"`
	// MaxPDULength is the Maximum Length announced (default 262144).
	MaxPDULength uint32 `yaml:"max_pdu_length"`
	// IdleTimeout ends an association silent for this long (default 5m);
	// PDUTimeout bounds one PDU's arrival once begun (default 60s).
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	PDUTimeout  time.Duration `yaml:"pdu_timeout"`
	// TLSClientCAFile is the CA bundle client certificates on
	// --dicom-tls-listen must chain to: both ends authenticate (PS3.15
	// B.1). The server certificate is the tls: section's.
	TLSClientCAFile string `yaml:"tls_client_ca_file"`
}

func addDicomFlags(fs *flag.FlagSet, cfg *Config) {
	fs.StringVar(&cfg.DicomListen, "dicom-listen", "", "DIMSE (DICOM upper layer) address, e.g. 127.0.0.1:11112; off when empty")
	fs.StringVar(&cfg.DicomAETitle, "dicom-ae-title", "GATEWAY", "this gateway's AE title: the called AE of the listener, the calling AE towards DIMSE peers")
	fs.StringVar(&cfg.DicomTLSListen, "dicom-tls-listen", "", "DIMSE over TLS with client certificates (PS3.15 B.1), e.g. 0.0.0.0:2762; needs tls.cert_file/key_file and dicom.tls_client_ca_file; off when empty")
}

// validateDicom checks the dicom: section and the DIMSE flags.
func (c *Config) validateDicom() []error {
	var errs []error
	if err := dimse.ValidateAETitle(c.DicomAETitle); err != nil {
		errs = append(errs, fmt.Errorf("--dicom-ae-title: %w", err))
	}
	if _, err := dimse.NewAccess(c.File.Dicom.Allow, false); err != nil {
		errs = append(errs, err)
	}
	d := c.File.Dicom
	if d.MaxAssociations < 0 || d.IdleTimeout < 0 || d.PDUTimeout < 0 {
		errs = append(errs, errors.New("dicom: max_associations, idle_timeout and pdu_timeout may not be negative"))
	}
	if d.MaxPDULength != 0 && d.MaxPDULength < 4096 {
		errs = append(errs, fmt.Errorf("dicom.max_pdu_length %d: at least 4096", d.MaxPDULength))
	}
	if c.DicomTLSListen != "" {
		if !c.File.TLS.Enabled() || d.TLSClientCAFile == "" {
			errs = append(errs, errors.New("--dicom-tls-listen needs the server certificate (tls.cert_file, tls.key_file) and the CA of the callers' certificates (dicom.tls_client_ca_file) in --config"))
		}
		if !isLoopback(c.DicomTLSListen) && len(d.Allow) == 0 {
			errs = append(errs, fmt.Errorf("--dicom-tls-listen %s admits no caller from another machine: list calling AE titles and their hosts in dicom.allow of --config", c.DicomTLSListen))
		}
	}
	if c.DicomTLSListen == "" {
		for i, r := range d.Allow {
			if r.Certificate != nil {
				errs = append(errs, fmt.Errorf("dicom.allow[%d] (%s) admits its AE title only with a certificate, which needs --dicom-tls-listen", i, r.AETitle))
			}
		}
	}
	if c.DicomListen != "" && !isLoopback(c.DicomListen) && len(d.Allow) == 0 {
		errs = append(errs, fmt.Errorf("--dicom-listen %s admits no caller from another machine: list calling AE titles and their hosts in dicom.allow of --config, or bind a loopback address such as 127.0.0.1:11112", c.DicomListen))
	}
	return errs
}

// startDicom starts the DIMSE listener when --dicom-listen is set, and
// makes DIMSE peers reachable by C-STORE either way. It runs after
// wireServices and before the transfer workers start.
func (m *Main) startDicom() error {
	cfg := m.Config
	// Storage commitment reports a peer sends on an association of its
	// own reach the waiting transfer through this.
	commitments := &dimse.Commitments{}
	dimseSender := &dimse.Sender{
		Blobs: m.Backends.Blobs, CallingAE: cfg.DicomAETitle, MaxPDULength: cfg.File.Dicom.MaxPDULength,
		PDUTimeout: cfg.File.Dicom.PDUTimeout, Commitments: commitments, Logger: m.Logger,
		TLSConfig: func(p gateway.Peer) (*tls.Config, error) {
			return dicomweb.ClientTLSConfig(dicomweb.ClientTLSOptions{CAFile: p.TLS.CAFile, CertFile: p.TLS.CertFile, KeyFile: p.TLS.KeyFile})
		},
	}
	m.Transfers.Sender = peerSender{web: m.Transfers.Sender, dimse: dimseSender}
	for _, p := range cfg.File.Peers {
		if p.DIMSE != nil && !p.DIMSE.TLS && !isLoopback(net.JoinHostPort(p.DIMSE.Host, "0")) {
			m.Logger.Warn("DIMSE PEER WITHOUT TLS: patient data sent to this peer by C-STORE crosses the network in clear; set dimse.tls with its tls: settings, or protect the path",
				gateway.LogKeyPeer, p.Name, "host", p.DIMSE.Host)
		}
	}
	if cfg.DicomListen == "" && cfg.DicomTLSListen == "" {
		return nil
	}
	access, err := dimse.NewAccess(cfg.File.Dicom.Allow, !cfg.File.Auth.Enabled())
	if err != nil {
		return err
	}
	m.Dicom = &dimse.Server{
		AETitle:         cfg.DicomAETitle,
		Store:           storeService{svc: m.Services.Store},
		Finder:          queryService{svc: m.Services.Query},
		Commitments:     commitments,
		Mover:           indexMover{index: m.Backends.Index, retrieve: m.Services.Retrieve, peers: cfg.File.Peers},
		MoveSender:      dimseSender,
		Access:          access,
		MaxAssociations: cfg.File.Dicom.MaxAssociations,
		MaxPDULength:    cfg.File.Dicom.MaxPDULength,
		IdleTimeout:     cfg.File.Dicom.IdleTimeout,
		PDUTimeout:      cfg.File.Dicom.PDUTimeout,
		Logger:          m.Logger.With("component", "dimse"),
	}
	if cfg.DicomListen != "" {
		if err := m.Dicom.Listen(cfg.DicomListen); err != nil {
			return fmt.Errorf("--dicom-listen %s: %w", cfg.DicomListen, err)
		}
		m.DicomAddr = m.Dicom.Addr().String()
	}
	if cfg.DicomTLSListen != "" {
		conf, err := dicomweb.ServerTLSConfig(dicomweb.TLSConfig{CertFile: cfg.File.TLS.CertFile, KeyFile: cfg.File.TLS.KeyFile,
			MinVersion: cfg.File.TLS.MinVersion, ClientCAFile: cfg.File.Dicom.TLSClientCAFile})
		if err != nil {
			return fmt.Errorf("--dicom-tls-listen: %w", err)
		}
		conf.ClientAuth = tls.RequireAndVerifyClientCert // PS3.15 B.1: both ends authenticate
		addr, err := m.Dicom.ListenTLS(cfg.DicomTLSListen, conf)
		if err != nil {
			return fmt.Errorf("--dicom-tls-listen %s: %w", cfg.DicomTLSListen, err)
		}
		m.DicomTLSAddr = addr.String()
	}
	if cfg.DicomTLSListen != "" {
		for _, r := range cfg.File.Dicom.Allow {
			if r.Certificate == nil {
				m.Logger.Warn("DIMSE AE TITLE NOT TIED TO A CERTIFICATE: any holder of a certificate of dicom.tls_client_ca_file may claim it over TLS; set certificate (subject_cn, san_dns or san_uri) in its dicom.allow rule",
					"ae_title", r.AETitle)
			}
		}
	}
	m.Logger.Info("DIMSE listening", "addr", m.DicomAddr, "tls_addr", m.DicomTLSAddr, "ae_title", cfg.DicomAETitle, "allow_rules", len(cfg.File.Dicom.Allow))
	return nil
}

// closeDicom stops the listener: running associations finish until ctx
// ends, then are aborted.
func (m *Main) closeDicom(ctx context.Context) error {
	if m.Dicom == nil {
		return nil
	}
	if err := m.Dicom.Close(ctx); err != nil {
		return fmt.Errorf("dicom listener: %w", err)
	}
	return nil
}

// storeService is the thin adapter from dimse.Store to the store service
// STOW-RS uses (gateway.StoreService): the same Ingester (guarded parser,
// idempotent duplicates), routing rules and audit, with the calling AE
// title as the principal. One association is one store request: audited
// once, when it ends.
type storeService struct {
	svc *gateway.StoreService
}

var _ dimse.Store = storeService{}

func (s storeService) AcceptsTransferSyntax(uid string) bool {
	return dicomcodec.ReadsTransferSyntax(uid)
}

func (s storeService) Open(ctx context.Context, c dimse.Caller) (dimse.StoreSession, error) {
	b, err := s.svc.Begin(ctx, gateway.StoreRequest{Caller: dimseCaller(c, "DIMSE C-STORE")})
	if err != nil {
		return nil, err
	}
	return &storeSession{batch: b}, nil
}

// dimseCaller is the service's caller for a DIMSE request: the calling AE
// title as the principal, the service and called AE title as the route.
func dimseCaller(c dimse.Caller, service string) gateway.Caller {
	return gateway.Caller{Principal: c.Principal(), Route: service + " " + c.CalledAE}
}

type storeSession struct {
	batch *gateway.StoreBatch
	part  int
}

func (ss *storeSession) Store(r io.Reader, sopClassUID, sopInstanceUID string) (*gateway.InstanceRecord, error) {
	ss.part++
	rec, failure, err := ss.batch.Store(ss.part, r, sopClassUID, sopInstanceUID)
	switch {
	case err != nil:
		return nil, err
	case failure != nil:
		return nil, &gateway.InstanceError{SOPClassUID: failure.SOPClassUID, SOPInstanceUID: failure.SOPInstanceUID,
			Reason: failure.Reason, Comment: failure.Comment, Err: errors.New(gateway.ReasonText(failure.Reason))}
	}
	return rec, nil
}

func (ss *storeSession) Close(sum dimse.Summary) error {
	res := ss.batch.Wait()
	// The nearest HTTP status, as the service's audit expects: all stored
	// 200, some refused 202, none stored 409.
	status := http.StatusOK
	switch {
	case len(res.Failed) > 0 && len(res.Stored) > 0:
		status = http.StatusAccepted
	case len(res.Failed) > 0:
		status = http.StatusConflict
	}
	var reqErr error
	if sum.Ended != "released" {
		reqErr = errors.New("association " + sum.Ended)
	}
	return ss.batch.Close(res, status, reqErr)
}

// queryService answers C-FIND with the query service QIDO-RS uses: the
// same index search, audited the same way (the matching keys' tags, never
// their values).
type queryService struct {
	svc *gateway.QueryService
}

var _ dimse.Finder = queryService{}

func (f queryService) Find(ctx context.Context, c dimse.Caller, q *gateway.Query) (*gateway.SearchResult, error) {
	keys := make([]string, 0, len(q.Conditions))
	for _, cond := range q.Conditions {
		keys = append(keys, strings.Join(cond.Path, "."))
	}
	return f.svc.Search(ctx, dimseCaller(c, "DIMSE C-FIND"), q, keys)
}

// indexMover answers C-MOVE from the index, to the DIMSE peers of the
// configuration (a Move Destination is a peer's called AE title), and
// audits each move as the retrieve service audits a WADO-RS read.
type indexMover struct {
	index    gateway.Index
	retrieve *gateway.RetrieveService
	peers    []gateway.Peer
}

var _ dimse.Mover = indexMover{}

func (mv indexMover) Destination(ae string) (gateway.Peer, bool) {
	for _, p := range mv.peers {
		if p.DIMSE != nil && p.DIMSE.CalledAE == ae {
			return p, true
		}
	}
	return gateway.Peer{}, false
}

func (mv indexMover) Instances(ctx context.Context, c dimse.Caller, destination, study, series string, sops []string) ([]*gateway.InstanceRecord, error) {
	recs, err := mv.index.ListInstances(ctx, study, series)
	if err != nil {
		return nil, err
	}
	if len(sops) > 0 {
		recs = slices.DeleteFunc(recs, func(r *gateway.InstanceRecord) bool { return !slices.Contains(sops, r.SOPInstanceUID) })
	}
	if err := mv.retrieve.AuditRead(ctx, dimseCaller(c, "DIMSE C-MOVE"), recs, map[string]any{"move_destination": destination}); err != nil {
		return nil, err
	}
	return recs, nil
}

// peerSender sends to each peer with the protocol it speaks: C-STORE for a
// peer with dimse:, DICOMweb for the others.
type peerSender struct {
	web, dimse gateway.Sender
}

func (p peerSender) pick(peer gateway.Peer) gateway.Sender {
	if peer.DIMSE != nil {
		return p.dimse
	}
	return p.web
}

func (p peerSender) Send(ctx context.Context, peer gateway.Peer, h gateway.SendHeader, instances []*gateway.InstanceRecord, report func([]gateway.SendResult)) error {
	return p.pick(peer).Send(ctx, peer, h, instances, report)
}

func (p peerSender) Verify(ctx context.Context, peer gateway.Peer, studyUID string, instances []*gateway.InstanceRecord) (*gateway.Verification, error) {
	return p.pick(peer).Verify(ctx, peer, studyUID, instances)
}

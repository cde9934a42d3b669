package main

import (
	"fmt"
	"os"

	"github.com/dicom-gateway/gateway/gateway"
)

// loadAuditKeys reads the --audit-key-file.
func loadAuditKeys(path string) (*gateway.AuditKeys, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--audit-key-file: %w", err)
	}
	defer f.Close()
	keys, err := gateway.ParseAuditKeys(f)
	if err != nil {
		return nil, fmt.Errorf("--audit-key-file %s: %w", path, err)
	}
	return keys, nil
}

// warnUnkeyedAudit logs a warning when the audit chain is not keyed: its
// hashes then show accidental damage, but anyone who can write Redis or
// state.db can rewrite records and recompute them.
func (m *Main) warnUnkeyedAudit() {
	if m.Config.AuditKeys == nil {
		m.Logger.Warn("audit chain is not keyed: anyone who can write the state store can rewrite audit records undetected; set --audit-key-file")
	}
}

// warnInsecurePeers logs a warning for every peer whose traffic could be
// read or altered on the network (plain http that allow_insecure let
// through, tls.insecure_skip_verify): such a setting must not pass
// unnoticed into production.
func (m *Main) warnInsecurePeers(peers []gateway.Peer) {
	for _, p := range peers {
		if why := p.Insecure(); why != "" {
			m.Logger.Warn("INSECURE PEER: patient data sent to this peer can be read or altered on the network",
				gateway.LogKeyPeer, p.Name, "reason", why)
		}
	}
}

package main

import (
	"github.com/dicom-gateway/gateway/gateway"
)

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

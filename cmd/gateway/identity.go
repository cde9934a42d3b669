package main

import "github.com/dicom-gateway/gateway/gateway"

// wireIdentity gives the transfers the identity rules of peers and routes
// (peers[].coerce, routes[].coerce), reading their lookup files; a bad rule
// stops start-up.
func wireIdentity(m *Main) error {
	c, err := gateway.NewCoercer(m.Config.File.Peers, m.Config.File.Routes, m.Backends.Blobs)
	if err != nil {
		return err
	}
	m.Transfers.Coercer = c
	return nil
}

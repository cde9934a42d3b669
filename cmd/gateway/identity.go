package main

import (
	"fmt"
	"os"

	"github.com/dicom-gateway/gateway/gateway"
)

// wireIdentity gives the transfers the identity rules of peers and routes
// (peers[].coerce, routes[].coerce), reading their lookup files, and the
// peers' de-identification rules (peers[].deidentify); a bad rule stops
// start-up.
func wireIdentity(m *Main) error {
	c, err := gateway.NewCoercer(m.Config.File.Peers, m.Config.File.Routes, m.Backends.Blobs)
	if err != nil {
		return err
	}
	m.Transfers.Coercer = c
	d, err := gateway.NewDeidentifier(m.Config.File.Peers, m.Config.DeidentifyKey, m.Backends.Blobs)
	if err != nil {
		return err
	}
	m.Transfers.Deidentifier = d
	return nil
}

// loadDeidentifyKey reads the --deidentify-key-file.
func loadDeidentifyKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--deidentify-key-file: %w", err)
	}
	defer f.Close()
	key, err := gateway.ParseDeidentifyKey(f)
	if err != nil {
		return nil, fmt.Errorf("--deidentify-key-file %s: %w", path, err)
	}
	return key, nil
}

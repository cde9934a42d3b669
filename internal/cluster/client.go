package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"

	"github.com/dicom-gateway/gateway/client"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// Client is the project's client (package client) for the gateway at its
// current address, for DICOMweb and the admin API.
func (g *Gateway) Client() *client.Client { return client.New(g.URL()) }

// SHA256 returns the hex SHA-256 of an instance's bytes.
func SHA256(in synth.Instance) string {
	h := sha256.New()
	if _, err := in.WriteTo(h); err != nil {
		panic(err) // writing to a hash cannot fail
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Instances makes synthetic instances the parts of a STOW-RS request: each
// is generated while it is sent.
func Instances(insts []synth.Instance) []client.Instance {
	out := make([]client.Instance, len(insts))
	for i, in := range insts {
		out[i] = in
	}
	return out
}

// StoreAll stores insts with one STOW-RS request and fails unless every
// one was stored (200).
func StoreAll(ctx context.Context, c *client.Client, insts []synth.Instance) error {
	resp, err := c.Store(ctx, "", Instances(insts), nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("STOW %d instances to %s: %d %s", len(insts), c.DICOMweb, resp.StatusCode, client.Snippet(resp.Body))
	}
	return nil
}

// CreateTransfer asks the gateway c to send study to destination.
func CreateTransfer(ctx context.Context, c *client.Client, study, destination string) (*gateway.Transfer, error) {
	return c.CreateTransfer(ctx, gateway.CreateTransfer{StudyUID: study, Destination: destination, Priority: gateway.PriorityNormal})
}

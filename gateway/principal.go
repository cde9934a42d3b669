package gateway

import (
	"context"
	"slices"
)

// Role is a permission a credential carries (DESIGN.md): store (STOW-RS),
// read (QIDO-RS, WADO-RS), transfer (create and view transfers), admin
// (everything, including delete, cancel and audit).
type Role string

const (
	RoleStore    Role = "store"
	RoleRead     Role = "read"
	RoleTransfer Role = "transfer"
	RoleAdmin    Role = "admin"
)

// Principal is who makes a request: the authenticated credential's name and
// roles, and the client address. With no auth configured (loopback only) it is
// the anonymous local principal, which holds every role.
type Principal struct {
	Name    string `json:"name"`
	Roles   []Role `json:"roles,omitempty"`
	Address string `json:"address,omitempty"`
	Method  string `json:"method,omitempty"` // token, basic, oidc, mtls, none
	// Peer is the centre this credential speaks for (the credential's peer:
	// in the auth config), "" for users and PACS. Only a peer's
	// X-Source-Centre and X-Transfer-ID headers are believed.
	Peer string `json:"peer,omitempty"`
}

// Has reports whether p carries role r; admin carries every role.
func (p Principal) Has(r Role) bool {
	return slices.Contains(p.Roles, r) || slices.Contains(p.Roles, RoleAdmin)
}

type principalKey struct{}

// WithPrincipal returns a context that carries p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the principal in ctx, or an empty one named "unknown".
func PrincipalFrom(ctx context.Context) Principal {
	if p, ok := ctx.Value(principalKey{}).(Principal); ok {
		return p
	}
	return Principal{Name: "unknown"}
}

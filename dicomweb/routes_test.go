package dicomweb

import (
	"testing"
)

// TestEveryRouteDeclaresARole walks the routing table: a route without a
// role would be served to anyone once auth is configured.
func TestEveryRouteDeclaresARole(t *testing.T) {
	s := New(Config{})
	seen := map[string]bool{}
	for _, r := range s.routes() {
		key := r.method + " " + r.path
		if seen[key] {
			t.Errorf("%s declared twice", key)
		}
		seen[key] = true
		if r.role == "" && !publicPaths[r.path] {
			t.Errorf("%s declares no role", key)
		}
		if r.role != "" && publicPaths[r.path] {
			t.Errorf("%s is public but declares role %s", key, r.role)
		}
	}
	for p := range publicPaths {
		if !seen["GET "+p] {
			t.Errorf("public path %s is not routed", p)
		}
	}
}

package dicomweb

import (
	"encoding/base64"
	"errors"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/dicom-gateway/gateway/gateway"
)

// TestBasicChecksCostTheSameWork: with users of two bcrypt costs, a check
// of the cheaper user's password, right or wrong, does the work of one
// hash of the higher cost, as the dearer user's and an unknown user's
// checks do: a cheaper hash does not reveal its username by answering
// sooner. Work is counted in bcrypt rounds (2^cost per hash compared), not
// timed. The right passwords still authenticate.
func TestBasicChecksCostTheSameWork(t *testing.T) {
	hash := func(pw string, cost int) string {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), cost)
		if err != nil {
			t.Fatal(err)
		}
		return string(h)
	}
	b, err := newBasicAuth([]BasicConfig{
		{Name: "cheap", Username: "cheap", PasswordHash: hash("cheap-pw", bcrypt.MinCost), Roles: []gateway.Role{gateway.RoleRead}},
		{Name: "dear", Username: "dear", PasswordHash: hash("dear-pw", bcrypt.MinCost+3), Roles: []gateway.Role{gateway.RoleRead}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var rounds int
	b.compare = func(h, pw []byte) error {
		c, err := bcrypt.Cost(h)
		if err != nil {
			t.Fatal(err)
		}
		rounds += 1 << c
		return bcrypt.CompareHashAndPassword(h, pw)
	}
	want := 1 << (bcrypt.MinCost + 3)
	for _, tc := range []struct {
		user, pw string
		ok       bool
	}{{"cheap", "cheap-pw", true}, {"cheap", "wrong", false}, {"dear", "dear-pw", true}, {"dear", "wrong", false}, {"nobody", "x", false}} {
		rounds = 0
		_, err := b.authenticate(t.Context(), base64.StdEncoding.EncodeToString([]byte(tc.user+":"+tc.pw)))
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, gateway.ErrUnauthenticated)) {
			t.Errorf("%s with %s: err %v, want ok %v", tc.user, tc.pw, err, tc.ok)
		}
		if rounds != want {
			t.Errorf("%s with %s: %d bcrypt rounds, want %d (those of the dearest hash)", tc.user, tc.pw, rounds, want)
		}
	}
}

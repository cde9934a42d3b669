package gateway

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCoercerLookupFollowsTheFile: the admin edits the lookup file and the
// next transfer uses it, no restart, even when the edit keeps the file's
// size and modification time; a file broken meanwhile is an error, not a
// silent fallback to the old mapping.
func TestCoercerLookupFollowsTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ids.csv")
	write := func(content string, mtime time.Time) {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now().Add(-time.Hour)
	write("9434765919,S1\n", t0)
	c, err := NewCoercer([]Peer{{Name: "surrey", Coerce: &CoerceRule{To: CoerceLocal, Issuer: "SURREY", LookupFile: path}}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		content string
		want    string // local ID of 9434765919, "" for an error
	}{
		{"9434765919,S1\n", "S1"},
		{"# moved\n9434765919,S2\n", "S2"},
		{"9434765919\n", ""},
		{"9434765919,S3\n", "S3"},
	} {
		t0 = t0.Add(time.Minute)
		write(step.content, t0)
		ids, err := c.lookup("peer:surrey")
		switch {
		case step.want == "" && err == nil:
			t.Errorf("%q: read as %v, want an error", step.content, ids)
		case step.want == "" && !strings.Contains(err.Error(), "line 1"):
			t.Errorf("%q: error %v does not name the line", step.content, err)
		case step.want != "" && (err != nil || ids["9434765919"] != step.want):
			t.Errorf("%q: %v %v, want %s", step.content, ids, err, step.want)
		}
	}
	// An edit that keeps the size and the modification time (a tool that
	// restores the time, or two edits within one clock tick) is read too.
	write("9434765919,S4\n", t0)
	if ids, err := c.lookup("peer:surrey"); err != nil || ids["9434765919"] != "S4" {
		t.Errorf("same size and time: %v %v, want S4", ids, err)
	}
	write("9434765919,S5\n", t0)
	if ids, err := c.lookup("peer:surrey"); err != nil || ids["9434765919"] != "S5" {
		t.Errorf("same size and time again: %v %v, want S5 (the old mapping was kept)", ids, err)
	}
	for _, bad := range []*CoerceRule{{To: "both"}, {To: CoerceLocal, Issuer: "SURREY"}, {To: CoerceLocal, LookupFile: path}} {
		if _, err := NewCoercer([]Peer{{Name: "surrey", Coerce: bad}}, nil, nil); err == nil {
			t.Errorf("rule %+v accepted", *bad)
		}
	}
	// The C-STORE sender applies SendHeader.Rewrite like the STOW-RS one:
	// a rule on a DIMSE peer, directly or through a route, is accepted.
	pacs := Peer{Name: "pacs", DIMSE: &DIMSEPeer{}}
	if _, err := NewCoercer([]Peer{{Name: pacs.Name, DIMSE: pacs.DIMSE, Coerce: &CoerceRule{To: CoerceNational}}}, nil, nil); err != nil {
		t.Errorf("coerce on a DIMSE peer: %v", err)
	}
	if _, err := NewCoercer([]Peer{pacs}, []RouteRule{{Name: "r", Destinations: []string{"pacs"}, Coerce: &CoerceRule{To: CoerceNational}}}, nil); err != nil {
		t.Errorf("coerce on a route to a DIMSE peer: %v", err)
	}
}

// TestLookupIsOneToOne: a lookup file that maps two NHS numbers to one
// local ID, or one NHS number twice, is refused: either would file two
// patients' images under one record. The refusal names lines, never the
// numbers.
func TestLookupIsOneToOne(t *testing.T) {
	dir := t.TempDir()
	for name, lines := range map[string]string{
		"two NHS numbers, one local ID": "9434765919,H1\n9434765870,H1\n",
		"one NHS number twice":          "9434765919,H1\n9434765919,H2\n",
	} {
		path := filepath.Join(dir, "lookup.csv")
		if err := os.WriteFile(path, []byte(lines), 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := readLookup(path)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.Contains(err.Error(), "943476") || !strings.Contains(err.Error(), "line 2") {
			t.Errorf("%s: %v; want the line named and no NHS number", name, err)
		}
	}
	path := filepath.Join(dir, "ok.csv")
	if err := os.WriteFile(path, []byte("# nhs,local\n9434765919,H1\n9434765870,H2\n9434765919,H1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if m, _, err := readLookup(path); err != nil || len(m) != 2 {
		t.Errorf("a one-to-one lookup: %v, %v", m, err)
	}
}

package gateway_test

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
)

const withheld = "[the peer's words, withheld from the log]"

// TestRedactPeerWords: each quoted span is withheld and the text around it
// kept; a peer cannot close its quotation early by sending the closing
// mark, and a span cut short is withheld to the end.
func TestRedactPeerWords(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"no peer words here", "no peer words here"},
		{"refused: " + gateway.QuotePeer("Patient DOE^JANE"), "refused: " + withheld},
		{"a " + gateway.QuotePeer("x") + " b " + gateway.QuotePeer("y") + " c", "a " + withheld + " b " + withheld + " c"},
		{"busy: " + gateway.QuotePeer("DOE» then JANE «"), "busy: " + withheld},
		{"cut: «DOE^JA", "cut: " + withheld},
		{gateway.QuotePeer(""), withheld},
	} {
		if got := gateway.RedactPeerWords(tt.in); got != tt.want {
			t.Errorf("RedactPeerWords(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	if q := gateway.QuotePeer("«DOE»"); strings.Count(q, "«") != 1 || strings.Count(q, "»") != 1 || !strings.Contains(q, "DOE") {
		t.Errorf("QuotePeer kept the peer's own marks: %q", q)
	}
}

// TestRedactLogAttr: as a JSON handler's ReplaceAttr it withholds a peer's
// words from the message, from string and error values, from other values
// (structs, slices, Stringers, bytes) as the JSON handler writes them, from
// attributes given to With and inside groups, survives a typed nil error,
// and leaves the rest as it is.
func TestRedactLogAttr(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{ReplaceAttr: gateway.RedactLogAttr}))
	words := gateway.QuotePeer("DOE^JANE")
	log.With("peer_said", "refused "+words).WithGroup("transfer").Warn("odd "+words,
		"error", errors.New("HTTP 409: "+words),
		"stringer", stringer("busy "+words),
		slog.Group("inner", "reason", words),
		"failures", []gateway.InstanceProgress{{SOPInstanceUID: "1.2.3", Reason: "refused " + words}},
		"list", []string{"a", words},
		"nil_error", (*gateway.SendError)(nil),
		"struct_stringer", peerStringer{Reason: "refused " + words},
		"bytes", []byte("raw "+words),
		"count", 3, "plain", "kept")
	out := buf.String()
	if strings.Contains(out, "DOE") {
		t.Errorf("the log holds the peer's words:\n%s", out)
	}
	for _, want := range []string{`"msg":"odd ` + withheld, `"peer_said":"refused ` + withheld, `"error":"HTTP 409: ` + withheld,
		`"stringer":"\"busy ` + withheld, `"reason":"` + withheld, `"count":3`, `"plain":"kept"`, `"nil_error":"<nil>"`,
		`1.2.3`, `"list":"[\"a\",\"` + withheld, `"struct_stringer":"{\"Reason\":\"refused ` + withheld, `"bytes":"raw ` + withheld} {
		if !strings.Contains(out, want) {
			t.Errorf("the log lacks %s:\n%s", want, out)
		}
	}
}

// peerStringer is a struct with a String method: the JSON handler writes
// its fields, not its String.
type peerStringer struct{ Reason string }

func (peerStringer) String() string { return "nothing to see" }

type stringer string

func (s stringer) String() string { return string(s) }

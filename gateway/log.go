package gateway

import (
	"encoding/json"
	"log/slog"
	"strings"
)

// Log attribute keys (log/slog). UIDs and transfer IDs may be logged; patient
// names, IDs and birth dates never are.
const (
	LogKeyRequestID  = "request_id"
	LogKeyStudyUID   = "study_uid"
	LogKeySeriesUID  = "series_uid"
	LogKeySOPUID     = "sop_instance_uid"
	LogKeyTransferID = "transfer_id"
	LogKeyPeer       = "peer"
	LogKeyBackend    = "backend"
	LogKeyError      = "error"
	LogKeyActor      = "actor"
)

// Secret is a string that never prints: tokens, passwords, keys.
type Secret string

func (Secret) String() string   { return "[redacted]" }
func (Secret) GoString() string { return "[redacted]" }

// Reveal returns the secret's value, for the one place that must send it.
func (s Secret) Reveal() string { return string(s) }

// A peer's own words (an HTTP answer's body, a STOW-RS or C-STORE Error
// Comment, an admin API's "error" field) can hold patient data: a PACS
// explaining a refusal may name the patient or echo a Patient ID. They are
// kept where admins read them, in a transfer's last_error and failures, and
// never reach the application log: QuotePeer marks them where they enter
// an error message, and RedactLogAttr, every logger's ReplaceAttr, replaces
// each marked span.
const (
	peerWordsOpen     = "«"
	peerWordsClose    = "»"
	peerWordsWithheld = "[the peer's words, withheld from the log]"
)

// peerWordsCleaner keeps a peer from closing its quotation early (and so
// letting the rest of its words into the log) or opening one of its own.
var peerWordsCleaner = strings.NewReplacer(peerWordsOpen, `"`, peerWordsClose, `"`)

// QuotePeer marks s as a peer's words for an error message.
func QuotePeer(s string) string {
	return peerWordsOpen + peerWordsCleaner.Replace(s) + peerWordsClose
}

// RedactPeerWords replaces each span QuotePeer marked in s. A span left
// open (a message cut short) is withheld to its end.
func RedactPeerWords(s string) string {
	if !strings.Contains(s, peerWordsOpen) {
		return s
	}
	var b strings.Builder
	for {
		i := strings.Index(s, peerWordsOpen)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i])
		b.WriteString(peerWordsWithheld)
		rest := s[i+len(peerWordsOpen):]
		j := strings.Index(rest, peerWordsClose)
		if j < 0 {
			return b.String()
		}
		s = rest[j+len(peerWordsClose):]
	}
}

// RedactLogAttr is the loggers' slog.HandlerOptions.ReplaceAttr: it
// withholds a peer's words from any text attribute, the message included,
// from an error logged as a value, and from any other value (a struct,
// slice or map) as the JSON handler writes it.
func RedactLogAttr(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindString {
		if s := a.Value.String(); strings.Contains(s, peerWordsOpen) {
			a.Value = slog.StringValue(RedactPeerWords(s))
		}
		return a
	}
	if a.Value.Kind() != slog.KindAny {
		return a
	}
	if s, ok := loggedText(a.Value.Any()); ok && strings.Contains(s, peerWordsOpen) {
		a.Value = slog.StringValue(RedactPeerWords(s))
	}
	return a
}

// loggedText is the text the JSON handler writes for v, as slog's
// JSONHandler chooses it: an error's Error (unless it marshals itself),
// the bytes of a []byte (which it writes in base64), else the JSON of v. A
// typed nil whose Error panics is logged as "<nil>", as slog does.
func loggedText(v any) (s string, ok bool) {
	defer func() {
		if recover() != nil {
			s, ok = "<nil>", true
		}
	}()
	_, marshals := v.(json.Marshaler)
	switch v := v.(type) {
	case nil:
		return "", false
	case error:
		if !marshals {
			return v.Error(), true
		}
	case []byte:
		return string(v), true
	}
	b, err := json.Marshal(v)
	return string(b), err == nil
}

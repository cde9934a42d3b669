package storagetest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
)

// AuditKeysForTest parses an audit key file made of lines, with a fresh
// random key for each "key <id>" line that has no key of its own.
func AuditKeysForTest(t testing.TB, lines ...string) *gateway.AuditKeys {
	t.Helper()
	var sb strings.Builder
	for _, l := range lines {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "key" {
			k := make([]byte, 32)
			_, _ = rand.Read(k)
			l += " " + hex.EncodeToString(k)
		}
		sb.WriteString(l + "\n")
	}
	keys, err := gateway.ParseAuditKeys(strings.NewReader(sb.String()))
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// keyLines holds the key file line of each key ID, for building key sets
// that share keys: tests keep the lines they generated.
type keyLines map[string]string

func newKeyLines(ids ...string) keyLines {
	kl := keyLines{}
	for _, id := range ids {
		k := make([]byte, 32)
		_, _ = rand.Read(k)
		kl[id] = "key " + id + " " + hex.EncodeToString(k)
	}
	return kl
}

func (kl keyLines) set(t testing.TB, extra string, ids ...string) *gateway.AuditKeys {
	t.Helper()
	var lines []string
	for _, id := range ids {
		lines = append(lines, kl[id])
	}
	if extra != "" {
		lines = append(lines, extra)
	}
	return AuditKeysForTest(t, lines...)
}

// rewriteRecordsPlain is the attack a keyed chain must survive: someone with
// write access to the store but not the key changes record from, then
// recomputes the plain SHA-256 chain of it and every later record (keeping
// or dropping key_id), as they could on an unkeyed chain.
func rewriteRecordsPlain(t *testing.T, s AuditStore, from, to int64, dropKeyID bool, change func(ev *gateway.AuditEvent)) {
	t.Helper()
	prev := ""
	if from > 1 {
		ev, err := gateway.DecodeAuditEvent(s.RawRecord(t, from-1))
		if err != nil {
			t.Fatal(err)
		}
		prev = ev.Hash
	}
	for seq := from; seq <= to; seq++ {
		ev, err := gateway.DecodeAuditEvent(s.RawRecord(t, seq))
		if err != nil {
			t.Fatal(err)
		}
		if seq == from {
			change(ev)
		}
		if dropKeyID {
			ev.KeyID = ""
		}
		ev.PrevHash, ev.Hash = prev, ""
		if ev.Hash, err = gateway.AuditHash(ev); err != nil {
			t.Fatal(err)
		}
		raw, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		s.SetRawRecord(t, seq, raw)
		prev = ev.Hash
	}
}

// testKeyedAuditChain: records signed with the current key verify with the
// key set; a rewrite by someone without the key is detected even with every
// plain hash recomputed; keys rotate by ID; records written before keying
// are accepted only as the declared unkeyed prefix.
func testKeyedAuditChain(t *testing.T, newLog NewAuditStoreFunc) {
	record := func(t *testing.T, l gateway.Auditor, n int, tag string) {
		for i := range n {
			mustRecord(t, l, auditEvent("viewer", gateway.ActionRetrieve, "1.2.3", fmt.Sprintf("PAT-%s-%d", tag, i)))
		}
	}
	expectBroken := func(t *testing.T, l gateway.AuditLog, seq int64, reason string) {
		t.Helper()
		res := mustVerify(t, l)
		if res.OK || res.FirstBroken != gateway.AuditRecordID(seq) || !strings.Contains(res.Reason, reason) {
			t.Errorf("Verify = %+v, want broken at %s with a reason mentioning %q", res, gateway.AuditRecordID(seq), reason)
		}
	}

	t.Run("SignedAndVerified", func(t *testing.T) {
		s := newLog(t)
		kl := newKeyLines("k1")
		s.SetKeys(kl.set(t, "", "k1"))
		record(t, s, 3, "a")
		for seq := int64(1); seq <= 3; seq++ {
			ev, err := gateway.DecodeAuditEvent(s.RawRecord(t, seq))
			if err != nil {
				t.Fatal(err)
			}
			plain, _ := gateway.AuditHash(ev)
			if ev.KeyID != "k1" || ev.Hash == plain || len(ev.Hash) != 64 {
				t.Errorf("record %d: key_id %q, hash %s (plain %s); want k1 and an HMAC", seq, ev.KeyID, ev.Hash, plain)
			}
		}
		if res := mustVerify(t, s); !res.OK || res.Records != 3 {
			t.Errorf("Verify = %+v, want 3 records intact", res)
		}
	})

	for _, tt := range []struct {
		name      string
		from      int64
		dropKeyID bool
	}{
		{"RewriteWithPlainHashesDetected", 2, false},
		{"RewriteDroppingKeyIDDetected", 2, true},
		{"RewriteOfFirstRecordDroppingKeyIDDetected", 1, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newLog(t)
			kl := newKeyLines("k1")
			s.SetKeys(kl.set(t, "", "k1"))
			record(t, s, 4, "b")
			rewriteRecordsPlain(t, s, tt.from, 4, tt.dropKeyID, func(ev *gateway.AuditEvent) { ev.Actor.Name = "someone-else" })
			reason := "hash does not match"
			if tt.dropKeyID {
				reason = "not keyed"
			}
			expectBroken(t, s, tt.from, reason)
		})
	}

	t.Run("KeysRotate", func(t *testing.T) {
		s := newLog(t)
		kl := newKeyLines("k1", "k2")
		s.SetKeys(kl.set(t, "", "k1"))
		record(t, s, 2, "c")
		s.SetKeys(kl.set(t, "", "k2", "k1")) // k2 current, k1 kept to verify
		record(t, s, 2, "d")
		if ev, _ := gateway.DecodeAuditEvent(s.RawRecord(t, 3)); ev == nil || ev.KeyID != "k2" {
			t.Errorf("record after rotation keyed with %v, want k2", ev)
		}
		if res := mustVerify(t, s); !res.OK || res.Records != 4 {
			t.Errorf("Verify with both keys = %+v, want intact", res)
		}
		s.SetKeys(kl.set(t, "", "k2"))
		expectBroken(t, s, 1, `"k1"`)
		s.SetKeys(nil)
		expectBroken(t, s, 1, "audit key file")
	})

	t.Run("UnkeyedPrefixOnlyWhenDeclared", func(t *testing.T) {
		s := newLog(t)
		record(t, s, 2, "e") // before any key: plain chain
		kl := newKeyLines("k1")
		s.SetKeys(kl.set(t, "", "k1"))
		expectBroken(t, s, 1, "unkeyed-records")
		s.SetKeys(kl.set(t, "unkeyed-records 2", "k1"))
		record(t, s, 2, "f")
		if res := mustVerify(t, s); !res.OK || res.Records != 4 {
			t.Errorf("Verify with unkeyed-records 2 = %+v, want intact", res)
		}
		// The prefix is anchored by the first keyed record.
		rewriteRecordsPlain(t, s, 2, 2, false, func(ev *gateway.AuditEvent) { ev.Outcome = gateway.OutcomeFailure })
		expectBroken(t, s, 3, "prev_hash")
	})
}

package dimse

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
)

// TestFailedSOPListCutAtAWholeUID: a Failed SOP Instance UID List longer
// than an Explicit VR value can hold (64 KiB) stops before the UID that
// would overflow it, so every UID it names is whole; a short list is
// written in full, in either VR encoding.
func TestFailedSOPListCutAtAWholeUID(t *testing.T) {
	var uids []string
	for i := range 2000 {
		uids = append(uids, fmt.Sprintf("1.2.826.0.1.3680043.10.1466.%030d", i))
	}
	b := failedSOPList(uids, true)
	if b[4] != 'U' || b[5] != 'I' {
		t.Fatalf("VR %q, want UI", b[4:6])
	}
	v := string(b[8 : 8+binary.LittleEndian.Uint16(b[6:8])])
	got := strings.Split(strings.TrimRight(v, "\x00"), `\`)
	if len(v) > 0xFFFE || len(got) == len(uids) || len(got) < 1000 {
		t.Fatalf("%d bytes, %d UIDs of %d; want under 64 KiB, cut, most of them", len(v), len(got), len(uids))
	}
	for i, u := range got {
		if u != uids[i] {
			t.Fatalf("UID %d is %q, want %q (cut mid-UID?)", i, u, uids[i])
		}
	}
	short := failedSOPList(uids[:2], false)
	if n := binary.LittleEndian.Uint32(short[4:8]); strings.TrimRight(string(short[8:8+n]), "\x00") != uids[0]+`\`+uids[1] {
		t.Errorf("implicit VR list %q", short[8:])
	}
}

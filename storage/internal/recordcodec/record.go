// Package recordcodec is how the index backends store instance records,
// datasets and study summaries: a compact binary form that reads back
// without encoding/json. Only storage backends import it.
package recordcodec

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/dicom-gateway/gateway/gateway"
)

// recordVersion marks the stored form written by Encode; the older
// form is the record's JSON, which starts with '{'.
const recordVersion = 0x01

// Encode is how the index backends store a gateway.InstanceRecord: a version
// byte, the record's fields other than Metadata as JSON, then Metadata in
// the compact form (AppendCompact). Reading a series of 1,000 records back
// (WADO-RS series metadata, transfers) then costs no per-attribute JSON
// decoding. Equal records encode to equal bytes.
func Encode(rec *gateway.InstanceRecord) ([]byte, error) {
	shallow := *rec
	shallow.Metadata = nil
	head, err := json.Marshal(&shallow)
	if err != nil {
		return nil, fmt.Errorf("encode instance record: %w", err)
	}
	b := make([]byte, 0, len(head)+64*len(rec.Metadata))
	b = append(b, recordVersion)
	b = binary.AppendUvarint(b, uint64(len(head)))
	b = append(b, head...)
	return AppendCompact(b, rec.Metadata)
}

var errRecord = errors.New("stored instance record: malformed")

// Decode reads a record written by Encode, or by the earlier
// all-JSON form.
func Decode(b []byte) (*gateway.InstanceRecord, error) {
	var rec gateway.InstanceRecord
	if len(b) > 0 && b[0] == '{' {
		if err := json.Unmarshal(b, &rec); err != nil {
			return nil, fmt.Errorf("decode instance record: %w", gateway.FromCodec(err))
		}
		return &rec, nil
	}
	if len(b) < 2 || b[0] != recordVersion {
		return nil, errRecord
	}
	n, k := binary.Uvarint(b[1:])
	if k <= 0 || n > uint64(len(b)-1-k) {
		return nil, errRecord
	}
	head := b[1+k : 1+k+int(n)]
	if err := json.Unmarshal(head, &rec); err != nil {
		return nil, fmt.Errorf("decode instance record: %w", gateway.FromCodec(err))
	}
	md, err := DecodeCompact(string(b[1+k+int(n):]))
	if err != nil {
		return nil, fmt.Errorf("decode instance metadata: %w", err)
	}
	rec.Metadata = md
	return &rec, nil
}

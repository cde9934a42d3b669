// Package recordcodec is how the index backends store instance records,
// datasets and study summaries: a compact binary form that reads back
// without encoding/json. Only storage backends import it.
package recordcodec

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/dicom-gateway/gateway/gateway"
)

// recordVersion marks the plain stored form: a version byte, the record's
// fields other than Metadata as JSON, then Metadata in the compact form
// (AppendCompact). recordVersionDeflate marks what Encode writes: a version
// byte, then the plain form after its version byte, deflated with
// recordDictionary. The oldest form is the record's JSON, which starts with
// '{'. Decode reads all three.
const (
	recordVersion        = 0x01
	recordVersionDeflate = 0x02
)

// Encode is how the index backends store a gateway.InstanceRecord. Reading
// a series of 1,000 records back costs no per-attribute JSON decoding (the
// compact form), and deflating with a dictionary of what every CT record
// repeats brings a lean record (gateway.IndexRecord) from about 1.7 KB to
// a few hundred bytes: index memory per instance is what bounds how many
// instances one Redis holds. Equal records encode to equal bytes.
func Encode(rec *gateway.InstanceRecord) ([]byte, error) {
	plain, err := encodePlain(rec)
	if err != nil {
		return nil, err
	}
	w := deflaters.Get().(*deflater)
	defer deflaters.Put(w)
	w.buf.Reset()
	w.buf.WriteByte(recordVersionDeflate)
	w.w.Reset(&w.buf)
	if _, err := w.w.Write(plain[1:]); err != nil {
		return nil, fmt.Errorf("encode instance record: %w", err)
	}
	if err := w.w.Close(); err != nil {
		return nil, fmt.Errorf("encode instance record: %w", err)
	}
	return bytes.Clone(w.buf.Bytes()), nil
}

// encodePlain is the recordVersion form of rec.
func encodePlain(rec *gateway.InstanceRecord) ([]byte, error) {
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

// deflater is a pooled flate writer (about 600 KB of state: too much to
// build per record) with its output buffer.
type deflater struct {
	w   *flate.Writer
	buf bytes.Buffer
}

var deflaters = sync.Pool{New: func() any {
	w, err := flate.NewWriterDict(io.Discard, flate.BestCompression, []byte(recordDictionary))
	if err != nil {
		panic(err) // only for an invalid level
	}
	return &deflater{w: w}
}}

// inflater is a pooled flate reader with its output buffer.
type inflater struct {
	r   io.ReadCloser
	src bytes.Reader
	buf bytes.Buffer
}

var inflaters = sync.Pool{New: func() any {
	in := &inflater{}
	in.r = flate.NewReaderDict(&in.src, []byte(recordDictionary))
	return in
}}

// inflate returns the plain form (with its version byte) of a deflated
// record.
func inflate(b []byte) ([]byte, error) {
	in := inflaters.Get().(*inflater)
	defer inflaters.Put(in)
	in.src.Reset(b[1:])
	if err := in.r.(flate.Resetter).Reset(&in.src, []byte(recordDictionary)); err != nil {
		return nil, err
	}
	in.buf.Reset()
	in.buf.WriteByte(recordVersion)
	if _, err := in.buf.ReadFrom(in.r); err != nil {
		return nil, errRecord
	}
	return bytes.Clone(in.buf.Bytes()), nil
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
	if len(b) > 0 && b[0] == recordVersionDeflate {
		plain, err := inflate(b)
		if err != nil {
			return nil, err
		}
		b = plain
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

package dicomcodec

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// attributeJSON is Attribute without its methods, so they can use the
// standard encoding.
type attributeJSON struct {
	VR           string            `json:"vr"`
	Value        []json.RawMessage `json:"Value,omitempty"`
	BulkDataURI  string            `json:"BulkDataURI,omitempty"`
	InlineBinary string            `json:"InlineBinary,omitempty"`
}

// MarshalJSON writes the attribute in the DICOM JSON model (PS3.18 F.2).
// Non-finite numbers, which JSON cannot hold, are written as null.
func (a Attribute) MarshalJSON() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString(`{"vr":`)
	vr, _ := json.Marshal(a.VR)
	buf.Write(vr)
	if len(a.Value) > 0 {
		buf.WriteString(`,"Value":[`)
		for i, v := range a.Value {
			if i > 0 {
				buf.WriteByte(',')
			}
			if f, ok := v.(float64); ok && (math.IsNaN(f) || math.IsInf(f, 0)) {
				v = nil
			}
			b, err := json.Marshal(v)
			if err != nil {
				return nil, fmt.Errorf("attribute value %d: %w", i, err)
			}
			buf.Write(b)
		}
		buf.WriteByte(']')
	}
	if a.BulkDataURI != "" {
		b, _ := json.Marshal(a.BulkDataURI)
		buf.WriteString(`,"BulkDataURI":`)
		buf.Write(b)
	}
	if a.InlineBinary != "" {
		b, _ := json.Marshal(a.InlineBinary)
		buf.WriteString(`,"InlineBinary":`)
		buf.Write(b)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// UnmarshalJSON reads the DICOM JSON model back into the typed values
// Attribute documents (PersonName, Dataset, float64, int64, string), so that
// a record stored as JSON by an index reads back equal to what ingest wrote.
func (a *Attribute) UnmarshalJSON(data []byte) error {
	var raw attributeJSON
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	*a = Attribute{VR: raw.VR, BulkDataURI: raw.BulkDataURI, InlineBinary: raw.InlineBinary}
	if len(raw.Value) == 0 {
		return nil
	}
	a.Value = make([]any, len(raw.Value))
	for i, v := range raw.Value {
		if bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
			continue
		}
		val, err := decodeJSONValue(raw.VR, v)
		if err != nil {
			return fmt.Errorf("%s value %d: %w", raw.VR, i, err)
		}
		a.Value[i] = val
	}
	return nil
}

func decodeJSONValue(vr string, v json.RawMessage) (any, error) {
	switch vr {
	case "PN":
		var pn PersonName
		err := json.Unmarshal(v, &pn)
		return pn, err
	case "SQ":
		var ds Dataset
		err := json.Unmarshal(v, &ds)
		if ds == nil {
			ds = Dataset{}
		}
		return ds, err
	case "DS", "FD", "FL":
		var f float64
		err := json.Unmarshal(v, &f)
		return f, err
	case "IS", "SL", "SS", "UL", "US", "SV", "UV":
		s := string(bytes.TrimSpace(v))
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return n, nil
		}
		if n, err := strconv.ParseUint(s, 10, 64); err == nil {
			return n, nil // a UV above the int64 range
		}
		var f float64
		if err := json.Unmarshal(v, &f); err != nil {
			return nil, err
		}
		if f != math.Trunc(f) || math.Abs(f) > 1<<63 {
			return nil, fmt.Errorf("%s is not an integer: %w", s, ErrInvalidInput)
		}
		return int64(f), nil
	default:
		var s string
		err := json.Unmarshal(v, &s)
		return s, err
	}
}

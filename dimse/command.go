package dimse

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
)

// Command fields (PS3.7 E.1).
const (
	CommandCStoreRQ  uint16 = 0x0001
	CommandCStoreRSP uint16 = 0x8001
	CommandCEchoRQ   uint16 = 0x0030
	CommandCEchoRSP  uint16 = 0x8030
)

// Elements of the command set (group 0000), by element number.
const (
	elGroupLength            uint16 = 0x0000
	elAffectedSOPClassUID    uint16 = 0x0002
	elCommandField           uint16 = 0x0100
	elMessageID              uint16 = 0x0110
	elMessageIDRespondedTo   uint16 = 0x0120
	elPriority               uint16 = 0x0700
	elCommandDataSetType     uint16 = 0x0800
	elStatus                 uint16 = 0x0900
	elErrorComment           uint16 = 0x0902
	elAffectedSOPInstanceUID uint16 = 0x1000
)

// dataSetAbsent is the Command Data Set Type (0000,0800) of a message
// without a dataset; any other value means one follows.
const dataSetAbsent uint16 = 0x0101

// maxCommandBytes bounds a command set. The largest a C-STORE-RQ can be is
// a few hundred bytes (UIDs of 64, AE titles of 16); 64 KiB is generous and
// still small.
const maxCommandBytes = 64 << 10

// Command is a DIMSE command set: group 0000 in Implicit VR Little Endian
// (PS3.7 6.3.1), kept as element number → raw value.
type Command struct {
	elements map[uint16][]byte
}

// NewCommand returns an empty command set.
func NewCommand() *Command { return &Command{elements: map[uint16][]byte{}} }

// SetUint16 sets a US element.
func (c *Command) SetUint16(el uint16, v uint16) {
	c.elements[el] = binary.LittleEndian.AppendUint16(nil, v)
}

// SetString sets a UI (padded with NUL), AE or LO (padded with a space)
// element.
func (c *Command) SetString(el uint16, v string, uid bool) {
	b := []byte(v)
	if len(b)%2 == 1 {
		if uid {
			b = append(b, 0)
		} else {
			b = append(b, ' ')
		}
	}
	c.elements[el] = b
}

// Uint16 returns a US element and whether it is present and 2 bytes long.
func (c *Command) Uint16(el uint16) (uint16, bool) {
	v, ok := c.elements[el]
	if !ok || len(v) != 2 {
		return 0, false
	}
	return binary.LittleEndian.Uint16(v), true
}

// String returns a text element without its padding.
func (c *Command) String(el uint16) string {
	return strings.TrimRight(string(c.elements[el]), "\x00 ")
}

// Field is the Command Field (0000,0100).
func (c *Command) Field() uint16 { v, _ := c.Uint16(elCommandField); return v }

// HasDataSet reports whether a dataset follows the command.
func (c *Command) HasDataSet() bool {
	v, ok := c.Uint16(elCommandDataSetType)
	return ok && v != dataSetAbsent
}

// Encode writes the command set with its group length first, elements in
// ascending order (PS3.5 7.1).
func (c *Command) Encode() []byte {
	keys := make([]uint16, 0, len(c.elements))
	for k := range c.elements {
		if k != elGroupLength {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var body []byte
	for _, k := range keys {
		v := c.elements[k]
		body = binary.LittleEndian.AppendUint16(body, 0x0000)
		body = binary.LittleEndian.AppendUint16(body, k)
		body = binary.LittleEndian.AppendUint32(body, uint32(len(v)))
		body = append(body, v...)
	}
	out := make([]byte, 0, 12+len(body))
	out = binary.LittleEndian.AppendUint16(out, 0x0000)
	out = binary.LittleEndian.AppendUint16(out, elGroupLength)
	out = binary.LittleEndian.AppendUint32(out, 4)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(body)))
	return append(out, body...)
}

// DecodeCommand parses a command set. Every element must be in group 0000
// and fit the bytes given; the caller has bounded len(b).
func DecodeCommand(b []byte) (*Command, error) {
	c := NewCommand()
	for len(b) > 0 {
		if len(b) < 8 {
			return nil, malformed("command element header of %d bytes", len(b))
		}
		group := binary.LittleEndian.Uint16(b[0:2])
		el := binary.LittleEndian.Uint16(b[2:4])
		n := binary.LittleEndian.Uint32(b[4:8])
		if group != 0x0000 {
			return nil, malformed("command set element (%04X,%04X) is not in group 0000", group, el)
		}
		if uint64(n) > uint64(len(b)-8) {
			return nil, malformed("command element (0000,%04X) says %d bytes, %d are left", el, n, len(b)-8)
		}
		c.elements[el] = b[8 : 8+n : 8+n]
		b = b[8+n:]
	}
	if _, ok := c.Uint16(elCommandField); !ok {
		return nil, malformed("command set without a Command Field (0000,0100)")
	}
	return c, nil
}

// Status is a DIMSE status (0000,0900), PS3.7 Annex C.
type Status uint16

// Statuses the gateway sends and understands.
const (
	StatusSuccess                Status = 0x0000
	StatusWarningCoercion        Status = 0xB000
	StatusWarningElemsDiscarded  Status = 0xB006
	StatusWarningDataSetMismatch Status = 0xB007
	StatusDuplicateSOPInstance   Status = 0x0111
	StatusSOPClassNotSupported   Status = 0x0122
	StatusProcessingFailure      Status = 0x0110
	StatusUnrecognizedOperation  Status = 0x0211
	StatusOutOfResources         Status = 0xA700
	StatusDataSetMismatch        Status = 0xA900
	StatusCannotUnderstand       Status = 0xC000
)

// Success reports a success status.
func (s Status) Success() bool { return s == StatusSuccess }

// Warning reports a warning status: the instance was stored, with a
// remark (PS3.7 C.4.2: 0001, 0107, 0116, Bxxx).
func (s Status) Warning() bool {
	return s == 0x0001 || s == 0x0107 || s == 0x0116 || s&0xF000 == 0xB000
}

// OutOfResources reports a refusal that may succeed later (A7xx).
func (s Status) OutOfResources() bool { return s&0xFF00 == 0xA700 }

func (s Status) String() string {
	switch {
	case s.Success():
		return "success (0000)"
	case s.Warning():
		return fmt.Sprintf("warning (%04X)", uint16(s))
	case s.OutOfResources():
		return fmt.Sprintf("refused: out of resources (%04X)", uint16(s))
	case s&0xFF00 == 0xA900:
		return fmt.Sprintf("error: data set does not match SOP class (%04X)", uint16(s))
	case s&0xF000 == 0xC000:
		return fmt.Sprintf("error: cannot understand (%04X)", uint16(s))
	case s == StatusDuplicateSOPInstance:
		return "failure: duplicate SOP instance (0111)"
	case s == StatusSOPClassNotSupported:
		return "failure: SOP class not supported (0122)"
	case s == StatusCancel:
		return "cancel (FE00)"
	case s == 0xFF00 || s == 0xFF01:
		return fmt.Sprintf("pending (%04X)", uint16(s))
	}
	return fmt.Sprintf("failure (%04X)", uint16(s))
}

package dicomcodec

// Some conversion tools write Explicit VR files in which standard elements,
// the identifying UIDs among them, carry VR UN (the VR of an element the
// writer did not know). PS3.5 6.2.2 lets a reader that knows the element
// read the value with its real VR: the value bytes are the same as if the
// element had been sent with it. Read that way, the instance keeps its
// UIDs (it would otherwise be refused as having none) and its metadata
// gets the VRs and values of the dictionary, as dcmtk's --convert-un does.
// The stored bytes are never changed.

// dictionaryVRForUN returns the VR from the data dictionary with which to
// read the defined-length value of an element sent as UN, and false for an
// element the dictionary does not know: private elements (odd groups),
// group lengths and unknown tags stay UN. A dictionary SQ means the value
// holds items encoded in Implicit VR Little Endian (PS3.5 6.2.2), which the
// caller reads as such.
func dictionaryVRForUN(t uint32, pixelRep int) (string, bool) {
	if group := uint16(t >> 16); group%2 == 1 || group == 0xFFFE || t&0xFFFF == 0 {
		return "", false
	}
	vr := dictVR(t, pixelRep)
	if vr == "UN" {
		return "", false
	}
	return vr, true
}

// pixelDataVRForUN is the VR of a top-level pixel data element sent as UN:
// OF and OD for Float and Double Float Pixel Data, and for Pixel Data OB
// when Bits Allocated (read before it) is 8 or less, else OW, the rule of
// PS3.5 A.2 for Explicit VR native pixel data.
func pixelDataVRForUN(t uint32, ds Dataset) string {
	switch t {
	case tagFloatPixelData:
		return "OF"
	case tagDoublePixel:
		return "OD"
	}
	if bits := datasetInt(ds, "00280100"); bits > 0 && bits <= 8 {
		return "OB"
	}
	return "OW"
}

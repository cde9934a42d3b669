package dicomcodec

// ReadsTransferSyntax reports whether the header reader reads instances in
// this transfer syntax: the uncompressed ones (Big Endian included),
// Deflated Explicit VR Little Endian, RLE, the JPEG family and the other
// encapsulated syntaxes whose pixel data is kept as received. The DIMSE
// listener accepts exactly these in its presentation contexts.
func ReadsTransferSyntax(uid string) bool {
	_, ok := lookupTransferSyntax(uid)
	return ok
}

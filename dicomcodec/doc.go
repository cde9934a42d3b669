// Package dicomcodec reads and writes DICOM: the Part 10 header reader with
// its limits, the pixel data scanner that finds frames while the bytes
// stream past, transcoding between the uncompressed transfer syntaxes,
// rewriting an instance's patient identity while it streams (identity.go),
// the data dictionary, the Dataset with its DICOM JSON encoding (PS3.18
// F.2), and the syntax of UIDs. It knows nothing of storage, transfers or HTTP.
//
// It imports only the standard library and two packages of
// github.com/suyashkumar/dicom: pkg/tag (the data dictionary) and
// pkg/charset (the character set decoders, which bring golang.org/x/text).
// Its failures wrap the sentinels of errors.go; package gateway maps them to
// its own errors and STOW failure reasons in one place (FromCodec).
//
// The header reader is split by concern: header.go (limits and entry
// points), datasetwalk.go (the element-by-element walk), values.go (value
// decoding by VR) and charset.go (Specific Character Set, ISO 2022).
package dicomcodec

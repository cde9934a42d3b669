// Package dicomcodec reads and writes DICOM: the Part 10 header reader with
// its limits, the pixel data scanner that finds frames while the bytes stream
// past, transcoding between the uncompressed transfer syntaxes, the data
// dictionary, the Dataset with its DICOM JSON encoding (PS3.18 F.2), and the
// syntax of UIDs. It imports only the standard library,
// github.com/suyashkumar/dicom (the data dictionary and character sets) and
// golang.org/x/text (character set decoders); it knows nothing of storage,
// transfers or HTTP. Its failures wrap the sentinels of errors.go, which
// package gateway maps to its own errors and STOW failure reasons in one
// place.
package dicomcodec

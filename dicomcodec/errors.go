package dicomcodec

import "errors"

// Sentinel errors of the codec. Every failure the data is to blame for wraps
// exactly one of them (with the reason in the message); an error of the
// io.Reader or io.Writer a function was given is returned as it is. Package
// gateway maps each to a domain error and a STOW failure reason
// (gateway/errors.go).
var (
	// ErrMalformed: the bytes are not a DICOM dataset the codec can read:
	// truncated, inconsistent lengths, a broken deflate stream, a panic in a
	// decoder.
	ErrMalformed = errors.New("malformed DICOM")
	// ErrLimit: the header exceeds a HeaderLimits bound (element count or
	// size, nesting depth, bytes read before the pixel data).
	ErrLimit = errors.New("beyond a header limit")
	// ErrUnsupportedTransferSyntax: the file's transfer syntax is not one
	// the codec can read.
	ErrUnsupportedTransferSyntax = errors.New("unsupported transfer syntax")
	// ErrMemoryBudget: the headers being parsed at once hold all of a
	// HeaderMemory budget; the same data may be parsed later.
	ErrMemoryBudget = errors.New("header memory budget spent")
	// ErrInvalidUID: a string breaks the UID syntax ValidateUID enforces.
	ErrInvalidUID = errors.New("invalid UID")
	// ErrInvalidInput: an argument or value the codec was asked to encode
	// or convert is not valid for it (a DICOM JSON number that is not one,
	// a transcode target it refuses, data that breaks the rules of the
	// target encoding).
	ErrInvalidInput = errors.New("invalid input")
	// ErrCannotRender: Render cannot make an image of a frame (its
	// photometric interpretation, bit depth or transfer syntax, or a frame
	// that breaks its header); the frame can still be served as stored.
	ErrCannotRender = errors.New("not renderable")
	// ErrUnlocatable: FindElement cannot give the byte range of an element
	// (undefined length, sequences nested beyond its bound, no Part 10
	// header); the instance can still be served whole.
	ErrUnlocatable = errors.New("element cannot be located")
)

package dicomweb

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/textproto"
	"strings"
	"sync"

	"github.com/dicom-gateway/gateway/gateway"
)

// stowAccepted is what the 415 answer names.
const stowAccepted = `multipart/related; type="application/dicom"`

// errUnsupportedMediaType is a request body in a media type STOW-RS does
// not take; statusOf maps it to 415.
var errUnsupportedMediaType = errors.New("unsupported media type")

// stowBoundary checks the Content-Type of a STOW-RS request and returns its
// boundary. It accepts the type and boundary parameters quoted or unquoted
// (mime.ParseMediaType does both) and a missing type parameter (some clients
// omit it; each part is checked anyway); any type other than
// application/dicom is refused, since this gateway stores Part 10 instances
// only.
func stowBoundary(contentType string) (string, error) {
	if contentType == "" {
		return "", fmt.Errorf("no Content-Type; this endpoint accepts %s: %w", stowAccepted, errUnsupportedMediaType)
	}
	mt, params, err := parseContentType(contentType)
	if err != nil {
		return "", fmt.Errorf("Content-Type %q cannot be parsed (%v); this endpoint accepts %s: %w", truncate(contentType, 100), err, stowAccepted, errUnsupportedMediaType)
	}
	if mt != "multipart/related" {
		return "", fmt.Errorf("Content-Type %s is not supported; this endpoint accepts %s: %w", truncate(mt, 100), stowAccepted, errUnsupportedMediaType)
	}
	if t, ok := params["type"]; ok && !strings.EqualFold(strings.TrimSpace(t), "application/dicom") {
		return "", fmt.Errorf("multipart/related type %q is not supported (no application/dicom+json or +xml with bulk data); this endpoint accepts %s: %w", truncate(t, 100), stowAccepted, errUnsupportedMediaType)
	}
	b := params["boundary"]
	if b == "" {
		return "", fmt.Errorf("multipart/related without a boundary parameter: %w", gateway.ErrInvalid)
	}
	if len(b) > maxBoundaryLength {
		return "", fmt.Errorf("multipart/related boundary is %d characters, more than %d: %w", len(b), maxBoundaryLength, gateway.ErrInvalid)
	}
	return b, nil
}

// maxBoundaryLength bounds the multipart boundary. RFC 2046 5.1.1 caps it
// at 70 characters, but real senders exceed that: Orthanc's DICOMweb
// plugin sends 73 (two UUIDs). The bound keeps what the multipart reader
// matches on every line small; past it a request is refused.
const maxBoundaryLength = 200

// parseContentType is mime.ParseMediaType, with a lenient fallback for
// what real STOW-RS clients send and RFC 2045 forbids: an unquoted
// parameter value holding "/" (type=application/dicom).
func parseContentType(v string) (string, map[string]string, error) {
	mt, params, err := mime.ParseMediaType(v)
	if err == nil {
		return mt, params, nil
	}
	fields := strings.Split(v, ";")
	mt = strings.ToLower(strings.TrimSpace(fields[0]))
	if !strings.Contains(mt, "/") || strings.ContainsAny(mt, " \t\"") {
		return "", nil, err
	}
	params = map[string]string{}
	for _, f := range fields[1:] {
		k, val, ok := strings.Cut(f, "=")
		if !ok {
			if strings.TrimSpace(f) == "" {
				continue
			}
			return "", nil, err
		}
		k = strings.ToLower(strings.TrimSpace(k))
		val = strings.TrimSpace(val)
		if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
			val = val[1 : len(val)-1]
		}
		if k == "" || strings.ContainsAny(val, "\"\\") {
			return "", nil, err
		}
		params[k] = val
	}
	return mt, params, nil
}

// partIsDICOM reports whether a part may hold a Part 10 instance: a part
// without Content-Type is taken as the request's type (application/dicom).
func partIsDICOM(h textproto.MIMEHeader) (bool, string) {
	ct := h.Get("Content-Type")
	if ct == "" {
		return true, ""
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false, ct
	}
	return mt == "application/dicom" || mt == "application/octet-stream", mt
}

// multipartError classifies an error met while reading the multipart
// body: an error from below (size limit, idle timeout, client gone), which
// body recorded, is passed on as it is; anything else is a malformed body
// (400).
func multipartError(err error, body *bodyReader) error {
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	if body != nil && body.err != nil {
		return body.err
	}
	return fmt.Errorf("multipart body: %v: %w", err, gateway.ErrInvalid)
}

// partReadBuffer is the read buffer under a STOW-RS multipart reader.
// mime/multipart adopts a *bufio.Reader of at least its own 4 KiB as its
// buffer, so with this one the body is read from the socket, and parts are
// handed to storage, in chunks of up to 256 KiB instead of 4 KiB: a 64th of
// the read and write system calls per instance.
const partReadBuffer = 256 << 10

// partReadBuffers pools the read buffers of STOW-RS requests: allocating
// (and zeroing) 256 KiB per request was a tenth of the CPU of a
// one-instance request.
var partReadBuffers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, partReadBuffer) }}

// newPartReader reads the parts of body one at a time, unaltered
// (NextRawPart: no quoted-printable decoding). The caller calls release
// once nothing reads the parts any more.
func newPartReader(body io.Reader, boundary string) (mr *multipart.Reader, release func()) {
	br := partReadBuffers.Get().(*bufio.Reader)
	br.Reset(body)
	return multipart.NewReader(br, boundary), func() {
		br.Reset(nil)
		partReadBuffers.Put(br)
	}
}

package dicomweb

import (
	"context"
	"errors"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/gateway"
)

// statusByErr is the one mapping from domain errors to HTTP status codes.
var statusByErr = []struct {
	err    error
	status int
}{
	{gateway.ErrNotFound, http.StatusNotFound},
	{gateway.ErrInvalid, http.StatusBadRequest},
	{gateway.ErrConflict, http.StatusConflict},
	{gateway.ErrTooLarge, http.StatusRequestEntityTooLarge},
	{gateway.ErrUnauthenticated, http.StatusUnauthorized},
	{gateway.ErrForbidden, http.StatusForbidden},
	{gateway.ErrNotAcceptable, http.StatusNotAcceptable},
	{gateway.ErrUnavailable, http.StatusServiceUnavailable},
	{errRateLimited, http.StatusTooManyRequests},
	{gateway.ErrBusy, http.StatusTooManyRequests},              // a SHA-256 recompute; Retry-After set by the caller               // ratelimit.go; Retry-After set by the caller
	{errUnsupportedMediaType, http.StatusUnsupportedMediaType}, // multipart.go: a STOW body that is not multipart/related DICOM
	{errMisdirected, http.StatusMisdirectedRequest},            // origin.go: a foreign Host without auth
}

// statusClientClosedRequest is nginx's code for a request whose client
// disconnected before the answer; it keeps such requests out of the 5xx
// counts.
const statusClientClosedRequest = 499

// statusOf returns the HTTP status for err: the first sentinel it wraps, 413
// for *http.MaxBytesError, 500 otherwise.
func statusOf(err error) int {
	err = gateway.FromCodec(err) // a dicomcodec error as the domain sees it
	if errors.Is(err, context.Canceled) {
		// The client went away (or the server is stopping): nobody reads
		// the answer, and it is not the server's error.
		return statusClientClosedRequest
	}
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return http.StatusRequestEntityTooLarge
	}
	for _, e := range statusByErr {
		if errors.Is(err, e.err) {
			return e.status
		}
	}
	return http.StatusInternalServerError
}

// writeError answers with err's status and a JSON body {"error": message}.
// Internal errors are logged with the request ID and shown only as "internal
// error"; 503 answers carry Retry-After so that clients back off.
func (s *Server) writeError(c *gin.Context, err error) {
	status := statusOf(err)
	msg := err.Error()
	if status == http.StatusInternalServerError {
		s.Logger.ErrorContext(c.Request.Context(), "internal error", gateway.LogKeyError, err.Error())
		msg = "internal error"
	}
	if status == http.StatusServiceUnavailable {
		c.Header("Retry-After", "5")
	}
	if status == http.StatusUnauthorized {
		s.setChallenges(c) // one WWW-Authenticate per accepted scheme (auth.go)
	}
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusTooManyRequests, http.StatusMisdirectedRequest:
		c.Header("Connection", "close")
	}
	if c.Writer.Header().Get("Connection") == "close" {
		stopReading(c) // conn_limits.go
	}
	if w, ok := c.Get(mountErrorWriter); ok {
		c.Abort()
		w.(func(*gin.Context, int, string))(c, status, msg) // a Mount's own format
		return
	}
	c.AbortWithStatusJSON(status, gin.H{"error": msg})
}

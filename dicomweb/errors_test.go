package dicomweb

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
)

func TestStatusOf(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want int
	}{
		{fmt.Errorf("study: %w", gateway.ErrNotFound), http.StatusNotFound},
		{fmt.Errorf("uid: %w", gateway.ErrInvalid), http.StatusBadRequest},
		{gateway.ErrConflict, http.StatusConflict},
		{gateway.ErrTooLarge, http.StatusRequestEntityTooLarge},
		{&http.MaxBytesError{Limit: 1}, http.StatusRequestEntityTooLarge},
		{gateway.ErrUnauthenticated, http.StatusUnauthorized},
		{gateway.ErrForbidden, http.StatusForbidden},
		{fmt.Errorf("redis: %w", gateway.ErrUnavailable), http.StatusServiceUnavailable},
		{errors.New("boom"), http.StatusInternalServerError},
		{fmt.Errorf("audit not recorded: %w", context.Canceled), 499},
	} {
		if got := statusOf(tt.err); got != tt.want {
			t.Errorf("statusOf(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

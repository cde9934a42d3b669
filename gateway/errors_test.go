package gateway_test

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// TestFromCodec: every codec sentinel becomes the domain error (and, for a
// refused instance, the STOW FailureReason) it stood for before the codec
// had errors of its own; the text is unchanged and the codec sentinel still
// matches; other errors pass through untouched.
func TestFromCodec(t *testing.T) {
	for _, tt := range []struct {
		codec  error
		domain error
		reason uint16
	}{
		{dicomcodec.ErrMalformed, gateway.ErrInvalid, gateway.ReasonCannotUnderstand},
		{dicomcodec.ErrLimit, gateway.ErrInvalid, gateway.ReasonCannotUnderstand},
		{dicomcodec.ErrUnsupportedTransferSyntax, gateway.ErrInvalid, gateway.ReasonTransferSyntaxUnsupported},
		{dicomcodec.ErrMemoryBudget, gateway.ErrUnavailable, gateway.ReasonOutOfResources},
		{dicomcodec.ErrInvalidUID, gateway.ErrInvalid, 0},
		{dicomcodec.ErrInvalidInput, gateway.ErrInvalid, 0},
		{dicomcodec.ErrCannotRender, gateway.ErrNotAcceptable, 0},
		{dicomcodec.ErrUnlocatable, gateway.ErrNotAcceptable, 0},
	} {
		in := fmt.Errorf("element 7: %w", tt.codec)
		got := gateway.FromCodec(in)
		if !errors.Is(got, tt.domain) || !errors.Is(got, tt.codec) || got.Error() != in.Error() {
			t.Errorf("FromCodec(%v) = %v, want it to wrap %v and %v with the same text", in, got, tt.domain, tt.codec)
		}
		ie, ok := errors.AsType[*gateway.InstanceError](got)
		switch {
		case tt.reason == 0 && ok:
			t.Errorf("FromCodec(%v) is an *InstanceError, want a plain error", in)
		case tt.reason != 0 && (!ok || ie.Reason != tt.reason):
			t.Errorf("FromCodec(%v) = %#v, want an *InstanceError with reason %#x", in, got, tt.reason)
		}
		if again := gateway.FromCodec(got); again != got {
			t.Errorf("FromCodec is not idempotent on %v", got)
		}
	}
	if gateway.FromCodec(nil) != nil {
		t.Error("FromCodec(nil) != nil")
	}
	if err := fmt.Errorf("read: %w", io.ErrUnexpectedEOF); gateway.FromCodec(err) != err {
		t.Error("FromCodec changed a read error")
	}
}

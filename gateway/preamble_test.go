package gateway_test

import (
	"errors"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

func TestExecutablePreamble(t *testing.T) {
	pad := func(s string) []byte { return append([]byte(s), make([]byte, 128-len(s))...) }
	for _, tt := range []struct {
		preamble []byte
		want     string
	}{
		{make([]byte, 128), ""},
		{pad("II*\x00"), ""}, // TIFF little endian: dual-format DICOM/TIFF
		{pad("MM\x00*"), ""}, // TIFF big endian
		{pad("Philips Medical Systems"), ""},
		{pad("MZ\x90\x00"), "PE (MZ)"},
		{pad("\x7fELF\x02\x01"), "ELF"},
		{pad("\xfe\xed\xfa\xce"), "Mach-O"},
		{pad("\xcf\xfa\xed\xfe"), "Mach-O"},
		{pad("\xca\xfe\xba\xbe"), "Mach-O universal"},
		{pad("#!/bin/sh"), "script (#!)"},
	} {
		if got := dicomcodec.ExecutablePreamble(tt.preamble); got != tt.want {
			t.Errorf("ExecutablePreamble(%q) = %q, want %q", tt.preamble[:8], got, tt.want)
		}
	}
}

func TestParsePreamblePolicy(t *testing.T) {
	for in, want := range map[string]gateway.PreamblePolicy{"": gateway.PreambleRefuse, "refuse": gateway.PreambleRefuse, "zero": gateway.PreambleZero} {
		if got, err := gateway.ParsePreamblePolicy(in); err != nil || got != want {
			t.Errorf("ParsePreamblePolicy(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := gateway.ParsePreamblePolicy("strip"); !errors.Is(err, gateway.ErrInvalid) {
		t.Errorf("ParsePreamblePolicy(strip) = %v, want ErrInvalid", err)
	}
}

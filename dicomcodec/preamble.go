package dicomcodec

import "bytes"

// PreambleLen is the length of the Part 10 preamble (PS3.10 7.1).
const PreambleLen = 128

// ExecutablePreamble names the executable format whose header starts the
// preamble p ("" when none): PE (a DOS "MZ" header), ELF, Mach-O (thin or
// fat) or a script ("#!"). A TIFF header ("II*\0", "MM\0*"), which
// dual-format DICOM/TIFF files carry on purpose, is not executable, nor is
// the usual all-zero preamble.
func ExecutablePreamble(p []byte) string {
	for _, f := range []struct {
		name  string
		magic string
	}{
		{"PE (MZ)", "MZ"},
		{"ELF", "\x7fELF"},
		{"Mach-O", "\xfe\xed\xfa\xce"},
		{"Mach-O", "\xfe\xed\xfa\xcf"},
		{"Mach-O", "\xce\xfa\xed\xfe"},
		{"Mach-O", "\xcf\xfa\xed\xfe"},
		{"Mach-O universal", "\xca\xfe\xba\xbe"},
		{"script (#!)", "#!"},
	} {
		if bytes.HasPrefix(p, []byte(f.magic)) {
			return f.name
		}
	}
	return ""
}

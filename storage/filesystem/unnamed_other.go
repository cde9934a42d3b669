//go:build !linux

package filesystem

import (
	"errors"
	"os"
)

var errNoUnnamed = errors.New("unnamed files (O_TMPFILE) are Linux only")

// openUnnamed is Linux only; elsewhere Put uses named temporary files.
func openUnnamed(*os.File) (*os.File, error) { return nil, errNoUnnamed }

func linkUnnamed(_, _ *os.File, _ string) error { return errNoUnnamed }

func renameAt(_ *os.File, _ string, _ *os.File, _ string) error { return errNoUnnamed }

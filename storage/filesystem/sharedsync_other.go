//go:build !linux

package filesystem

import (
	"errors"
	"os"
)

var errNoSyncfs = errors.New("syncfs is Linux only")

// syncFilesystem is Linux only; elsewhere each file is synced on its own.
func syncFilesystem(*os.File) error { return errNoSyncfs }

func writebackError(*os.File) error { return errNoSyncfs }

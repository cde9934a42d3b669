//go:build linux

package filesystem

import (
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// syncFilesystem makes everything written on f's filesystem durable, with
// one syncfs(2): the data and inodes of every file written so far, whoever
// wrote them. It reports a writeback error anywhere on the filesystem
// since f was opened (Linux ≥ 5.8), each error once.
func syncFilesystem(f *os.File) error {
	err := unix.Syncfs(int(f.Fd()))
	runtime.KeepAlive(f)
	if err != nil {
		return &os.PathError{Op: "syncfs", Path: f.Name(), Err: err}
	}
	return nil
}

// writebackError reports whether writing f's data back failed since f was
// opened: after syncFilesystem nothing of f is left to write, so this only
// waits for nothing and reads f's own error state, the one fsync would
// have reported (sync_file_range with WAIT_AFTER checks it per open file).
func writebackError(f *os.File) error {
	err := unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
	runtime.KeepAlive(f)
	if err != nil {
		return &os.PathError{Op: "sync_file_range", Path: f.Name(), Err: err}
	}
	return nil
}

//go:build linux

package filesystem

import (
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// openUnnamed creates a file without a name (O_TMPFILE) on dir's
// filesystem. Creating it touches no directory, so concurrent uploads do
// not contend for the lock of a shared temporary directory (measured: a
// third of the CPU of a small STOW-RS request went to creating its named
// temporary file), and a crash leaves nothing to clean up: the filesystem
// frees an unnamed file when it is closed or at the next mount.
func openUnnamed(dir *os.File) (*os.File, error) {
	fd, err := unix.Openat(int(dir.Fd()), ".", unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o640)
	runtime.KeepAlive(dir)
	if err != nil {
		return nil, &os.PathError{Op: "openat O_TMPFILE", Path: dir.Name(), Err: err}
	}
	return os.NewFile(uintptr(fd), dir.Name()+"/(unnamed)"), nil
}

// linkUnnamed gives the unnamed file f the name name in directory dir. It
// fails with EEXIST when name exists (linkat never replaces), and with
// ENOENT when dir was removed since it was opened.
func linkUnnamed(f, dir *os.File, name string) error {
	// Linking through /proc/self/fd needs no privilege, unlike AT_EMPTY_PATH.
	err := unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(int(f.Fd())), int(dir.Fd()), name, unix.AT_SYMLINK_FOLLOW)
	runtime.KeepAlive(f)
	runtime.KeepAlive(dir)
	if err != nil {
		return &os.LinkError{Op: "linkat", Old: f.Name(), New: dir.Name() + "/" + name, Err: err}
	}
	return nil
}

// renameAt renames from in fromDir to to in toDir, replacing to.
func renameAt(fromDir *os.File, from string, toDir *os.File, to string) error {
	err := unix.Renameat(int(fromDir.Fd()), from, int(toDir.Fd()), to)
	runtime.KeepAlive(fromDir)
	runtime.KeepAlive(toDir)
	if err != nil {
		return &os.LinkError{Op: "renameat", Old: fromDir.Name() + "/" + from, New: toDir.Name() + "/" + to, Err: err}
	}
	return nil
}

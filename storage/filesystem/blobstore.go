package filesystem

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/internal/groupcommit"
)

// tmpDir holds Put's temporary files, inside root so that the final rename
// stays on one filesystem and is atomic. Keys cannot name it: no key element
// may start with "." (gateway.CheckBlobKey, enforced in front of the store
// by blobwrap.CheckKeys).
const tmpDir = ".tmp"

// copyBufferSize bounds the memory of one Put: the stream passes through a
// pooled buffer of this size, whatever the object's size.
const copyBufferSize = 1 << 20

// renameAttempts bounds how often Put recreates a directory that a
// concurrent Delete removed (it prunes empty directories) between its
// creation and the link or rename into it.
const renameAttempts = 10

// BlobStore is a gateway.BlobStore over local files: the object under key
// "a/b/c" is the file root/a/b/c. Put writes a file without a name on
// Linux (O_TMPFILE in root/.tmp; elsewhere, or where the filesystem lacks
// it, the named file root/.tmp/<random>.part), syncs it, then gives it the
// key's name (a link, or a rename when the key exists) and syncs the
// directory, so readers see the old or the new object, never a partial
// one, and a crash leaves at most a temporary file, removed by the next New.
// Safe for concurrent use by one process; two processes must not share a
// root.
type BlobStore struct {
	root    *os.Root
	tmp     *os.File // the open directory root/.tmp
	unnamed bool     // Put writes unnamed files (O_TMPFILE), probed by New
	// noLinks is set by New on a filesystem without hard links (some FUSE
	// mounts, SMB, exFAT): CommitNew of a named temporary file then checks
	// the key and renames, which is not atomic, rather than fail.
	noLinks  bool
	bufs     sync.Pool                       // *[]byte of copyBufferSize
	dirSyncs groupcommit.Committer[*os.File] // syncs of the open directories objects were placed in, shared by concurrent commits
	// dirsMu guards newDirs: the directories created (ensureDir) whose
	// entries in their parents are not yet synced. A Put waits for those
	// on its key's path (waitDirs), so it never acknowledges an object in
	// a directory that a crash could still take away.
	dirsMu  sync.Mutex
	newDirs map[string]*dirCreation
	// onDirSync, when set (tests), is called with each directory synced
	// by name.
	onDirSync func(dir string)
}

// dirCreation is the sync of the entries of directories one ensureDir
// created: done is closed once err, its outcome, is set.
type dirCreation struct {
	done chan struct{}
	err  error
}

var (
	_ gateway.BlobStore = (*BlobStore)(nil)
	_ gateway.Pinger    = (*BlobStore)(nil)
	_ gateway.Stager    = (*BlobStore)(nil)
)

// New opens (creating it if needed) the store in directory dir. It removes
// the temporary files that an interrupted Put left behind.
func New(dir string) (*BlobStore, error) {
	if dir == "" {
		return nil, fmt.Errorf("filesystem blob store: empty directory: %w", gateway.ErrInvalid)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("filesystem blob store: %w", classify(err))
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("filesystem blob store: %w", classify(err))
	}
	if err := root.RemoveAll(tmpDir); err != nil {
		root.Close()
		return nil, fmt.Errorf("filesystem blob store: clear %s: %w", tmpDir, classify(err))
	}
	if err := root.Mkdir(tmpDir, 0o750); err != nil {
		root.Close()
		return nil, fmt.Errorf("filesystem blob store: %w", classify(err))
	}
	tmp, err := root.Open(tmpDir)
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("filesystem blob store: %w", classify(err))
	}
	s := &BlobStore{root: root, tmp: tmp, newDirs: map[string]*dirCreation{}}
	s.unnamed = s.unnamedFilesWork()
	s.noLinks = !s.unnamed && !s.linksWork()
	s.bufs.New = func() any { b := make([]byte, copyBufferSize); return &b }
	s.dirSyncs.Commit = s.syncDirs
	return s, nil
}

// unnamedFilesWork reports whether this system and filesystem let Put
// write an unnamed file and link it afterwards (Linux ≥ 3.11 on ext4, XFS,
// btrfs, tmpfs…, with /proc mounted): it tries once, in .tmp.
func (s *BlobStore) unnamedFilesWork() bool {
	f, err := openUnnamed(s.tmp)
	if err != nil {
		return false
	}
	defer f.Close()
	name, err := tempBase()
	if err != nil {
		return false
	}
	if err := linkUnnamed(f, s.tmp, name); err != nil {
		return false
	}
	return s.root.Remove(tmpDir+"/"+name) == nil
}

// linksWork reports whether the filesystem makes hard links: it links a
// named file in .tmp once.
func (s *BlobStore) linksWork() bool {
	from, err := tempName()
	if err != nil {
		return false
	}
	f, err := s.root.OpenFile(from, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return false
	}
	f.Close()
	defer func() { _ = s.root.Remove(from) }() // best effort: New clears .tmp
	to, err := tempName()
	if err != nil {
		return false
	}
	if err := s.root.Link(from, to); err != nil {
		return false
	}
	return s.root.Remove(to) == nil
}

// Close releases the root directory. Readers returned by Get stay usable
// until they are closed.
func (s *BlobStore) Close() error {
	s.tmp.Close()
	return s.root.Close()
}

// Ping reports whether the root directory and its temporary directory are
// still accessible (a removed or unmounted data directory fails), as
// gateway.ErrUnavailable.
func (s *BlobStore) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("filesystem blob store: %w: %w", gateway.ErrUnavailable, err)
	}
	fi, err := s.root.Stat(tmpDir)
	if err != nil {
		return fmt.Errorf("filesystem blob store %s: %w: %w", s.root.Name(), gateway.ErrUnavailable, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("filesystem blob store %s: %s is not a directory: %w", s.root.Name(), tmpDir, gateway.ErrUnavailable)
	}
	return nil
}

// classify maps filesystem failures to the gateway's sentinels: a missing
// file is ErrNotFound; a full, read-only, failing or forbidden disk is
// ErrUnavailable (the STOW answer is "out of resources", retry later).
func classify(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("%w: %w", gateway.ErrNotFound, err)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EROFS),
		errors.Is(err, syscall.EIO), errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%w: %w", gateway.ErrUnavailable, err)
	}
	return err
}

// Put streams r into a temporary file, syncs it, names it key (a link or a
// rename) and syncs the directory, so that a nil error means the object survives a crash.
// On any failure, or if ctx ends before the rename, the temporary file is
// removed and key is untouched.
func (s *BlobStore) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	b, err := s.stage(ctx, key, r)
	if err != nil {
		return 0, err
	}
	if err := b.Commit(ctx, ""); err != nil {
		return 0, err
	}
	return b.size, nil
}

// Stage implements gateway.Stager: it streams r into a temporary file as Put
// does and leaves the file sync, the rename and the directory sync to
// Commit, so the caller can read its next object while this one syncs.
func (s *BlobStore) Stage(ctx context.Context, key string, r io.Reader) (gateway.StagedBlob, error) {
	return s.stage(ctx, key, r)
}

func (s *BlobStore) stage(ctx context.Context, key string, r io.Reader) (*stagedFile, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("put %s: %w", key, err)
	}
	var (
		f   *os.File
		err error
	)
	tmp := "" // an unnamed file has none
	if s.unnamed {
		f, err = openUnnamed(s.tmp)
	} else if tmp, err = tempName(); err == nil {
		f, err = s.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	}
	if err != nil {
		return nil, fmt.Errorf("put %s: create temporary file: %w", key, classify(err))
	}
	b := &stagedFile{s: s, f: f, tmp: tmp, key: key}
	n, err := s.copy(ctx, f, r)
	if err != nil {
		b.Abort()
		return nil, fmt.Errorf("put %s: %w", key, err)
	}
	b.size = n
	return b, nil
}

// stagedFile is a temporary file written by Stage, waiting for Commit.
type stagedFile struct {
	s        *BlobStore
	f        *os.File
	tmp, key string // tmp is "" for an unnamed file
	size     int64
	synced   bool        // its data is synced (and a named file closed)
	ended    atomic.Bool // Commit or Abort ran
}

func (b *stagedFile) Size() int64 { return b.size }

// Abort removes the temporary file.
func (b *stagedFile) Abort() {
	if !b.ended.Swap(true) {
		b.discard()
	}
}

// discard closes and removes the temporary file; a second Close, after a
// Commit that closed it, only errs.
func (b *stagedFile) discard() {
	b.f.Close() // an unnamed file is gone with it
	if b.tmp != "" {
		_ = b.s.root.Remove(b.tmp) // best effort: New clears what is left
	}
}

// Commit syncs the file, names it with its key (links or renames it) and
// syncs the directory; concurrent commits into one directory share its
// sync (dirSyncs).
func (b *stagedFile) Commit(ctx context.Context, _ string) error {
	return b.commit(ctx, true)
}

// CommitNew is Commit that only links: linkat and link never replace a
// name, so an object already under key is left as it was (ErrConflict) and
// the file stays staged.
func (b *stagedFile) CommitNew(ctx context.Context, _ string) error {
	return b.commit(ctx, false)
}

func (b *stagedFile) commit(ctx context.Context, replace bool) error {
	if b.ended.Swap(true) {
		return fmt.Errorf("put %s: staged object already committed or aborted: %w", b.key, gateway.ErrInvalid)
	}
	committed, kept := false, false
	defer func() {
		if !committed && !kept {
			b.discard()
		}
	}()
	if !b.synced { // a CommitNew that found key taken synced it already
		if err := b.f.Sync(); err != nil {
			return fmt.Errorf("put %s: sync: %w", b.key, classify(err))
		}
		// A named file is closed before its rename (some systems refuse to
		// rename an open file); an unnamed one stays open to be linked.
		if b.tmp != "" {
			if err := b.f.Close(); err != nil {
				return fmt.Errorf("put %s: close: %w", b.key, classify(err))
			}
		}
		b.synced = true
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", b.key, err)
	}
	dir, err := b.s.place(b.key, func(dir *os.File, base string) error {
		switch {
		case b.tmp == "" && replace:
			return b.s.linkOrReplace(b.f, dir, base)
		case b.tmp == "":
			return b.s.taken(b.key, linkUnnamed(b.f, dir, base))
		case replace:
			return placeError("rename", b.s.root.Rename(b.tmp, b.key))
		case b.s.noLinks:
			// No hard links here: look, then rename. Not atomic, but an
			// object already under key is still never replaced knowingly.
			if _, err := b.s.root.Lstat(b.key); err == nil {
				return b.s.taken(b.key, fs.ErrExist)
			}
			return placeError("rename", b.s.root.Rename(b.tmp, b.key))
		default:
			return b.s.taken(b.key, b.s.root.Link(b.tmp, b.key))
		}
	})
	if errors.Is(err, gateway.ErrConflict) {
		kept = true
		b.ended.Store(false)
		return fmt.Errorf("put %s: %w", b.key, err)
	}
	if err != nil {
		return fmt.Errorf("put %s: %w", b.key, err)
	}
	defer dir.Close()
	committed = true
	switch {
	case b.tmp == "":
		if err := b.f.Close(); err != nil {
			return fmt.Errorf("put %s: close: %w", b.key, classify(err))
		}
	case !replace && !b.s.noLinks:
		_ = b.s.root.Remove(b.tmp) // the key is a second link to it; New clears what is left
	}
	return b.syncDir(ctx, dir)
}

// taken says what a failed link onto key means: an object there is
// ErrConflict; a directory of other keys is ErrInvalid (placeError).
func (s *BlobStore) taken(key string, err error) error {
	if errors.Is(err, fs.ErrExist) {
		if fi, serr := s.root.Lstat(key); serr == nil && fi.Mode().IsRegular() {
			return fmt.Errorf("an object is already stored under the key: %w", gateway.ErrConflict)
		}
	}
	return placeError("link", err)
}

// syncDir makes the new name durable. The directory sync runs with its own
// deadline (groupcommit.Committer): the object is already in place, and
// leaving its directory unsynced because this caller gave up would make a
// nil answer to another caller a lie.
func (b *stagedFile) syncDir(ctx context.Context, dir *os.File) error {
	if err := b.s.dirSyncs.Record(context.WithoutCancel(ctx), dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		// The object is in place but may not survive a crash; a concurrent
		// Delete of key may have removed the directory (ErrNotExist): fine.
		return fmt.Errorf("put %s: sync directory: %w", b.key, classify(err))
	}
	return nil
}

// syncDirs syncs each distinct directory of batch once: the commits of
// several objects into one series directory share one directory sync.
// Directories are told apart by identity (os.SameFile), not by name: one
// pruned by a Delete and created again between two commits is another
// directory, synced on its own.
func (s *BlobStore) syncDirs(_ context.Context, batch []*os.File) []error {
	type synced struct {
		fi  fs.FileInfo
		err error
	}
	errs := make([]error, len(batch))
	var done []synced
	for i, d := range batch {
		fi, err := d.Stat()
		if err != nil {
			errs[i] = err
			continue
		}
		if j := slices.IndexFunc(done, func(p synced) bool { return os.SameFile(p.fi, fi) }); j >= 0 {
			errs[i] = done[j].err
			continue
		}
		errs[i] = d.Sync()
		done = append(done, synced{fi: fi, err: errs[i]})
	}
	return errs
}

// tempName returns a fresh name under tmpDir.
func tempName() (string, error) {
	base, err := tempBase()
	if err != nil {
		return "", err
	}
	return tmpDir + "/" + base, nil
}

// tempBase returns a fresh file name for tmpDir.
func tempBase() (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]) + ".part", nil
}

// copy streams r to w through a pooled buffer, checking ctx between reads so
// that a cancelled request stops even a reader that never fails. It fills
// the buffer before each write (a multipart part reader returns a few KiB
// per Read), so a large object costs a few large writes, not one system
// call per network read.
func (s *BlobStore) copy(ctx context.Context, w io.Writer, r io.Reader) (int64, error) {
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := *bp
	var n int64
	for {
		filled, eof := 0, false
		for filled < len(buf) && !eof {
			if err := ctx.Err(); err != nil {
				return n, err
			}
			nr, rerr := r.Read(buf[filled:])
			if nr < 0 || nr > len(buf)-filled {
				return n, fmt.Errorf("read: invalid count %d", nr)
			}
			filled += nr
			if rerr == io.EOF {
				eof = true
			} else if rerr != nil {
				return n, fmt.Errorf("read: %w", rerr)
			}
		}
		if filled > 0 {
			nw, werr := w.Write(buf[:filled])
			n += int64(nw)
			if werr != nil {
				return n, fmt.Errorf("write: %w", classify(werr))
			}
			if nw != filled {
				return n, fmt.Errorf("write: %w", io.ErrShortWrite)
			}
		}
		if eof {
			return n, nil
		}
	}
}

// place names a synced temporary file key with put, which gets key's
// directory open and the key's last element, and returns that directory,
// open (the caller syncs and closes it). A concurrent Delete may prune the
// directory between its creation and put (ENOENT); then it is created
// again.
func (s *BlobStore) place(key string, put func(dir *os.File, base string) error) (*os.File, error) {
	dirName, base := path.Split(key)
	dirName = path.Clean(dirName)
	for attempt := 1; ; attempt++ {
		dir, err := s.openDir(dirName)
		if err != nil {
			return nil, err
		}
		err = put(dir, base)
		if err == nil {
			return dir, nil
		}
		dir.Close()
		if !errors.Is(err, fs.ErrNotExist) || attempt >= renameAttempts {
			return nil, err
		}
	}
}

// linkOrReplace gives the synced unnamed file f the name base in dir: a
// link, or when base exists, replaceWith.
func (s *BlobStore) linkOrReplace(f, dir *os.File, base string) error {
	err := linkUnnamed(f, dir, base)
	if errors.Is(err, syscall.EEXIST) {
		return s.replaceWith(f, dir, base)
	}
	return placeError("link", err)
}

// placeError says what a failed link or rename onto a key means: a key
// that names a directory of other keys is invalid; a missing directory
// stays fs.ErrNotExist (place retries it).
func placeError(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.ENOTEMPTY), errors.Is(err, fs.ErrExist):
		return fmt.Errorf("the key is a prefix of other keys: %w", gateway.ErrInvalid)
	default:
		return fmt.Errorf("%s: %w", op, classify(err))
	}
}

// errParentIsObject is the error of a key that lies under another key.
func errParentIsObject() error {
	return fmt.Errorf("a parent of the key is an object: %w", gateway.ErrInvalid)
}

// replaceWith replaces base in dir with the unnamed file f: linked in .tmp
// first, then renamed over base, so readers see the old or the new object.
func (s *BlobStore) replaceWith(f, dir *os.File, base string) error {
	name, err := tempBase()
	if err != nil {
		return err
	}
	if err := linkUnnamed(f, s.tmp, name); err != nil {
		return fmt.Errorf("link: %w", classify(err))
	}
	err = placeError("rename", renameAt(s.tmp, name, dir, base))
	if err != nil {
		_ = s.root.Remove(tmpDir + "/" + name) // best effort: New clears what is left
	}
	return err
}

// openDir opens directory dir, creating it and its parents when missing
// (ensureDir); a concurrent Delete may prune it again before it is opened,
// and then it is created again.
func (s *BlobStore) openDir(dir string) (*os.File, error) {
	d, err := s.root.Open(dir)
	for attempt := 1; errors.Is(err, fs.ErrNotExist) && attempt < renameAttempts; attempt++ {
		if err := s.ensureDir(dir); err != nil {
			return nil, err
		}
		d, err = s.root.Open(dir)
	}
	if err == nil {
		// Another Put may have created dir or an ancestor and still be
		// syncing its entry.
		if err := s.waitDirs(dir); err != nil {
			d.Close()
			return nil, err
		}
	}
	if errors.Is(err, syscall.ENOTDIR) {
		return nil, errParentIsObject()
	}
	if err != nil {
		return nil, fmt.Errorf("open directory: %w", classify(err))
	}
	if fi, err := d.Stat(); err != nil || !fi.IsDir() {
		d.Close()
		if err != nil {
			return nil, fmt.Errorf("open directory: %w", classify(err))
		}
		return nil, errParentIsObject()
	}
	return d, nil
}

// ensureDir creates dir and its missing parents and makes their entries
// durable: each new directory's entry is in its parent, which is synced.
// (On a journalled file system the sync of the object's own directory
// would carry them along; on ext4 without a journal, or by POSIX, it does
// not, and a crash could lose a study's first acknowledged instance with
// the directory that held it.) The parents are synced at once, in
// parallel, once per new series; meanwhile the new directories are listed
// in newDirs, so that a Put finding one waits for the syncs (openDir waits
// for those on dir's path, its own and other Puts', once dir is open).
func (s *BlobStore) ensureDir(dir string) error {
	s.dirsMu.Lock()
	missing, err := s.missingDirs(dir)
	if err == nil && len(missing) > 0 {
		err = s.root.MkdirAll(dir, 0o750)
		if errors.Is(err, syscall.ENOTDIR) || errors.Is(err, fs.ErrExist) {
			err = errParentIsObject()
		} else if err != nil {
			err = fmt.Errorf("create directory: %w", classify(err))
		}
	}
	if err != nil || len(missing) == 0 {
		s.dirsMu.Unlock()
		return err
	}
	c := &dirCreation{done: make(chan struct{})}
	for _, d := range missing {
		s.newDirs[d] = c
	}
	s.dirsMu.Unlock()

	c.err = s.syncParents(missing)
	s.dirsMu.Lock()
	for _, d := range missing {
		if s.newDirs[d] == c {
			delete(s.newDirs, d)
		}
	}
	s.dirsMu.Unlock()
	close(c.done)
	if c.err != nil {
		return fmt.Errorf("sync directory: %w", classify(c.err))
	}
	return nil
}

// missingDirs lists dir and those of its ancestors that do not exist,
// deepest first.
func (s *BlobStore) missingDirs(dir string) ([]string, error) {
	var missing []string
	for d := dir; d != "."; d = path.Dir(d) {
		fi, err := s.root.Stat(d)
		switch {
		case err == nil && !fi.IsDir(), errors.Is(err, syscall.ENOTDIR):
			return nil, errParentIsObject()
		case err == nil:
			return missing, nil
		case !errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("create directory: %w", classify(err))
		}
		missing = append(missing, d)
	}
	return missing, nil
}

// syncParents syncs the parent of each of dirs, in parallel, and returns
// the failures. A parent that a concurrent Delete pruned is no failure: the
// directory created in it went with it, and the Put that needs it finds it
// missing and creates it again.
func (s *BlobStore) syncParents(dirs []string) error {
	errs := make([]error, len(dirs))
	var wg sync.WaitGroup
	for i, d := range dirs {
		wg.Go(func() {
			if err := s.syncDir(path.Dir(d)); !errors.Is(err, fs.ErrNotExist) {
				errs[i] = err
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// waitDirs waits until the directories on dir's path that other Puts
// created have their entries synced, and returns the first failure.
func (s *BlobStore) waitDirs(dir string) error {
	s.dirsMu.Lock()
	var waits []*dirCreation
	for d := dir; d != "."; d = path.Dir(d) {
		if c, ok := s.newDirs[d]; ok && !slices.Contains(waits, c) {
			waits = append(waits, c)
		}
	}
	s.dirsMu.Unlock()
	for _, c := range waits {
		<-c.done
		if c.err != nil {
			return fmt.Errorf("sync directory: %w", classify(c.err))
		}
	}
	return nil
}

// syncDir makes a rename or removal in dir durable.
func (s *BlobStore) syncDir(dir string) error {
	if s.onDirSync != nil {
		s.onDirSync(dir)
	}
	d, err := s.root.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// object is the reader Get returns: a section of an open file. It also
// implements io.ReaderAt and io.Seeker within the section, which
// http.ServeContent uses.
type object struct {
	*io.SectionReader
	f *os.File
}

func (o *object) Close() error { return o.f.Close() }

// Get opens key and returns the section [offset, offset+length), cut at the
// end of the object. The open file keeps its content even if a Put replaces
// key meanwhile.
func (s *BlobStore) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	f, err := s.root.Open(key)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, classify(err))
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("get %s: %w", key, classify(err))
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("get %s: not an object: %w", key, gateway.ErrNotFound)
	}
	size := fi.Size()
	if offset < 0 || offset > size {
		f.Close()
		return nil, fmt.Errorf("get %s: offset %d outside 0..%d: %w", key, offset, size, gateway.ErrInvalid)
	}
	n := size - offset
	if length >= 0 && length < n {
		n = length
	}
	return &object{SectionReader: io.NewSectionReader(f, offset, n), f: f}, nil
}

// Stat returns key's size and modification time.
func (s *BlobStore) Stat(ctx context.Context, key string) (gateway.BlobInfo, error) {
	if err := ctx.Err(); err != nil {
		return gateway.BlobInfo{}, fmt.Errorf("stat %s: %w", key, err)
	}
	fi, err := s.root.Stat(key)
	if err != nil {
		return gateway.BlobInfo{}, fmt.Errorf("stat %s: %w", key, classify(err))
	}
	if !fi.Mode().IsRegular() {
		return gateway.BlobInfo{}, fmt.Errorf("stat %s: not an object: %w", key, gateway.ErrNotFound)
	}
	return gateway.BlobInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Delete removes key, syncs its directory, and removes the directories the
// removal left empty, so that deleted studies leave no trace in the tree.
func (s *BlobStore) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	fi, err := s.root.Lstat(key)
	if err != nil {
		return fmt.Errorf("delete %s: %w", key, classify(err))
	}
	if fi.IsDir() {
		return fmt.Errorf("delete %s: not an object: %w", key, gateway.ErrNotFound)
	}
	if err := s.root.Remove(key); err != nil {
		return fmt.Errorf("delete %s: %w", key, classify(err))
	}
	dir := path.Dir(key)
	if err := s.syncDir(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: sync directory: %w", key, classify(err))
	}
	// Remove fails on a directory that is not empty, which ends the
	// pruning. It holds dirsMu so that no ensureDir is between creating a
	// directory and creating the next one inside it.
	s.dirsMu.Lock()
	defer s.dirsMu.Unlock()
	for ; dir != "."; dir = path.Dir(dir) {
		if s.root.Remove(dir) != nil {
			break
		}
	}
	return nil
}

// Walk visits the keys under prefix in lexical order. Directory-tree order
// differs ("a.b" < "a/c" because '.' < '/'), so each directory's entries are
// sorted as they appear in keys: a directory d sorts as "d/". Only the
// directories that can hold matching keys are read.
func (s *BlobStore) Walk(ctx context.Context, prefix string, fn func(gateway.BlobInfo) error) error {
	start := "."
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = prefix[:i]
		if gateway.CheckBlobKey(start) != nil {
			return nil // no key lies under an invalid directory
		}
	}
	err := s.walk(ctx, start, prefix, fn)
	if errors.Is(err, errDirGone) {
		return nil
	}
	return err
}

// errDirGone reports a directory that does not exist (any more): no keys
// under it. It is unexported so that no error from fn can be mistaken for it.
var errDirGone = errors.New("directory does not exist")

type dirEntry struct {
	key   string // full key, with "/" appended for directories
	entry fs.DirEntry
}

func (s *BlobStore) walk(ctx context.Context, dir, prefix string, fn func(gateway.BlobInfo) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("walk %s: %w", dir, err)
	}
	d, err := s.root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return errDirGone
	}
	if err != nil {
		return fmt.Errorf("walk %s: %w", dir, classify(err))
	}
	list, err := d.ReadDir(-1)
	d.Close()
	if errors.Is(err, syscall.ENOTDIR) { // prefix "a/" where a is an object
		return errDirGone
	}
	if err != nil {
		return fmt.Errorf("walk %s: %w", dir, classify(err))
	}
	entries := make([]dirEntry, 0, len(list))
	for _, e := range list {
		if strings.HasPrefix(e.Name(), ".") { // .tmp and anything no key can name
			continue
		}
		key := e.Name()
		if dir != "." {
			key = dir + "/" + key
		}
		if e.IsDir() {
			key += "/"
		}
		entries = append(entries, dirEntry{key: key, entry: e})
	}
	slices.SortFunc(entries, func(a, b dirEntry) int { return strings.Compare(a.key, b.key) })
	for _, e := range entries {
		switch {
		case e.entry.IsDir():
			if !strings.HasPrefix(e.key, prefix) && !strings.HasPrefix(prefix, e.key) {
				continue
			}
			err := s.walk(ctx, strings.TrimSuffix(e.key, "/"), prefix, fn)
			if err != nil && !errors.Is(err, errDirGone) { // pruned by a concurrent Delete
				return err
			}
		case e.entry.Type().IsRegular():
			if !strings.HasPrefix(e.key, prefix) {
				continue
			}
			fi, err := e.entry.Info()
			if errors.Is(err, fs.ErrNotExist) { // deleted since ReadDir
				continue
			}
			if err != nil {
				return fmt.Errorf("walk %s: %w", e.key, classify(err))
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("walk %s: %w", dir, err)
			}
			if err := fn(gateway.BlobInfo{Key: e.key, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
				return err
			}
		}
	}
	return nil
}

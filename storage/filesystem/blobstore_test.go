package filesystem_test

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/blobwrap"
	"github.com/dicom-gateway/gateway/storage/filesystem"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

func newStore(tb testing.TB) *filesystem.BlobStore {
	tb.Helper()
	return openStore(tb, tb.TempDir(), false)
}

// openStore opens the store in dir, writing named temporary files when
// named is set (the way of systems without O_TMPFILE).
func openStore(tb testing.TB, dir string, named bool) *filesystem.BlobStore {
	tb.Helper()
	s, err := filesystem.New(dir)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	if named {
		filesystem.UseNamedTemporaryFiles(s)
	}
	return s
}

// writeModes are the two ways Put writes: unnamed files (O_TMPFILE, what
// Linux uses) and named temporary files (the fallback).
var writeModes = []struct {
	name  string
	named bool
}{{"unnamed", false}, {"named", true}}

// TestUnnamedFilesOnLinux: on Linux the store writes unnamed files, so the
// suites below test the path production takes.
func TestUnnamedFilesOnLinux(t *testing.T) {
	if got, want := filesystem.WritesUnnamedFiles(newStore(t)), runtime.GOOS == "linux"; got != want {
		t.Errorf("writes unnamed files = %v on %s, want %v", got, runtime.GOOS, want)
	}
}

// TestCommitNewWithoutLinks: on a filesystem without hard links (some FUSE
// mounts, SMB, exFAT; New finds out, and finds links here) a create-only
// commit checks the key and renames rather than fail every new object: a
// new key is created, an existing object is refused with ErrConflict and
// stays as it was, nothing is left in .tmp.
func TestCommitNewWithoutLinks(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, false)
	if !filesystem.MakesLinks(s) {
		t.Fatal("New found no hard links on the test's file system")
	}
	filesystem.UseNoLinks(s)
	ctx := t.Context()
	key := "studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5.dcm"
	b, err := s.Stage(ctx, key, strings.NewReader("first"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.CommitNew(ctx, ""); err != nil {
		t.Fatalf("CommitNew to a new key without links: %v", err)
	}
	b, err = s.Stage(ctx, key, strings.NewReader("second"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.CommitNew(ctx, ""); !errors.Is(err, gateway.ErrConflict) {
		t.Fatalf("CommitNew over an object without links: %v, want ErrConflict", err)
	}
	b.Abort()
	rc, err := s.Get(ctx, key, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if string(got) != "first" {
		t.Errorf("object after a refused CommitNew: %q, want first", got)
	}
	if left, _ := os.ReadDir(filepath.Join(dir, ".tmp")); len(left) != 0 {
		t.Errorf("%d files left in .tmp", len(left))
	}
}

// TestBlobStore runs the suite through the decorators every store runs
// behind (the store itself leaves the key rule to blobwrap.CheckKeys), once
// for each way of writing.
func TestBlobStore(t *testing.T) {
	for _, m := range writeModes {
		t.Run(m.name, func(t *testing.T) {
			storagetest.TestBlobStore(t, func(t *testing.T) gateway.BlobStore {
				return blobwrap.Wrap(openStore(t, t.TempDir(), m.named), prometheus.NewRegistry(), "filesystem")
			})
		})
	}
}

// TestMetadataStore runs gateway.MetadataStore's prepared metadata objects
// on this store, behind the decorators.
func TestMetadataStore(t *testing.T) {
	storagetest.TestMetadataStore(t, func(t *testing.T) gateway.BlobStore {
		return blobwrap.Wrap(newStore(t), prometheus.NewRegistry(), "filesystem")
	})
}

func TestDecoratorsKeepInterfaces(t *testing.T) {
	storagetest.TestDecoratorsKeepInterfaces(t, newStore(t))
}

func BenchmarkBlobStore(b *testing.B) {
	storagetest.BenchBlobStore(b, func(b *testing.B) gateway.BlobStore { return newStore(b) })
}

// TestNoTemporaryFilesLeft: a failed or cancelled Put leaves no temporary
// file, a successful one, new or replacing a key, renames or links it
// away, in either way of writing.
func TestNoTemporaryFilesLeft(t *testing.T) {
	for _, m := range writeModes {
		t.Run(m.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openStore(t, dir, m.named)
			key := gateway.InstanceKey("1.2.3", "1.2.3.4", "1.2.3.4.5")
			if _, err := s.Put(t.Context(), key, strings.NewReader("first")); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Put(t.Context(), key, strings.NewReader("ok")); err != nil {
				t.Fatal(err)
			}
			boom := errors.New("boom")
			if _, err := s.Put(t.Context(), key, io.MultiReader(strings.NewReader("partial"), iotest.ErrReader(boom))); !errors.Is(err, boom) {
				t.Fatalf("Put err = %v, want %v", err, boom)
			}
			staged, err := s.Stage(t.Context(), gateway.InstanceKey("1.2.3", "1.2.3.4", "1.2.3.4.6"), strings.NewReader("aborted"))
			if err != nil {
				t.Fatal(err)
			}
			staged.Abort()
			entries, err := os.ReadDir(filepath.Join(dir, ".tmp"))
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 0 {
				t.Errorf(".tmp holds %d entries after Puts, want 0", len(entries))
			}
			got, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(key)))
			if err != nil || string(got) != "ok" {
				t.Errorf("file = %q, %v; want %q", got, err, "ok")
			}
			series, err := os.ReadDir(filepath.Join(dir, filepath.FromSlash(path.Dir(key))))
			if err != nil {
				t.Fatal(err)
			}
			if len(series) != 1 {
				t.Errorf("series directory holds %d entries, want only the stored key", len(series))
			}
		})
	}
}

// TestNewClearsTemporaryFiles: temporary files of a crashed process are
// removed when the store is opened again.
func TestNewClearsTemporaryFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, ".tmp"), 0o750); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, ".tmp", "crashed.part")
	if err := os.WriteFile(stale, []byte("half"), 0o640); err != nil {
		t.Fatal(err)
	}
	s, err := filesystem.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale temporary file: Stat err = %v, want ErrNotExist", err)
	}
}

// TestSymlinkCannotEscape: a symbolic link inside the root that points
// outside it is not followed, so no key reaches a file outside the root.
func TestSymlinkCannotEscape(t *testing.T) {
	for _, m := range writeModes {
		t.Run(m.name, func(t *testing.T) { testSymlinkCannotEscape(t, m.named) })
	}
}

func testSymlinkCannotEscape(t *testing.T, named bool) {
	dir, outside := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret.dcm"), []byte("secret"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "studies")); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, dir, named)
	if rc, err := s.Get(t.Context(), "studies/secret.dcm", 0, -1); err == nil {
		rc.Close()
		t.Fatal("Get through a symlink out of the root succeeded")
	}
	if _, err := s.Put(t.Context(), "studies/new.dcm", strings.NewReader("x")); err == nil {
		t.Error("Put through a symlink out of the root succeeded")
	}
	if _, err := os.Stat(filepath.Join(outside, "new.dcm")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("file written outside the root: Stat err = %v", err)
	}
}

// TestDeletePrunesEmptyDirectories: deleting a study's last instance leaves
// no empty directories behind, and the root itself stays.
func TestDeletePrunesEmptyDirectories(t *testing.T) {
	dir := t.TempDir()
	s, err := filesystem.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a := gateway.InstanceKey("1.2.3", "1.2.3.4", "1.2.3.4.5")
	b := gateway.InstanceKey("1.2.3", "1.2.3.4", "1.2.3.4.6")
	for _, k := range []string{a, b} {
		if _, err := s.Put(t.Context(), k, strings.NewReader("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(t.Context(), a); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(b))); err != nil {
		t.Errorf("sibling of a deleted key: %v", err)
	}
	if err := s.Delete(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if got, want := strings.Join(names, ","), ".tmp"; got != want {
		t.Errorf("root holds %q after deleting every key, want %q", got, want)
	}
	if err := s.Ping(t.Context()); err != nil {
		t.Errorf("Ping: %v", err)
	}
}

// TestPingUnavailable: a data directory that disappears is reported as
// gateway.ErrUnavailable.
func TestPingUnavailable(t *testing.T) {
	dir := t.TempDir()
	s, err := filesystem.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(t.Context()); !errors.Is(err, gateway.ErrUnavailable) {
		t.Errorf("Ping after removing the directory: err = %v, want ErrUnavailable", err)
	}
}

// TestKeyConflictsAreInvalid: a key that names a directory of other keys,
// or lies under an object, is refused as gateway.ErrInvalid, in either way
// of writing, and the objects already stored are untouched.
func TestKeyConflictsAreInvalid(t *testing.T) {
	for _, m := range writeModes {
		t.Run(m.name, func(t *testing.T) {
			s := openStore(t, t.TempDir(), m.named)
			if _, err := s.Put(t.Context(), "a/b/c", strings.NewReader("c")); err != nil {
				t.Fatal(err)
			}
			for _, key := range []string{"a/b", "a/b/c/d"} {
				if _, err := s.Put(t.Context(), key, strings.NewReader("x")); !errors.Is(err, gateway.ErrInvalid) {
					t.Errorf("Put(%s) err = %v, want ErrInvalid", key, err)
				}
			}
			rc, err := s.Get(t.Context(), "a/b/c", 0, -1)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			if got, _ := io.ReadAll(rc); string(got) != "c" {
				t.Errorf("a/b/c = %q after the refused Puts, want %q", got, "c")
			}
		})
	}
}

// TestNewDirectoriesAreSynced: the first Put into a new series creates its
// directories and syncs the parent of each, so that a crash cannot lose the
// directory holding an acknowledged object; a second Put into the same
// series creates nothing and syncs none of them again.
func TestNewDirectoriesAreSynced(t *testing.T) {
	for _, m := range writeModes {
		t.Run(m.name, func(t *testing.T) {
			s := openStore(t, t.TempDir(), m.named)
			var (
				mu     sync.Mutex // the parents are synced in parallel
				synced []string
			)
			filesystem.OnDirSync(s, func(dir string) {
				mu.Lock()
				defer mu.Unlock()
				synced = append(synced, dir)
			})
			first := gateway.InstanceKey("1.2.3", "1.2.3.4", "1.2.3.4.5")
			if _, err := s.Put(t.Context(), first, strings.NewReader("x")); err != nil {
				t.Fatal(err)
			}
			var want []string
			for d := path.Dir(path.Dir(first)); ; d = path.Dir(d) { // each new directory's parent, up to the root
				want = append(want, d)
				if d == "." {
					break
				}
			}
			for _, d := range want {
				if !slices.Contains(synced, d) {
					t.Errorf("directory %q was not synced after its new subdirectory was created; synced %q", d, synced)
				}
			}
			synced = nil
			if _, err := s.Put(t.Context(), gateway.InstanceKey("1.2.3", "1.2.3.4", "1.2.3.4.6"), strings.NewReader("y")); err != nil {
				t.Fatal(err)
			}
			for _, d := range synced {
				if slices.Contains(want, d) {
					t.Errorf("second Put into the series synced the parent directory %q again", d)
				}
			}
		})
	}
}

// TestConcurrentPutsIntoNewStudies: concurrent Puts into new and shared
// directories, while Deletes prune them, all succeed and read back.
func TestConcurrentPutsIntoNewStudies(t *testing.T) {
	for _, m := range writeModes {
		t.Run(m.name, func(t *testing.T) {
			s := openStore(t, t.TempDir(), m.named)
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			for w := range 8 {
				wg.Go(func() {
					for i := range 20 {
						study := fmt.Sprintf("1.2.%d", i%5) // shared by workers
						key := gateway.InstanceKey(study, study+".1", fmt.Sprintf("%s.1.%d.%d", study, w, i))
						body := fmt.Sprintf("w%d i%d", w, i)
						if _, err := s.Put(t.Context(), key, strings.NewReader(body)); err != nil {
							errs <- fmt.Errorf("Put %s: %w", key, err)
							return
						}
						rc, err := s.Get(t.Context(), key, 0, -1)
						if err != nil {
							errs <- fmt.Errorf("Get %s: %w", key, err)
							return
						}
						got, _ := io.ReadAll(rc)
						rc.Close()
						if string(got) != body {
							errs <- fmt.Errorf("Get %s = %q, want %q", key, got, body)
							return
						}
						if i%3 == 0 { // prune: the directory may go and come back
							if err := s.Delete(t.Context(), key); err != nil {
								errs <- fmt.Errorf("Delete %s: %w", key, err)
								return
							}
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}

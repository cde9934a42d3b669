package filesystem

// UseNamedTemporaryFiles makes s write named temporary files, as on a
// system without O_TMPFILE, so that tests cover both ways of writing.
func UseNamedTemporaryFiles(s *BlobStore) { s.unnamed = false }

// WritesUnnamedFiles reports whether s writes unnamed files (O_TMPFILE).
func WritesUnnamedFiles(s *BlobStore) bool { return s.unnamed }

// OnDirSync makes s call fn with each directory it syncs by name.
func OnDirSync(s *BlobStore, fn func(dir string)) { s.onDirSync = fn }

// SetSharedSyncFrom sets the number of commits syncing at once from which
// they share a syncfs (1: always, when the system allows it).
func SetSharedSyncFrom(s *BlobStore, n int64) { s.sharedSyncFrom = n }

// SharedSyncs reports whether s may share syncfs among commits.
func SharedSyncs(s *BlobStore) bool { return s.sharedSyncs }

// OnFilesystemSync makes s call fn before each syncfs it shares among commits.
func OnFilesystemSync(s *BlobStore, fn func()) { s.onFilesystemSync = fn }

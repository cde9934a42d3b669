package filesystem

// UseNamedTemporaryFiles makes s write named temporary files, as on a
// system without O_TMPFILE, so that tests cover both ways of writing.
func UseNamedTemporaryFiles(s *BlobStore) { s.unnamed = false }

// WritesUnnamedFiles reports whether s writes unnamed files (O_TMPFILE).
func WritesUnnamedFiles(s *BlobStore) bool { return s.unnamed }

// OnDirSync makes s call fn with each directory it syncs by name.
func OnDirSync(s *BlobStore, fn func(dir string)) { s.onDirSync = fn }

// UseNoLinks makes s behave as on a filesystem without hard links (and
// without O_TMPFILE, which needs them).
func UseNoLinks(s *BlobStore) { s.unnamed, s.noLinks = false, true }

// MakesLinks reports whether New found hard links to work.
func MakesLinks(s *BlobStore) bool { return !s.noLinks }

package gateway

// Ingester stores instances: it streams the original bytes to the BlobStore
// while parsing the header, then writes the index entry. (Owned by the
// STOW-RS work.)
type Ingester struct {
	Blobs BlobStore
	Index Index
}

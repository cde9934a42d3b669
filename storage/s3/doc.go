// Package s3 is the production gateway.BlobStore on S3-compatible object
// storage (MinIO, or any server speaking the S3 API) through minio-go v7. It
// imports package gateway and minio-go only. The key rule is checked in
// front of it by blobwrap.CheckKeys.
package s3

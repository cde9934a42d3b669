// Package dicomweb is the HTTP layer: DICOMweb (STOW-RS, QIDO-RS, WADO-RS,
// WADO-URI), the admin API under /api/v1, the admin page under /ui/ and the
// operational endpoints. It parses requests, calls one gateway method and
// encodes the answer; routes.go is the one table of routes and the role each
// needs, errors.go the one mapping from domain errors to HTTP status codes.
// It imports package gateway and gin, never a storage backend.
package dicomweb

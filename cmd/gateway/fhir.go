package main

import (
	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/fhir"
	"github.com/dicom-gateway/gateway/gateway"
)

// fhirMounts are the routes of the FHIR R4 facade (/fhir) on the gateway's
// HTTP server: role read, the server's authentication, rate limits and
// request IDs, and errors the server answers itself written as
// OperationOutcome.
func fhirMounts(m *Main) []dicomweb.Mount {
	h := &fhir.Handler{
		Name:      m.Config.Name,
		Query:     m.Services.Query,
		Instances: m.Backends.Index,
		// m.Server is built with these mounts; it serves requests only
		// once it exists.
		DICOMwebURL: func(c *gin.Context) string { return m.Server.DICOMwebURL(c) },
		Logger:      m.Logger,
	}
	var mounts []dicomweb.Mount
	for _, rt := range h.Routes() {
		mounts = append(mounts, dicomweb.Mount{
			Method: rt.Method, Path: rt.Path, Role: gateway.RoleRead, Handler: rt.Handler, WriteError: fhir.WriteError,
		})
	}
	return mounts
}

// Package fhir is the gateway's FHIR R4 facade: an electronic patient record
// asks "which images exist for this patient, at this centre" with an
// ImagingStudy search by NHS number and opens them through the Endpoint
// (type dicom-wado-rs) each study points at. Resources are built from the
// index through the gateway's query service (gateway.QueryService), which
// audits every search as it audits a QIDO-RS one (the route tells them
// apart), and the study's instance list; errors are OperationOutcome
// resources.
//
// It imports the domain (gateway), gin and the FHIR R4 model
// (github.com/samply/golang-fhir-models: generated Go structs for every R4
// resource, no dependencies of its own); cmd/gateway mounts its routes on
// the dicomweb server, which applies authentication (role read), rate
// limits and request IDs as for DICOMweb. It never imports dicomweb or
// storage.
package fhir

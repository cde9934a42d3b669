package fhir

import (
	"net/http"

	"github.com/gin-gonic/gin"
	fm "github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// capabilityDate is when this CapabilityStatement last changed (its
// required date).
const capabilityDate = "2026-12-05"

// capabilities is this server's CapabilityStatement: read and search of
// ImagingStudy with the parameters parseSearch knows, read of Endpoint.
func (h *Handler) capabilities(base string) fm.CapabilityStatement {
	param := func(name string, typ fm.SearchParamType, definition, doc string) fm.CapabilityStatementRestResourceSearchParam {
		p := fm.CapabilityStatementRestResourceSearchParam{Name: name, Type: typ, Documentation: ptr(doc)}
		if definition != "" {
			p.Definition = ptr(definition)
		}
		return p
	}
	read := fm.CapabilityStatementRestResourceInteraction{Code: fm.TypeRestfulInteractionRead}
	search := fm.CapabilityStatementRestResourceInteraction{Code: fm.TypeRestfulInteractionSearchType}
	return fm.CapabilityStatement{
		Name:        ptr("DICOMGatewayFHIR"),
		Title:       ptr("DICOM transfer gateway " + h.Name + ": imaging studies"),
		Status:      fm.PublicationStatusActive,
		Date:        capabilityDate,
		Kind:        fm.CapabilityStatementKindInstance,
		Software:    &fm.CapabilityStatementSoftware{Name: "dicom-gateway"},
		Description: ptr("Read-only FHIR R4 view of the studies this gateway holds; each ImagingStudy references the WADO-RS Endpoint that serves its images."),
		Implementation: &fm.CapabilityStatementImplementation{
			Description: "dicom-gateway " + h.Name,
			Url:         ptr(base),
		},
		FhirVersion: fm.FHIRVersion4_0_1,
		Format:      []string{"application/fhir+json", "json"},
		Rest: []fm.CapabilityStatementRest{{
			Mode: fm.RestfulCapabilityModeServer,
			Resource: []fm.CapabilityStatementRestResource{
				{
					Type:        fm.ResourceTypeImagingStudy,
					Profile:     ptr("http://hl7.org/fhir/StructureDefinition/ImagingStudy"),
					Interaction: []fm.CapabilityStatementRestResourceInteraction{read, search},
					SearchParam: []fm.CapabilityStatementRestResourceSearchParam{
						param("_id", fm.SearchParamTypeToken, "", "the Study Instance UID"),
						param("identifier", fm.SearchParamTypeToken, "http://hl7.org/fhir/SearchParameter/ImagingStudy-identifier", "urn:oid:<Study Instance UID>"),
						param("patient", fm.SearchParamTypeReference, "http://hl7.org/fhir/SearchParameter/ImagingStudy-patient",
							"chained as patient.identifier=<system>|<value>; system "+"https://fhir.nhs.uk/Id/nhs-number finds the NHS number as the Patient ID or in the Other Patient IDs Sequence"),
						param("started", fm.SearchParamTypeDate, "http://hl7.org/fhir/SearchParameter/ImagingStudy-started", "prefixes eq, ge, le, gt, lt; day precision"),
						param("modality", fm.SearchParamTypeToken, "http://hl7.org/fhir/SearchParameter/ImagingStudy-modality", "DICOM modality codes (DCM), comma-separated for any of them"),
					},
				},
				{
					Type:        fm.ResourceTypeEndpoint,
					Interaction: []fm.CapabilityStatementRestResourceInteraction{read},
				},
			},
		}},
	}
}

// handleMetadata answers GET /fhir/metadata.
func (h *Handler) handleMetadata(c *gin.Context) {
	if !h.negotiate(c) {
		return
	}
	h.write(c, http.StatusOK, h.capabilities(h.base(c)))
}

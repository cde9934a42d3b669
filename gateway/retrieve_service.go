package gateway

import (
	"context"
	"fmt"
	"image"
	"slices"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// renderConcurrency bounds concurrent renders in the process: each holds a
// frame (up to MaxRenderFrameBytes) and its decoded image in memory.
const renderConcurrency = 4

// RetrieveService is the read use case (WADO-RS, WADO-URI; a DIMSE C-GET
// or a FHIR facade's retrieve next). It resolves records with its Retriever
// (built once; lookups and opens are promoted from it) and audits every read
// before any byte is served: if the audit log cannot take the event the read
// fails with ErrUnavailable and nothing is served, so patient data is never
// served unaudited.
type RetrieveService struct {
	*Retriever
	index       Index
	metadata    *MetadataStore
	audit       auditRecorder
	overNetwork bool
	renderSlots chan struct{}
}

func newRetrieveService(r *Retriever, blobs BlobStore, index Index, a auditRecorder) *RetrieveService {
	var metadata *MetadataStore
	if blobs != nil {
		metadata = &MetadataStore{Blobs: blobs}
	}
	return &RetrieveService{Retriever: r, index: index, metadata: metadata, audit: a, overNetwork: blobs != nil && OverNetwork(blobs),
		renderSlots: make(chan struct{}, renderConcurrency)}
}

// OverNetwork reports whether blobs come from a NetworkStore, where opening
// more of them ahead pays.
func (s *RetrieveService) OverNetwork() bool { return s.overNetwork }

// ReadMetadata calls fn with the prepared metadata of each entry, in order
// (MetadataStore.Read).
func (s *RetrieveService) ReadMetadata(ctx context.Context, entries []MetadataEntry, fn func(MetadataEntry, []byte) error) error {
	if s.metadata == nil {
		return fmt.Errorf("no blob store configured: %w", ErrUnavailable)
	}
	return s.metadata.Read(ctx, entries, fn)
}

// AuditRead records that caller is about to be sent recs (or part of them:
// detail says what, "bytes" how much; by default their whole size).
func (s *RetrieveService) AuditRead(ctx context.Context, caller Caller, recs []*InstanceRecord, detail map[string]any) error {
	return s.audit.subject(ctx, caller, ActionRetrieve, OutcomeSuccess, SubjectOfRecords(recs, nil), detail)
}

// AuditMetadataRead records that caller is about to be sent the metadata of
// entries.
func (s *RetrieveService) AuditMetadataRead(ctx context.Context, caller Caller, entries []MetadataEntry) error {
	return s.audit.subject(ctx, caller, ActionRetrieve, OutcomeSuccess, subjectOfEntries(entries), map[string]any{"metadata": true, "bytes": 0})
}

// Render decodes frame n of rec for caller and hands the image to encode,
// in at most renderConcurrency renders at once (waiting for a slot until ctx
// ends: ErrUnavailable). The read is audited, with detail, once the frame
// is open and before it is decoded.
func (s *RetrieveService) Render(ctx context.Context, caller Caller, rec *InstanceRecord, n int, opts dicomcodec.RenderOptions, detail map[string]any, encode func(image.Image) error) error {
	if err := CheckRenderable(rec); err != nil {
		return err
	}
	select { // decoding holds a frame and an image in memory: bound how many at once
	case s.renderSlots <- struct{}{}:
		defer func() { <-s.renderSlots }()
	case <-ctx.Done():
		return fmt.Errorf("rendering: %w", ErrUnavailable)
	}
	frame, size, err := s.OpenFrame(ctx, rec, n)
	if err != nil {
		return err
	}
	defer frame.Close()
	detail["bytes"] = size
	if err := s.AuditRead(ctx, caller, []*InstanceRecord{rec}, detail); err != nil {
		return err
	}
	img, err := Render(rec, frame, size, opts)
	if err != nil {
		return err
	}
	return encode(img)
}

// AuditSubject is what an audit event says was touched.
type AuditSubject struct {
	Studies, Series, PatientIDs []string
	Instances                   int
	Bytes                       int64
	SOPInstanceUID              string // when there is one instance
}

// SubjectOfRecords describes recs; studies, when given, are named even if
// recs is empty (a delete of orphan blobs).
func SubjectOfRecords(recs []*InstanceRecord, studies []string) AuditSubject {
	sub := AuditSubject{Studies: studies, Instances: len(recs), PatientIDs: PatientIDsOf(recs)}
	for _, r := range recs {
		sub.add(r.StudyInstanceUID, r.SeriesInstanceUID)
		sub.Bytes += r.Size
	}
	if len(recs) == 1 {
		sub.SOPInstanceUID = recs[0].SOPInstanceUID
	}
	return sub
}

// subjectOfEntries describes the instances whose prepared metadata is sent.
func subjectOfEntries(entries []MetadataEntry) AuditSubject {
	sub := AuditSubject{Instances: len(entries)}
	for _, e := range entries {
		sub.add(e.StudyInstanceUID, e.SeriesInstanceUID)
		sub.PatientIDs = appendNewIDs(sub.PatientIDs, e.PatientID, e.NationalID)
	}
	if len(entries) == 1 {
		sub.SOPInstanceUID = entries[0].SOPInstanceUID
	}
	return sub
}

func (sub *AuditSubject) add(study, series string) {
	if !slices.Contains(sub.Studies, study) {
		sub.Studies = append(sub.Studies, study)
	}
	if !slices.Contains(sub.Series, series) {
		sub.Series = append(sub.Series, series)
	}
}

// subject records one event of caller about sub, failing closed.
func (a auditRecorder) subject(ctx context.Context, caller Caller, action, outcome string, sub AuditSubject, detail map[string]any) error {
	if a.auditor == nil {
		return nil
	}
	if detail == nil {
		detail = map[string]any{}
	}
	detail["route"] = caller.Route
	detail["instances"] = sub.Instances
	detail["series_uids"] = sub.Series
	if sub.SOPInstanceUID != "" {
		detail["sop_instance_uid"] = sub.SOPInstanceUID
	}
	if _, ok := detail["bytes"]; !ok && action == ActionRetrieve {
		detail["bytes"] = sub.Bytes
	}
	ev := a.event(caller, action, outcome)
	ev.StudyUIDs, ev.PatientIDs, ev.Detail = sub.Studies, sub.PatientIDs, detail
	return a.record(ctx, ev, "request refused", " (nothing was sent or changed)")
}

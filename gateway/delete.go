package gateway

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
)

// deleteLockTTL bounds how long one instance's delete holds its lease.
const deleteLockTTL = 30 * time.Second

// Deleter removes studies, series and instances: their blobs and their index
// entries (the Index then recomputes the study and series attributes QIDO-RS
// returns).
//
// Order, and why: for each instance the blob is deleted first and the index
// entry last, under the instance's Index lease (so a concurrent STOW of the
// same instance cannot interleave). If the blob delete fails, the record is
// still there and a retried DELETE finds and deletes it again. If the index
// delete fails, the record still names the instance, its blob's ErrNotFound
// counts as done, and the retry removes the record. The other order could
// strand a blob with no record: invisible to DELETE, and brought back to life
// by reindex, because object storage is the source of truth. Blobs under the
// study or series prefix that have no record (an ingest that crashed between
// blob and index, or an earlier delete of the other order) are removed too, so
// a DELETE that answers success leaves nothing behind.
type Deleter struct {
	Blobs BlobStore
	Index Index
	// Workers bounds how many instances are deleted at once (default 8).
	Workers int
}

// DeletePlan is what a delete will remove, resolved before anything is
// removed so that the caller can audit it first (fail closed).
type DeletePlan struct {
	StudyInstanceUID  string
	SeriesInstanceUID string // "" for a study
	SOPInstanceUID    string // "" for a study or series
	Records           []*InstanceRecord
	// OrphanKeys are blobs under the scope that have no index record.
	OrphanKeys []string
	// MetadataKeys are the series metadata objects under a study's or a
	// series' scope (metadata/<study>/…), removed after the instances: the
	// per-instance removal below deletes its series' object, but a read of
	// the series that ran alongside may have written it again, and an
	// object left by an earlier such race has no instance left to remove
	// it. They hold patient headers, so a delete leaves none behind.
	MetadataKeys []string
}

// StudyUIDs returns the studies the plan touches.
func (p *DeletePlan) StudyUIDs() []string { return []string{p.StudyInstanceUID} }

// PatientIDs returns the distinct Patient IDs of the plan's records, for the
// audit event.
func (p *DeletePlan) PatientIDs() []string { return PatientIDsOf(p.Records) }

// PatientIDsOf returns the distinct patient identities of recs that an
// audit event names (AppendPatientIdentities), in order of first
// appearance.
func PatientIDsOf(recs []*InstanceRecord) []string {
	var ids []string
	for _, r := range recs {
		ids = AppendPatientIdentities(ids, r.Metadata)
	}
	return ids
}

// AppendPatientIdentities appends to ids, unless already there, the
// identities of the patient of md that audit events name: its Patient ID
// and, when it carries one under another ID (NationalID), its NHS number.
// An admin asking the audit log who saw the scans of NHS number N then
// finds the reads of studies held under a local hospital number too, as
// transfers between centres rewrite one into the other.
func AppendPatientIdentities(ids []string, md dicomcodec.Dataset) []string {
	return appendNewIDs(ids, md.String(dicomcodec.TagPatientID), nationalIDOf(md))
}

// appendNewIDs appends to ids each of add, trimmed, that is not empty and
// not there yet.
func appendNewIDs(ids []string, add ...string) []string {
	for _, id := range add {
		if id = strings.TrimSpace(id); id != "" && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids
}

func nationalIDOf(md dicomcodec.Dataset) string {
	id, _ := NationalID(md)
	return id
}

// PlanStudy resolves what deleting a study removes. ErrInvalid for a
// malformed UID; ErrNotFound when neither records nor blobs exist.
func (d *Deleter) PlanStudy(ctx context.Context, studyUID string) (*DeletePlan, error) {
	if err := ValidateUID(studyUID); err != nil {
		return nil, fmt.Errorf("study: %w", err)
	}
	p := &DeletePlan{StudyInstanceUID: studyUID}
	return p, d.plan(ctx, p, func() ([]*InstanceRecord, error) {
		return d.Index.ListInstances(ctx, studyUID, "")
	}, StudyPrefix(studyUID), studyMetadataPrefix(studyUID))
}

// studyMetadataPrefix is the prefix of a study's series metadata objects
// (SeriesMetadataKey).
func studyMetadataPrefix(studyUID string) string { return "metadata/" + mustUID(studyUID) + "/" }

// PlanSeries resolves what deleting one series of a study removes.
func (d *Deleter) PlanSeries(ctx context.Context, studyUID, seriesUID string) (*DeletePlan, error) {
	if err := ValidateUID(studyUID); err != nil {
		return nil, fmt.Errorf("study: %w", err)
	}
	if err := ValidateUID(seriesUID); err != nil {
		return nil, fmt.Errorf("series: %w", err)
	}
	p := &DeletePlan{StudyInstanceUID: studyUID, SeriesInstanceUID: seriesUID}
	return p, d.plan(ctx, p, func() ([]*InstanceRecord, error) {
		return d.Index.ListInstances(ctx, studyUID, seriesUID)
	}, StudyPrefix(studyUID)+"series/"+seriesUID+"/", studyMetadataPrefix(studyUID)+seriesUID+"/")
}

// PlanInstance resolves what deleting one instance removes.
func (d *Deleter) PlanInstance(ctx context.Context, studyUID, seriesUID, sopInstanceUID string) (*DeletePlan, error) {
	r := Retriever{Blobs: d.Blobs, Index: d.Index}
	p := &DeletePlan{StudyInstanceUID: studyUID, SeriesInstanceUID: seriesUID, SOPInstanceUID: sopInstanceUID}
	rec, err := r.Instance(ctx, studyUID, seriesUID, sopInstanceUID)
	switch {
	case err == nil:
		p.Records = []*InstanceRecord{rec}
		return p, nil
	case !errors.Is(err, ErrNotFound):
		return nil, err
	}
	// No record (or one under another study): only an orphan blob under this
	// exact key is ours to remove.
	key := InstanceKey(studyUID, seriesUID, sopInstanceUID)
	if _, serr := d.Blobs.Stat(ctx, key); serr != nil {
		if errors.Is(serr, ErrNotFound) {
			return nil, err
		}
		return nil, serr
	}
	if other, gerr := d.Index.GetInstance(ctx, sopInstanceUID); gerr == nil && other.Key() == key {
		p.Records = []*InstanceRecord{other}
	} else {
		p.OrphanKeys = []string{key}
	}
	return p, nil
}

// plan fills p.Records from list, p.OrphanKeys from the blobs under prefix
// that no record names, and p.MetadataKeys from the objects under
// metadataPrefix.
func (d *Deleter) plan(ctx context.Context, p *DeletePlan, list func() ([]*InstanceRecord, error), prefix, metadataPrefix string) error {
	recs, err := list()
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	p.Records = recs
	known := make(map[string]bool, len(recs))
	for _, r := range recs {
		known[r.Key()] = true
	}
	err = d.Blobs.Walk(ctx, prefix, func(bi BlobInfo) error {
		if _, _, _, ok := ParseInstanceKey(bi.Key); ok && !known[bi.Key] {
			p.OrphanKeys = append(p.OrphanKeys, bi.Key)
		}
		return nil
	})
	if err != nil {
		return err
	}
	err = d.Blobs.Walk(ctx, metadataPrefix, func(bi BlobInfo) error {
		p.MetadataKeys = append(p.MetadataKeys, bi.Key)
		return nil
	})
	if err != nil {
		return err
	}
	if len(p.Records) == 0 && len(p.OrphanKeys) == 0 && len(p.MetadataKeys) == 0 {
		return fmt.Errorf("%s: %w", scopeName(p), ErrNotFound)
	}
	return nil
}

func scopeName(p *DeletePlan) string {
	switch {
	case p.SOPInstanceUID != "":
		return "instance " + p.SOPInstanceUID
	case p.SeriesInstanceUID != "":
		return "series " + p.SeriesInstanceUID + " of study " + p.StudyInstanceUID
	}
	return "study " + p.StudyInstanceUID
}

// DeleteResult counts what a delete removed.
type DeleteResult struct {
	Instances int   // index records removed
	Blobs     int   // blobs removed (including orphans)
	Bytes     int64 // sum of the removed records' sizes
}

// Execute carries out p. It keeps going after a failure so that one bad
// instance does not block the rest, and returns every error joined; a retry
// of the same DELETE completes what is left (see Deleter). Items already gone
// count as done.
func (d *Deleter) Execute(ctx context.Context, p *DeletePlan) (DeleteResult, error) {
	workers := d.Workers
	if workers <= 0 {
		workers = 8
	}
	var (
		mu   sync.Mutex
		res  DeleteResult
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, workers)
	)
	report := func(blobs, instances int, bytes int64, err error) {
		mu.Lock()
		defer mu.Unlock()
		res.Blobs += blobs
		res.Instances += instances
		res.Bytes += bytes
		if err != nil {
			errs = append(errs, err)
		}
	}
	run := func(f func()) {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			report(0, 0, 0, ctx.Err())
			return
		}
		wg.Go(func() {
			defer func() { <-sem }()
			f()
		})
	}
	for _, rec := range p.Records {
		run(func() {
			b, i, err := d.deleteRecord(ctx, rec)
			report(b, i, rec.Size*int64(i), err)
		})
	}
	for _, key := range p.OrphanKeys {
		run(func() {
			b, err := d.deleteOrphan(ctx, key)
			report(b, 0, 0, err)
		})
	}
	wg.Wait()
	for _, key := range p.MetadataKeys { // after the instances, whose removal may race with a read writing them
		if err := d.Blobs.Delete(ctx, key); err != nil && !errIsNotFound(err) {
			report(0, 0, 0, fmt.Errorf("metadata object %s: %w", key, err))
		}
	}
	if len(errs) > 0 {
		return res, fmt.Errorf("delete %s: %d of %d items failed (retry to complete): %w",
			scopeName(p), len(errs), len(p.Records)+len(p.OrphanKeys)+len(p.MetadataKeys), errors.Join(errs...))
	}
	return res, nil
}

// deleteRecord removes one instance's blob, then its record, under its lease.
func (d *Deleter) deleteRecord(ctx context.Context, rec *InstanceRecord) (blobs, instances int, err error) {
	unlock, err := d.Index.Lock(ctx, rec.SOPInstanceUID, deleteLockTTL)
	if err != nil {
		return 0, 0, fmt.Errorf("instance %s: lock: %w", rec.SOPInstanceUID, err)
	}
	defer unlock()
	if err := d.Blobs.Delete(ctx, rec.Key()); err == nil {
		blobs = 1
	} else if !errIsNotFound(err) {
		return 0, 0, fmt.Errorf("instance %s: delete blob: %w", rec.SOPInstanceUID, err)
	}
	if err := d.Index.DeleteInstance(ctx, rec.SOPInstanceUID); err == nil {
		instances = 1
	} else if !errIsNotFound(err) {
		return blobs, 0, fmt.Errorf("instance %s: delete index entry: %w", rec.SOPInstanceUID, err)
	}
	// The series' metadata object holds the instance's header too. A read
	// that listed the instance before the delete may write the object again
	// (without it: the blob is gone); such an object is never served, since
	// the entries it was built from no longer exist, and the next read of
	// the series replaces it.
	if err := (&MetadataStore{Blobs: d.Blobs}).Delete(ctx, rec.StudyInstanceUID, rec.SeriesInstanceUID); err != nil {
		return blobs, instances, fmt.Errorf("instance %s: %w", rec.SOPInstanceUID, err)
	}
	return blobs, instances, nil
}

// deleteOrphan removes a blob that had no record when the plan was made,
// unless an ingest has since indexed it (checked under the instance's lease,
// which ingest holds until its index entry is written).
func (d *Deleter) deleteOrphan(ctx context.Context, key string) (int, error) {
	_, _, sop, ok := ParseInstanceKey(key)
	if !ok {
		return 0, nil
	}
	unlock, err := d.Index.Lock(ctx, sop, deleteLockTTL)
	if err != nil {
		return 0, fmt.Errorf("orphan %s: lock: %w", key, err)
	}
	defer unlock()
	if rec, err := d.Index.GetInstance(ctx, sop); err == nil && rec.Key() == key {
		return 0, nil // indexed meanwhile: a live instance now, not an orphan
	}
	if err := d.Blobs.Delete(ctx, key); err != nil {
		if errIsNotFound(err) {
			return 0, nil
		}
		return 0, fmt.Errorf("orphan %s: %w", key, err)
	}
	return 1, nil
}

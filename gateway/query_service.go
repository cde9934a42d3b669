package gateway

import (
	"context"
	"fmt"
	"sort"
)

// QueryService is the search use case (QIDO-RS today; a FHIR ImagingStudy
// search next): it searches the index and audits the search, with the
// result's studies and patients, before any result is returned.
type QueryService struct {
	index Index
	audit auditRecorder
}

// Search runs q for caller. keys are the names of the parameters the caller
// sent (never their values, which may be patient names or IDs), recorded in
// the audit event with the level and the result count. If the audit log
// cannot take the event, Search fails with ErrUnavailable and returns no
// result.
func (s *QueryService) Search(ctx context.Context, caller Caller, q *Query, keys []string) (*SearchResult, error) {
	if s.index == nil {
		return nil, fmt.Errorf("no index configured: %w", ErrUnavailable)
	}
	res, err := s.index.Search(ctx, q)
	if err != nil {
		return nil, err
	}
	keys = append(make([]string, 0, len(keys)), keys...) // [] in the event, never null
	sort.Strings(keys)
	ev := s.audit.event(caller, ActionQuery, OutcomeSuccess)
	ev.StudyUIDs, ev.PatientIDs = res.StudyUIDs, res.PatientIDs
	ev.Detail = map[string]any{
		"route":   caller.Route,
		"level":   q.Level.String(),
		"keys":    keys,
		"results": len(res.Items),
		"more":    res.More,
	}
	if err := s.audit.record(ctx, ev, "query refused", ""); err != nil {
		return nil, err
	}
	return res, nil
}

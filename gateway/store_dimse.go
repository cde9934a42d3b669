package gateway

import (
	"errors"
	"io"
)

// Store reads one instance from r and finishes it (durable, indexed,
// routed) before it returns, for a front end that must answer each
// instance only once it is stored: a DIMSE C-STORE, whose response says
// success or not. Its outcome is recorded in the batch as Add records it
// (Wait and Close see it); it returns the stored record, or the refusal.
// An error means the request must end (r's own read error, the context
// ended). sopClassUID and sopInstanceUID, when set, are the instance the
// front end's command names (StoreOptions).
func (b *StoreBatch) Store(part int, r io.Reader, sopClassUID, sopInstanceUID string) (*InstanceRecord, *StoreFailure, error) {
	pending, err := b.svc.ingester.Begin(b.ctx, r, StoreOptions{StudyInstanceUID: b.req.StudyInstanceUID, SOPClassUID: sopClassUID, SOPInstanceUID: sopInstanceUID})
	if err != nil {
		ie, ok := errors.AsType[*InstanceError](err)
		if !ok {
			return nil, nil, err
		}
		o := b.refuse(part, ie)
		b.outcomes = append(b.outcomes, o)
		return nil, o.failure, nil
	}
	o := &storeOutcome{}
	b.outcomes = append(b.outcomes, o)
	b.finish(part, pending, o)
	return o.rec, o.failure, o.err
}

package bolt

import (
	"context"
	"encoding/json"
	"fmt"

	bbolt "go.etcd.io/bbolt"

	"github.com/dicom-gateway/gateway/gateway"
)

// bucketHolds keeps the legal holds: study uid → gateway.Hold JSON.
var bucketHolds = []byte("holds")

// Holds is the embedded gateway.HoldStore, in the state file.
type Holds struct {
	db *bbolt.DB
}

var _ gateway.HoldStore = (*Holds)(nil)

// NewHolds creates the holds bucket in db if needed.
func NewHolds(db *DB) (*Holds, error) {
	err := db.bolt.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketHolds)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("bolt holds: create bucket: %w", err)
	}
	return &Holds{db: db.bolt}, nil
}

// PutHold stores h, replacing a hold on the same study.
func (s *Holds) PutHold(ctx context.Context, h gateway.Hold) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	return unavailable("put hold", s.db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketHolds).Put([]byte(h.StudyInstanceUID), data)
	}))
}

// GetHold returns the hold on studyUID or ErrNotFound.
func (s *Holds) GetHold(ctx context.Context, studyUID string) (*gateway.Hold, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var h *gateway.Hold
	err := s.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketHolds).Get([]byte(studyUID))
		if v == nil {
			return fmt.Errorf("hold on study %s: %w", studyUID, gateway.ErrNotFound)
		}
		h = &gateway.Hold{}
		return json.Unmarshal(v, h)
	})
	return h, unavailable("get hold", err)
}

// DeleteHold removes the hold on studyUID or returns ErrNotFound.
func (s *Holds) DeleteHold(ctx context.Context, studyUID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return unavailable("delete hold", s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketHolds)
		if b.Get([]byte(studyUID)) == nil {
			return fmt.Errorf("hold on study %s: %w", studyUID, gateway.ErrNotFound)
		}
		return b.Delete([]byte(studyUID))
	}))
}

// ListHolds returns every hold in Study Instance UID order (the bucket's).
func (s *Holds) ListHolds(ctx context.Context) ([]gateway.Hold, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := []gateway.Hold{}
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketHolds).ForEach(func(_, v []byte) error {
			var h gateway.Hold
			if err := json.Unmarshal(v, &h); err != nil {
				return err
			}
			out = append(out, h)
			return nil
		})
	})
	if err != nil {
		return nil, unavailable("list holds", err)
	}
	return out, nil
}

package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	goredis "github.com/redis/go-redis/v9"

	"github.com/dicom-gateway/gateway/gateway"
)

// Holds is the gateway.HoldStore on Redis, shared by every replica: one
// hash, {holds}:all (under the client prefix), study uid → gateway.Hold JSON.
// Holds are few (studies under litigation), so one key in its own hash slot
// holds them all.
type Holds struct {
	rdb goredis.UniversalClient
	key string
}

var _ gateway.HoldStore = (*Holds)(nil)

// NewHolds returns the hold store under c's key prefix.
func NewHolds(c *Client) *Holds {
	return &Holds{rdb: c.Redis(), key: c.Key("{holds}:all")}
}

// PutHold stores h, replacing a hold on the same study.
func (s *Holds) PutHold(ctx context.Context, h gateway.Hold) error {
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	return translate(s.rdb.HSet(ctx, s.key, h.StudyInstanceUID, data).Err())
}

// GetHold returns the hold on studyUID or ErrNotFound.
func (s *Holds) GetHold(ctx context.Context, studyUID string) (*gateway.Hold, error) {
	v, err := s.rdb.HGet(ctx, s.key, studyUID).Bytes()
	if errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("hold on study %s: %w", studyUID, gateway.ErrNotFound)
	}
	if err != nil {
		return nil, translate(err)
	}
	h := &gateway.Hold{}
	if err := json.Unmarshal(v, h); err != nil {
		return nil, fmt.Errorf("decode hold on study %s: %w", studyUID, err)
	}
	return h, nil
}

// DeleteHold removes the hold on studyUID or returns ErrNotFound.
func (s *Holds) DeleteHold(ctx context.Context, studyUID string) error {
	n, err := s.rdb.HDel(ctx, s.key, studyUID).Result()
	if err != nil {
		return translate(err)
	}
	if n == 0 {
		return fmt.Errorf("hold on study %s: %w", studyUID, gateway.ErrNotFound)
	}
	return nil
}

// ListHolds returns every hold in Study Instance UID order.
func (s *Holds) ListHolds(ctx context.Context) ([]gateway.Hold, error) {
	all, err := s.rdb.HGetAll(ctx, s.key).Result()
	if err != nil {
		return nil, translate(err)
	}
	out := make([]gateway.Hold, 0, len(all))
	for study, v := range all {
		var h gateway.Hold
		if err := json.Unmarshal([]byte(v), &h); err != nil {
			return nil, fmt.Errorf("decode hold on study %s: %w", study, err)
		}
		out = append(out, h)
	}
	slices.SortFunc(out, func(a, b gateway.Hold) int { return strings.Compare(a.StudyInstanceUID, b.StudyInstanceUID) })
	return out, nil
}

package redis

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/dicom-gateway/gateway/gateway"
)

// The study usage retention reads (gateway.UsageIndex) is kept by the
// index's write and delete scripts, in these keys and fields (beside the
// index's, in its hash slot):
//
//	{idx}:i:<sop>     field sz: the instance's size, so that a delete knows what it frees
//	{idx}:s:<study>   fields b (bytes of the instances present), rt (newest stored at, Unix ms)
//	{idx}:x:recv      zset of study UIDs scored by rt: the oldest received first
//	{idx}:x:bytes     the sum of every study's b
//
// A study counts once it is in x:recv (ZCARD gives the number of studies).
// Instances indexed before these fields existed count 0 bytes until they
// are written again: gateway reindex rewrites every record, and a rewrite
// of an unchanged record adds its usage once (usage_backfill).

// luaUsageFunctions keep the usage in writeScript and deleteScript. They
// use the calling script's P (key prefix). size and at are decimal strings.
const luaUsageFunctions = `
local function usage_add(sk, study, size, at)
  redis.call('HINCRBY', sk, 'b', size)
  local rt = redis.call('HGET', sk, 'rt')
  if not rt or tonumber(at) > tonumber(rt) then
    rt = at
    redis.call('HSET', sk, 'rt', at)
  end
  redis.call('ZADD', P .. 'x:recv', rt, study)
  redis.call('INCRBY', P .. 'x:bytes', size)
end

-- usage_backfill counts an instance indexed before its size was kept, once.
local function usage_backfill(ik, study, size, at)
  if redis.call('HEXISTS', ik, 'sz') == 0 then
    redis.call('HSET', ik, 'sz', size)
    usage_add(P .. 's:' .. study, study, size, at)
  end
end

local function usage_remove(sk, study, size, gone)
  redis.call('INCRBY', P .. 'x:bytes', -size)
  if gone then
    redis.call('ZREM', P .. 'x:recv', study)
  else
    redis.call('HINCRBY', sk, 'b', -size)
  end
end
`

var _ gateway.UsageIndex = (*Index)(nil)

// StudiesByReceived implements gateway.UsageIndex: ZRANGEBYSCORE on x:recv
// from the cursor's time (studies received in the same millisecond are in
// UID order, the zset's order for equal scores), then the page's study
// hashes in one pipeline.
func (x *Index) StudiesByReceived(ctx context.Context, after gateway.UsageCursor, limit int) ([]gateway.StudyUsage, error) {
	if limit <= 0 {
		return nil, nil
	}
	minScore := "-inf"
	if !after.ReceivedAt.IsZero() || after.StudyInstanceUID != "" {
		minScore = strconv.FormatInt(after.ReceivedAt.UnixMilli(), 10)
	}
	afterMs := after.ReceivedAt.UnixMilli()
	var page []goredis.Z
	for offset := int64(0); len(page) < limit; {
		batch, err := x.rdb.ZRangeByScoreWithScores(ctx, x.key("x", "recv"), &goredis.ZRangeBy{
			Min: minScore, Max: "+inf", Offset: offset, Count: int64(limit),
		}).Result()
		if err != nil {
			return nil, translate(err)
		}
		for _, z := range batch {
			uid, _ := z.Member.(string)
			if after.StudyInstanceUID != "" && int64(z.Score) == afterMs && uid <= after.StudyInstanceUID {
				continue // at or before the cursor within its millisecond
			}
			if len(page) < limit {
				page = append(page, z)
			}
		}
		if len(batch) < limit {
			break
		}
		offset += int64(len(batch))
	}
	pipe := x.rdb.Pipeline()
	cmds := make([]*goredis.MapStringStringCmd, len(page))
	for i, z := range page {
		cmds[i] = pipe.HGetAll(ctx, x.key("s", z.Member.(string)))
	}
	if len(page) > 0 {
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
			return nil, translate(err)
		}
	}
	out := make([]gateway.StudyUsage, 0, len(page))
	for i, z := range page {
		h := cmds[i].Val()
		su := gateway.StudyUsage{StudyInstanceUID: z.Member.(string), ReceivedAt: time.UnixMilli(int64(z.Score)).UTC()}
		su.Bytes, _ = strconv.ParseInt(h["b"], 10, 64)
		su.Instances, _ = strconv.Atoi(h["n"])
		for f := range h {
			if m, ok := strings.CutPrefix(f, "m:"); ok {
				su.Modalities = append(su.Modalities, m)
			}
		}
		slices.Sort(su.Modalities)
		out = append(out, su)
	}
	return out, nil
}

// UsageTotals implements gateway.UsageIndex: x:bytes and ZCARD x:recv.
func (x *Index) UsageTotals(ctx context.Context) (gateway.UsageTotals, error) {
	pipe := x.rdb.Pipeline()
	b := pipe.Get(ctx, x.key("x", "bytes"))
	n := pipe.ZCard(ctx, x.key("x", "recv"))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return gateway.UsageTotals{}, translate(err)
	}
	bytes, _ := strconv.ParseInt(b.Val(), 10, 64)
	return gateway.UsageTotals{Bytes: bytes, Studies: int(n.Val())}, nil
}

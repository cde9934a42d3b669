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
// index's write and delete scripts, in these keys and fields of each shard
// (see Index: on a single server the one shard {idx}, on a cluster each
// shard under its own hash tag, so a study's usage changes in the same
// script, on the same slot, as its records):
//
//	<sh>i:<sop>     field sz: the instance's size, so that a delete knows what it frees
//	<sh>s:<study>   fields b (bytes of the instances present), rt (newest stored at, Unix ms)
//	<sh>x:recv      zset of the shard's study UIDs scored by rt: the oldest received first
//	<sh>x:bytes     the sum of the shard's studies' b
//
// A study counts once it is in its shard's x:recv (ZCARD gives the number
// of studies). StudiesByReceived merges the shards' x:recv walks oldest
// first, UsageTotals sums the shards. Instances indexed before these fields
// existed count 0 bytes until they are written again: gateway reindex
// rewrites every record, and a rewrite of an unchanged record adds its
// usage once (usage_backfill).

// luaUsageFunctions keep the usage in writeScript and deleteScript, after
// luaDeclaredKeys (x:recv and x:bytes are among the keys those scripts
// declare). They use the calling script's P (shard prefix). size and at
// are decimal strings.
const luaUsageFunctions = `
local function usage_add(sk, study, size, at)
  call('HINCRBY', sk, 'b', size)
  local rt = call('HGET', sk, 'rt')
  if not rt or tonumber(at) > tonumber(rt) then
    rt = at
    call('HSET', sk, 'rt', at)
  end
  call('ZADD', P .. 'x:recv', rt, study)
  call('INCRBY', P .. 'x:bytes', size)
end

-- usage_backfill counts an instance indexed before its size was kept, once.
local function usage_backfill(ik, study, size, at)
  if call('HEXISTS', ik, 'sz') == 0 then
    call('HSET', ik, 'sz', size)
    usage_add(P .. 's:' .. study, study, size, at)
  end
end

local function usage_remove(sk, study, size, gone)
  call('INCRBY', P .. 'x:bytes', -size)
  if gone then
    call('ZREM', P .. 'x:recv', study)
  else
    call('HINCRBY', sk, 'b', -size)
  end
end
`

var _ gateway.UsageIndex = (*Index)(nil)

// StudiesByReceived implements gateway.UsageIndex: the shards' x:recv
// walked oldest first as one (shardMerge, as a search over every study
// merges newest first) from the cursor's time, skipping the members at or
// before the cursor within its millisecond (studies received in the same
// millisecond are in UID order, a zset's order for equal scores, kept by
// the merge), then the page's study hashes in one pipeline.
func (x *Index) StudiesByReceived(ctx context.Context, after gateway.UsageCursor, limit int) ([]gateway.StudyUsage, error) {
	if limit <= 0 {
		return nil, nil
	}
	by := goredis.ZRangeBy{Min: "-inf", Max: "+inf"}
	afterMs := after.ReceivedAt.UnixMilli()
	if !after.ReceivedAt.IsZero() || after.StudyInstanceUID != "" {
		by.Min = strconv.FormatInt(afterMs, 10)
	}
	m := newShardMerge(x.rdb, x.everyShard("x", "recv"), max(8, 2*int64(limit)/int64(len(x.shards))), olderMember,
		func(ctx context.Context, pipe goredis.Pipeliner, key string, offset, n int64) *goredis.ZSliceCmd {
			r := by
			r.Offset, r.Count = offset, n
			return pipe.ZRangeByScoreWithScores(ctx, key, &r)
		})
	if after.StudyInstanceUID != "" {
		m.skip = func(z goredis.Z) bool {
			uid, _ := z.Member.(string)
			return int64(z.Score) == afterMs && uid <= after.StudyInstanceUID
		}
	}
	var page []goredis.Z
	for len(page) < limit {
		batch, err := m.next(ctx, int64(limit-len(page)))
		if err != nil {
			return nil, err
		}
		if len(batch) == 0 {
			break
		}
		page = append(page, batch...)
	}
	pipe := x.rdb.Pipeline()
	cmds := make([]*goredis.MapStringStringCmd, len(page))
	for i, z := range page {
		uid := z.Member.(string)
		cmds[i] = pipe.HGetAll(ctx, x.studyKey(uid, "s", uid))
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

// olderMember reports whether a comes before b in an oldest-first walk:
// lower score, then lower UID (ZRANGEBYSCORE's order within a zset).
func olderMember(a, b goredis.Z) bool {
	if a.Score != b.Score {
		return a.Score < b.Score
	}
	return a.Member.(string) < b.Member.(string)
}

// UsageTotals implements gateway.UsageIndex: every shard's x:bytes and
// ZCARD x:recv in one pipeline, summed.
func (x *Index) UsageTotals(ctx context.Context) (gateway.UsageTotals, error) {
	pipe := x.rdb.Pipeline()
	bytes := make([]*goredis.StringCmd, len(x.shards))
	studies := make([]*goredis.IntCmd, len(x.shards))
	for sh := range x.shards {
		bytes[sh] = pipe.Get(ctx, x.skey(sh, "x", "bytes"))
		studies[sh] = pipe.ZCard(ctx, x.skey(sh, "x", "recv"))
	}
	_, _ = pipe.Exec(ctx) // each command's error is checked below: a shard without x:bytes answers nil
	var tot gateway.UsageTotals
	for sh := range x.shards {
		if err := bytes[sh].Err(); err != nil && !errors.Is(err, goredis.Nil) {
			return gateway.UsageTotals{}, translate(err)
		}
		if err := studies[sh].Err(); err != nil {
			return gateway.UsageTotals{}, translate(err)
		}
		b, _ := strconv.ParseInt(bytes[sh].Val(), 10, 64)
		tot.Bytes += b
		tot.Studies += int(studies[sh].Val())
	}
	return tot, nil
}

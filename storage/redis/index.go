package redis

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/internal/lease"
	"github.com/dicom-gateway/gateway/storage/internal/recordcodec"
)

// Index is the production gateway.Index on Redis, shared by every replica.
//
// Keys live in shards, each under one hash tag: on a single server one shard
// with the tag {idx} (the layout every earlier version wrote, so an existing
// index is read as it is); on a Redis Cluster ClusterShards shards whose tags
// are chosen to fall evenly over the 16,384 slots, so the shards spread over
// the masters. A study belongs to the shard shardOf(its UID) picks, and
// everything about it lives there, beside that shard's search sets. Under a
// shard prefix <sh> ("{idx}:" or "{<tag>}:", after the client prefix):
//
//	<sh>i:<sop>              hash: rec (InstanceRecord JSON), st, se, mod, cls; sz (size, usage.go)
//	<sh>s:<study>            hash: ca (study-level attributes, recordcodec.AppendCompact), n, ns,
//	                         m:<modality>, c:<sop class> counts, and the values it is indexed
//	                         under: d, pid (its patient IDs, gateway.StudyPatientIDs, joined
//	                         by \x01), acc, names, np, ph; b (bytes) and rt (received,
//	                         Unix ms) for retention (usage.go)
//	<sh>ss:<study>           set of series UIDs
//	<sh>e:<study>:<series>   hash: ca (series-level attributes, compact), n
//	<sh>ei:<study>:<series>  set of SOP Instance UIDs
//	<sh>x:date               zset of the shard's study UIDs scored by StudyDate (YYYYMMDD, 0 = none)
//	<sh>x:pid:<id>, <sh>x:acc:<accession>, <sh>x:mod:<modality>
//	                         zsets of study UIDs scored by StudyDate
//	<sh>x:name               zset (all scores 0) of "<NAME KEY>\x00<study>" for
//	                         ZRANGEBYLEX prefix search on upper-cased patient names
//	<sh>x:ph:<code>          zset of study UIDs scored by StudyDate, one per Soundex code of
//	                         a patient-name word (gateway.NamePhoneticKeys), for fuzzy matching
//	<sh>x:np:<hex prefix>    zset of study UIDs scored by StudyDate, one per 1-, 2- and 3-byte
//	                         prefix of the whole name groups (gateway.NameGroupKeys): a
//	                         name-prefix search without fuzzy matching walks it newest first,
//	                         as far as its page needs, instead of ordering every match
//	<sh>x:npok               set when every study of the shard has its np entries (the shard
//	                         was empty when they were introduced); without it name searches use x:name
//	<sh>x:phok               set when every study is in its x:ph zsets (likewise); without it
//	                         a fuzzy name search walks x:date and the engine compares codes
//	<sh>x:idok               set when ListFlaggedStudies has listed the shard's flagged studies
//	                         under every patient ID
//	<sh>x:recv, <sh>x:bytes  the shard's study usage for retention: usage.go
//
// and outside the shards: {idx}:lock:<sop> (single server) or lock:{<sop>}
// (cluster), the lease token; on a cluster also l:{<sop>}, the study UID an
// instance is indexed under, because GetInstance and DeleteInstance are
// asked by SOP Instance UID alone and the instance's keys live in its
// study's shard. The locator is written before the instance and deleted
// after it, so a locator may point at nothing (a write that failed half
// way) but an indexed instance always has one. Two puts of one SOP Instance
// UID under two studies at the same moment would both be written (in two
// shards); ingest and delete hold Lock on the SOP Instance UID, which
// serialises them.
//
// A search over every study (by date, patient, name, modality...) reads the
// same search set in every shard in one pipeline (go-redis sends each
// master its part concurrently) and merges the shards' newest-first walks,
// so the order and paging are those of one set.
//
// The summaries hold their attributes in the compact form, so that a page of
// 100 studies decodes without encoding/json; hashes written before it hold
// attrs (DICOM JSON) instead, which searches still read and the next write
// of the study replaces.
//
// Every write is one Lua script on one shard, so records, summaries and
// secondary indexes change together, and a script re-run by go-redis after
// a lost reply is a no-op: put recognises its own record, replace rewrites
// the same state. A script touches only keys declared in KEYS (Redis Cluster
// requires it, and it keeps a script on one slot). Which secondary-index
// keys a write touches depends on what is stored (the study's previous
// patient ID, modalities...), so Go declares the keys the new record needs,
// the script first works out every key it would touch and, when one is not
// declared, changes nothing and returns the missing ones; Go declares them
// and runs it again (usually never, at most a few times under concurrent
// rewrites of one study).
type Index struct {
	rdb     goredis.UniversalClient
	base    string      // the client prefix
	shards  []string    // key prefix of each shard: base + "{tag}:"
	cluster bool        // shards spread over a cluster: instances have locators
	npok    atomic.Bool // x:npok seen
	phok    atomic.Bool // x:phok seen
}

var (
	_ gateway.Index                = (*Index)(nil)
	_ gateway.IdentityCheckedIndex = (*Index)(nil)
)

// ClusterShards is the number of shards of the index on a Redis Cluster.
// More shards than masters, so that adding masters (and moving slots to
// them) spreads the index further without rewriting it; few enough that a
// search over every study, which reads every shard, stays cheap. Changing
// it moves studies between shards: an index written with another count is
// rebuilt with gateway reindex.
const ClusterShards = 64

// NewIndex returns the index stored under c's key prefix: one shard on a
// single server, ClusterShards on a cluster.
func NewIndex(c *Client) *Index {
	if c.Cluster() {
		return newShardedIndex(c, ClusterShards)
	}
	return &Index{rdb: c.Redis(), base: c.Key(""), shards: []string{c.Key("{idx}:")}}
}

// NewShardedIndex returns the cluster layout with n shards on whatever c
// talks to (tests run it on a single server too).
func NewShardedIndex(c *Client, n int) *Index { return newShardedIndex(c, n) }

func newShardedIndex(c *Client, n int) *Index {
	x := &Index{rdb: c.Redis(), base: c.Key(""), cluster: true}
	for _, tag := range shardTags(n) {
		x.shards = append(x.shards, c.Key("{"+tag+"}:"))
	}
	// The sharded layout is newer than the np and ph zsets: every study in
	// it was written with them.
	x.npok.Store(true)
	x.phok.Store(true)
	return x
}

// shardTags returns n hash tags whose Redis Cluster slots fall one in each
// n-th of the slot space, so that masters owning equal slot ranges (what
// redis-cli --cluster create and rebalance produce) hold equal numbers of
// shards.
func shardTags(n int) []string {
	tags := make([]string, n)
	found := 0
	for j := 0; found < n; j++ {
		tag := "x" + strconv.Itoa(j)
		b := int(clusterSlot(tag)) * n / clusterSlots
		if tags[b] == "" {
			tags[b] = tag
			found++
		}
	}
	return tags
}

const clusterSlots = 16384

// clusterSlot is Redis Cluster's key slot of a hash tag: CRC16 (XMODEM)
// modulo 16384.
func clusterSlot(tag string) uint16 {
	var crc uint16
	for i := 0; i < len(tag); i++ {
		crc ^= uint16(tag[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % clusterSlots
}

// shardOf returns the shard of a study: FNV-1a of its UID.
func (x *Index) shardOf(studyUID string) int {
	if len(x.shards) == 1 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(studyUID))
	return int(h.Sum32() % uint32(len(x.shards)))
}

// skey returns the key of parts in shard sh.
func (x *Index) skey(sh int, parts ...string) string {
	return x.shards[sh] + strings.Join(parts, ":")
}

// studyKey returns the key of parts in the shard of studyUID.
func (x *Index) studyKey(studyUID string, parts ...string) string {
	return x.skey(x.shardOf(studyUID), parts...)
}

// instanceKey returns the record hash of sop indexed under studyUID.
func (x *Index) instanceKey(studyUID, sop string) string { return x.studyKey(studyUID, "i", sop) }

// lockKey returns the lease key of sop: in the {idx} slot on a single
// server (where earlier versions put it, so replicas of both agree), in its
// own slot on a cluster.
func (x *Index) lockKey(sop string) string {
	if x.cluster {
		return x.base + "lock:{" + sop + "}"
	}
	return x.shards[0] + "lock:" + sop
}

// locatorKey returns the key holding the study UID sop is indexed under
// (cluster layout only).
func (x *Index) locatorKey(sop string) string { return x.base + "l:{" + sop + "}" }

// locate returns the study sop is indexed under, "" when unknown.
func (x *Index) locate(ctx context.Context, sop string) (string, error) {
	if !x.cluster {
		return "", nil
	}
	st, err := x.rdb.Get(ctx, x.locatorKey(sop)).Result()
	if errors.Is(err, goredis.Nil) {
		return "", nil
	}
	return st, translate(err)
}

// luaDeclaredKeys is the start of every index script: the keys it may touch
// are KEYS, and every command goes through call, which refuses any other;
// need(name) reports whether the key of name under the shard
// prefix P is one of them and otherwise records it as missing, so the
// script can plan every key before changing anything and return the missing
// ones instead of touching an undeclared key.
const luaDeclaredKeys = `
local declared, missing, missingSeen = {}, {}, {}
for _, k in ipairs(KEYS) do declared[k] = true end
-- call is redis.call for commands whose first argument is their only key;
-- it refuses an undeclared key, so that a slip in the plan fails loudly
-- (every suite runs through it) instead of touching a key Redis Cluster
-- did not route.
local rcall = redis.call
local function call(cmd, key, ...)
  if not declared[key] then error('index script: key not in KEYS: ' .. tostring(key)) end
  return rcall(cmd, key, ...)
end
local function need(name)
  local k = P .. name
  if declared[k] then return true end
  if not missingSeen[k] then missingSeen[k] = true; missing[#missing + 1] = k end
  return false
end
local function split(s)
  local t = {}
  for part in string.gmatch(s or '', '[^\1]+') do t[#t + 1] = part end
  return t
end

-- planStudy needs the secondary-index keys study's summary is listed under,
-- with its modalities' zsets when mods is true.
local function planStudy(study, mods)
  if not need('s:' .. study) then return end
  local sk = P .. 's:' .. study
  local v = call('HMGET', sk, 'pid', 'acc', 'np', 'ph')
  for _, id in ipairs(split(v[1])) do need('x:pid:' .. id) end
  if v[2] and v[2] ~= '' then need('x:acc:' .. v[2]) end
  for _, n in ipairs(split(v[3])) do need('x:np:' .. n) end
  for _, c in ipairs(split(v[4])) do need('x:ph:' .. c) end
  if mods then
    for _, f in ipairs(call('HKEYS', sk)) do
      if string.sub(f, 1, 2) == 'm:' then need('x:mod:' .. string.sub(f, 3)) end
    end
  end
end

-- planRemove needs the keys remove() touches.
local function planRemove()
  local v = call('HMGET', ik, 'st', 'se', 'mod')
  local ost, ose, omod = v[1], v[2], v[3]
  need('s:' .. ost); need('ss:' .. ost); need('e:' .. ost .. ':' .. ose); need('ei:' .. ost .. ':' .. ose)
  need('x:date'); need('x:name'); need('x:recv'); need('x:bytes')
  if omod and omod ~= '' then need('x:mod:' .. omod) end
  if #missing > 0 then return end
  local n = tonumber(call('HGET', P .. 's:' .. ost, 'n') or '0')
  planStudy(ost, n <= 1)
end
`

// writeScript puts or replaces one instance. KEYS: the keys it may touch,
// KEYS[1] the instance hash (see writeArgs). ARGV: shard prefix, mode
// ("put" or "replace"), sop, study, series, rec, modality, sop class, study
// attrs, series attrs (both compact), date, patient ids (joined by \1), accession, name
// keys joined by \1, name prefixes (namePrefixes) joined by \1, metadata
// order entry (gateway.MetadataOrder), name Soundex codes joined by \1,
// size, stored at (Unix ms; both for the study usage, usage.go), the
// study's identity set as rec makes it (gateway.StudyIdentitySet), and,
// for a put that is checked (PutInstanceChecked), the identity set
// expected and gateway.OwnIdentitySet(rec) (otherwise unset). The set is
// kept in the study's "ids" field after the SHA-1 of the "ca" it was
// made with: a study whose ca was written without it (a replica of an
// earlier version) has a set that may be stale, and is not compared. The
// prepared metadata is not kept here (gateway.MetadataStore); a record
// replaced or deleted loses the "md" field earlier versions stored beside
// it.
// Returns {1} when written, {0, existing rec} when put found a record, {2,
// missing keys...} when it needs keys not declared, {3} when the study's
// identity set is not the one expected (nothing changed in either case).
var writeScript = goredis.NewScript(`
local P, mode, sop, st, se, rec = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local mod, cls, sattrs, eattrs, d, pid, acc, names = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14]
local np, ord, ph, size, at, ids, wantIds, ownIds = ARGV[15], ARGV[16], ARGV[17], ARGV[18], ARGV[19], ARGV[20], ARGV[21], ARGV[22]
local ik = KEYS[1]
` + luaDeclaredKeys + luaUsageFunctions + luaIndexFunctions + `
local old = call('HGET', ik, 'rec')
if old then
  -- The same record again changes nothing, unless a replace finds the
  -- study showing another instance's attributes: a replace makes rec the
  -- study's latest instance (gateway.Index).
  if old == rec and (mode == 'put' or call('HGET', P .. 's:' .. st, 'ca') == sattrs) then
    usage_backfill(ik, st, size, at)
    return {1}
  end
  if mode == 'put' then return {0, old} end
end
if wantIds then
  -- A study whose set is missing or was not made with its ca is not
  -- compared.
  local sk0 = P .. 's:' .. st
  local v = call('HMGET', sk0, 'ids', 'ca')
  local cur = nil
  if v[1] and v[2] and string.sub(v[1], 1, 40) == redis.sha1hex(v[2]) then
    cur = string.sub(v[1], 41)
  elseif not v[1] and call('EXISTS', sk0) == 0 then
    cur = ''
  end
  if cur and cur ~= wantIds and not (ownIds ~= '' and cur == ownIds) then return {3} end
end

-- Plan: every key this write touches must be declared.
local sk, ek = P .. 's:' .. st, P .. 'e:' .. st .. ':' .. se
for _, name in ipairs({'s:' .. st, 'e:' .. st .. ':' .. se, 'ei:' .. st .. ':' .. se, 'ss:' .. st, 'x:date', 'x:npok', 'x:phok', 'x:name', 'x:recv', 'x:bytes'}) do need(name) end
for _, id in ipairs(split(pid)) do need('x:pid:' .. id) end
if acc ~= '' then need('x:acc:' .. acc) end
for _, n in ipairs(split(np)) do need('x:np:' .. n) end
for _, c in ipairs(split(ph)) do need('x:ph:' .. c) end
if mod ~= '' then need('x:mod:' .. mod) end
if old then planRemove() end
if #missing == 0 then
  local od = call('HGET', sk, 'd')
  planStudy(st, od and od ~= d)
end
if #missing > 0 then
  table.insert(missing, 1, 2)
  return missing
end

-- A replacement in the same study keeps the study's receipt time, which
-- removing its only instance would drop (retention reads it).
local keepRt = nil
if old and call('HGET', ik, 'st') == st then keepRt = call('HGET', sk, 'rt') end
if old then remove() end
call('HSET', ik, 'rec', rec, 'st', st, 'se', se, 'mod', mod, 'cls', cls, 'ord', ord, 'sz', size)
call('SADD', P .. 'ei:' .. st .. ':' .. se, sop)
local newSeries = call('SADD', P .. 'ss:' .. st, se) == 1
call('HSET', ek, 'ca', eattrs)
call('HDEL', ek, 'attrs')
call('HINCRBY', ek, 'n', 1)

-- A study already listed under exactly these values (every instance of a
-- study after its first, usually) keeps its secondary-index entries:
-- taking them out and putting them back was most of this script's work.
local cur = call('HMGET', sk, 'pid', 'acc', 'names', 'np', 'ph', 'd')
local od = cur[6]
local listed = od == d and cur[1] == pid and cur[2] == acc and cur[3] == names and cur[4] == np and cur[5] == ph
if not listed then unindex(sk, st) end
if call('EXISTS', P .. 'x:date') == 0 then
  call('SET', P .. 'x:npok', '1')
  call('SET', P .. 'x:phok', '1')
end
call('HSET', sk, 'ca', sattrs, 'd', d, 'pid', pid, 'acc', acc, 'names', names, 'np', np, 'ph', ph, 'ids', redis.sha1hex(sattrs) .. ids)
call('HDEL', sk, 'attrs')
call('HINCRBY', sk, 'n', 1)
usage_add(sk, st, size, at)
if keepRt then usage_add(sk, st, 0, keepRt) end
if newSeries then call('HINCRBY', sk, 'ns', 1) else call('HINCRBY', sk, 'ns', 0) end
if mod ~= '' then call('HINCRBY', sk, 'm:' .. mod, 1) end
if cls ~= '' then call('HINCRBY', sk, 'c:' .. cls, 1) end
local score = tonumber(d)
if not listed then
  call('ZADD', P .. 'x:date', score, st)
  for _, id in ipairs(split(pid)) do call('ZADD', P .. 'x:pid:' .. id, score, st) end
  if acc ~= '' then call('ZADD', P .. 'x:acc:' .. acc, score, st) end
  for _, n in ipairs(split(names)) do call('ZADD', P .. 'x:name', 0, n .. '\0' .. st) end
  for _, n in ipairs(split(np)) do call('ZADD', P .. 'x:np:' .. n, score, st) end
  for _, c in ipairs(split(ph)) do call('ZADD', P .. 'x:ph:' .. c, score, st) end
end
if mod ~= '' then call('ZADD', P .. 'x:mod:' .. mod, score, st) end
if od and od ~= d then
  -- The study's date changed: its other modalities' zsets are rescored.
  for _, f in ipairs(call('HKEYS', sk)) do
    if string.sub(f, 1, 2) == 'm:' then call('ZADD', P .. 'x:mod:' .. string.sub(f, 3), score, st) end
  end
end
return {1}
`)

// luaIndexFunctions are the Lua functions writeScript and deleteScript
// share, so that replacing and deleting an instance undo its index entries
// the same way. They use the calling script's P (shard prefix), ik
// (instance key) and sop, and touch only keys planRemove and planStudy
// needed.
const luaIndexFunctions = `
-- unindex removes study st from the secondary indexes it is listed under.
local function unindex(sk, study)
  local v = call('HMGET', sk, 'pid', 'acc', 'names', 'np', 'ph')
  for _, id in ipairs(split(v[1])) do call('ZREM', P .. 'x:pid:' .. id, study) end
  if v[2] and v[2] ~= '' then call('ZREM', P .. 'x:acc:' .. v[2], study) end
  for _, n in ipairs(split(v[3])) do call('ZREM', P .. 'x:name', n .. '\0' .. study) end
  for _, n in ipairs(split(v[4])) do call('ZREM', P .. 'x:np:' .. n, study) end
  for _, c in ipairs(split(v[5])) do call('ZREM', P .. 'x:ph:' .. c, study) end
  call('ZREM', P .. 'x:date', study)
end

local function remove()
  local v = call('HMGET', ik, 'st', 'se', 'mod', 'cls', 'sz')
  local ost, ose, omod, ocls, osz = v[1], v[2], v[3], v[4], tonumber(v[5]) or 0
  call('DEL', ik)
  local sk, ek = P .. 's:' .. ost, P .. 'e:' .. ost .. ':' .. ose
  call('SREM', P .. 'ei:' .. ost .. ':' .. ose, sop)
  local seriesGone = false
  if call('HINCRBY', ek, 'n', -1) <= 0 then
    call('DEL', ek)
    call('SREM', P .. 'ss:' .. ost, ose)
    seriesGone = true
  end
  local studyGone = call('HINCRBY', sk, 'n', -1) <= 0
  usage_remove(sk, ost, osz, studyGone)
  if studyGone then
    unindex(sk, ost)
    local fields = call('HKEYS', sk)
    for _, f in ipairs(fields) do
      if string.sub(f, 1, 2) == 'm:' then call('ZREM', P .. 'x:mod:' .. string.sub(f, 3), ost) end
    end
    call('DEL', sk)
    call('DEL', P .. 'ss:' .. ost)
    return
  end
  if seriesGone then call('HINCRBY', sk, 'ns', -1) end
  if omod and omod ~= '' and call('HINCRBY', sk, 'm:' .. omod, -1) <= 0 then
    call('HDEL', sk, 'm:' .. omod)
    call('ZREM', P .. 'x:mod:' .. omod, ost)
  end
  if ocls and ocls ~= '' and call('HINCRBY', sk, 'c:' .. ocls, -1) <= 0 then
    call('HDEL', sk, 'c:' .. ocls)
  end
end
`

// deleteScript removes one instance. KEYS: the keys it may touch, KEYS[1]
// the instance hash. ARGV: shard prefix, sop. Returns 0 when the instance
// does not exist, 1 when deleted, {2, missing keys...} like writeScript.
var deleteScript = goredis.NewScript(`
local P, sop = ARGV[1], ARGV[2]
local ik = KEYS[1]
` + luaDeclaredKeys + luaUsageFunctions + luaIndexFunctions + `
if call('EXISTS', ik) == 0 then return 0 end
planRemove()
if #missing > 0 then
  table.insert(missing, 1, 2)
  return missing
end
remove()
return 1
`)

// unlocateScript deletes a locator only if it still names the study the
// instance was deleted from.
var unlocateScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// maxKeyPlans bounds the runs of a script that keeps finding keys it needs
// (each run declares what the previous found missing; only concurrent
// rewrites of the same study make it need more than two).
const maxKeyPlans = 8

// runPlanned runs an index script, declaring the keys it reports missing
// until it runs with every key it needs.
func (x *Index) runPlanned(ctx context.Context, script *goredis.Script, keys []string, args ...any) (any, error) {
	for range maxKeyPlans {
		res, err := script.Run(ctx, x.rdb, keys, args...).Result()
		if err != nil {
			return nil, translate(err)
		}
		missing, ok := plannedMissing(res)
		if !ok {
			return res, nil
		}
		keys = append(keys, missing...)
	}
	return nil, fmt.Errorf("redis index: the keys of an index write kept changing: %w", gateway.ErrUnavailable)
}

// plannedMissing returns the keys of a script's {2, keys...} answer.
func plannedMissing(res any) ([]string, bool) {
	a, ok := res.([]any)
	if !ok || len(a) == 0 || a[0] != int64(2) {
		return nil, false
	}
	keys := make([]string, 0, len(a)-1)
	for _, k := range a[1:] {
		if s, ok := k.(string); ok {
			keys = append(keys, s)
		}
	}
	return keys, true
}

// unlockScript deletes a lease only if it still holds the caller's token.
var unlockScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// renewScript extends a lease only if it is still ours.
var renewScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
`)

// Lock takes a lease with SET NX PX and a random token, polling every 10 ms
// while another holder has it; unlock deletes it only if the token is still
// ours (a lease that expired and was taken by another is left alone).
func (x *Index) Lock(ctx context.Context, sopInstanceUID string, ttl time.Duration) (func(), error) {
	token := lease.Token()
	key := x.lockKey(sopInstanceUID)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		ok, err := x.rdb.SetNX(ctx, key, token, ttl).Result()
		if err != nil {
			return nil, translate(err)
		}
		if !ok {
			// A retried SET NX whose first attempt succeeded finds our own token.
			cur, err := x.rdb.Get(ctx, key).Result()
			if err == nil && cur == token {
				ok = true
			} else if err != nil && !errors.Is(err, goredis.Nil) {
				return nil, translate(err)
			}
		}
		if ok {
			renew := func() {
				rctx, cancel := context.WithTimeout(context.Background(), max(ttl/3, time.Second))
				defer cancel()
				_ = renewScript.Run(rctx, x.rdb, []string{key}, token, ttl.Milliseconds()).Err()
			}
			release := func() {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer cancel()
				// Best effort: a lease not released expires after ttl.
				_ = unlockScript.Run(rctx, x.rdb, []string{key}, token).Err()
			}
			return lease.Hold(ttl, renew, release), nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// PutInstance stores rec unless its SOP Instance UID is already indexed.
func (x *Index) PutInstance(ctx context.Context, rec *gateway.InstanceRecord) (*gateway.InstanceRecord, bool, error) {
	return x.put(ctx, rec, nil)
}

// PutInstanceChecked implements gateway.IdentityCheckedIndex: writeScript
// compares the study's identity set, kept beside its attributes, before it
// writes.
func (x *Index) PutInstanceChecked(ctx context.Context, rec *gateway.InstanceRecord, studyIdentities string) (*gateway.InstanceRecord, bool, error) {
	return x.put(ctx, rec, &studyIdentities)
}

// put is PutInstance, and PutInstanceChecked when studyIdentities is set.
func (x *Index) put(ctx context.Context, rec *gateway.InstanceRecord, studyIdentities *string) (*gateway.InstanceRecord, bool, error) {
	res, err := x.write(ctx, "put", rec, studyIdentities)
	if err != nil {
		return nil, false, err
	}
	if len(res) == 1 && res[0] == int64(3) {
		return nil, false, fmt.Errorf("put instance %s: %w", rec.SOPInstanceUID, gateway.ErrStudyIdentitiesChanged)
	}
	if len(res) == 2 {
		old, err := decodeRecord(res[1])
		if err != nil {
			return nil, false, err
		}
		return old, false, nil
	}
	return nil, true, nil
}

// ReplaceInstance overwrites the record of rec's SOP Instance UID (storing it
// if absent).
func (x *Index) ReplaceInstance(ctx context.Context, rec *gateway.InstanceRecord) error {
	_, err := x.write(ctx, "replace", rec, nil)
	return err
}

// ReplaceInstanceChecked implements gateway.IdentityCheckedIndex, as
// PutInstanceChecked does.
func (x *Index) ReplaceInstanceChecked(ctx context.Context, rec *gateway.InstanceRecord, studyIdentities string) error {
	res, err := x.write(ctx, "replace", rec, &studyIdentities)
	if err == nil && len(res) == 1 && res[0] == int64(3) {
		return fmt.Errorf("replace instance %s: %w", rec.SOPInstanceUID, gateway.ErrStudyIdentitiesChanged)
	}
	return err
}

// write runs writeScript for rec, a put conditional on the study's
// identity set when studyIdentities is set. On a cluster the instance's
// locator is consulted first: an instance indexed under another study (so
// perhaps another shard) is found there (put) or deleted from there
// (replace), and the locator is set before the instance is written.
func (x *Index) write(ctx context.Context, mode string, rec *gateway.InstanceRecord, studyIdentities *string) ([]any, error) {
	keys, args, err := x.writeArgs(mode, rec)
	if err != nil {
		return nil, err
	}
	if studyIdentities != nil {
		own := "" // a replace is compared without exception
		if mode == "put" {
			own = gateway.OwnIdentitySet(rec)
		}
		args = append(args, *studyIdentities, own)
	}
	if x.cluster {
		if res, done, err := x.relocate(ctx, mode, rec, studyIdentities != nil); err != nil || done {
			return res, err
		}
	}
	res, err := x.runPlanned(ctx, writeScript, keys, args...)
	if err != nil {
		return nil, err
	}
	a, ok := res.([]any)
	if !ok {
		return nil, fmt.Errorf("redis index: write answered %T: %w", res, gateway.ErrUnavailable)
	}
	return a, nil
}

// relocate prepares a cluster write of rec: when the instance is indexed
// under another study, put answers with that record (done) and replace
// deletes it (a checked replace refuses: ErrInvalid); then the locator
// names rec's study.
func (x *Index) relocate(ctx context.Context, mode string, rec *gateway.InstanceRecord, checked bool) (res []any, done bool, err error) {
	sop := rec.SOPInstanceUID
	st, err := x.locate(ctx, sop)
	if err != nil {
		return nil, false, err
	}
	if st != "" && st != rec.StudyInstanceUID {
		old, err := x.rdb.HGet(ctx, x.instanceKey(st, sop), "rec").Result()
		switch {
		case errors.Is(err, goredis.Nil):
			// A locator left by a write that failed half way.
		case err != nil:
			return nil, false, translate(err)
		case mode == "put":
			return []any{int64(0), old}, true, nil
		case checked:
			// The delete would come before the script could refuse.
			return nil, false, fmt.Errorf("replace instance %s: a checked replace does not move an instance to another study: %w", sop, gateway.ErrInvalid)
		default:
			if err := x.deleteFrom(ctx, st, sop); err != nil && !errors.Is(err, gateway.ErrNotFound) {
				return nil, false, err
			}
		}
	}
	if st != rec.StudyInstanceUID {
		if err := x.rdb.Set(ctx, x.locatorKey(sop), rec.StudyInstanceUID, 0).Err(); err != nil {
			return nil, false, translate(err)
		}
	}
	return nil, false, nil
}

// writeArgs validates rec and builds writeScript's KEYS (those the new
// record needs; the script asks for any other) and ARGV.
func (x *Index) writeArgs(mode string, rec *gateway.InstanceRecord) (keys []string, args []any, err error) {
	for _, uid := range []string{rec.StudyInstanceUID, rec.SeriesInstanceUID, rec.SOPInstanceUID} {
		if err := gateway.ValidateUID(uid); err != nil {
			return nil, nil, fmt.Errorf("index record: %w", err)
		}
	}
	data, err := recordcodec.Encode(rec)
	if err != nil {
		return nil, nil, err
	}
	studyAttrs := gateway.StudyAttrs(rec.Metadata)
	sattrs, err := recordcodec.AppendCompact(nil, studyAttrs)
	if err != nil {
		return nil, nil, fmt.Errorf("encode study attributes: %w", err)
	}
	eattrs, err := recordcodec.AppendCompact(nil, gateway.SeriesAttrs(rec.Metadata))
	if err != nil {
		return nil, nil, fmt.Errorf("encode series attributes: %w", err)
	}
	md := rec.Metadata
	pn := gateway.StudyPatientNames(md) // a flagged study's other patients' names too
	names := gateway.NameKeys(pn, dicomcodec.TagPatientName)
	prefixes := namePrefixes(gateway.NameGroupKeys(pn, dicomcodec.TagPatientName))
	codes := gateway.NamePhoneticKeys(pn, dicomcodec.TagPatientName)
	pids := indexedPatientIDs(md)
	acc, mod := indexValue(md.String(dicomcodec.TagAccessionNumber)), indexValue(rec.Modality())
	st, se := rec.StudyInstanceUID, rec.SeriesInstanceUID
	sh := x.shardOf(st)
	keys = []string{
		x.skey(sh, "i", rec.SOPInstanceUID), x.skey(sh, "s", st), x.skey(sh, "e", st, se), x.skey(sh, "ei", st, se),
		x.skey(sh, "ss", st), x.skey(sh, "x", "date"), x.skey(sh, "x", "npok"), x.skey(sh, "x", "phok"), x.skey(sh, "x", "name"),
		x.skey(sh, "x", "recv"), x.skey(sh, "x", "bytes"),
	}
	for _, id := range pids {
		keys = append(keys, x.skey(sh, "x", "pid", id))
	}
	if acc != "" {
		keys = append(keys, x.skey(sh, "x", "acc", acc))
	}
	if mod != "" {
		keys = append(keys, x.skey(sh, "x", "mod", mod))
	}
	for _, p := range prefixes {
		keys = append(keys, x.skey(sh, "x", "np", p))
	}
	for _, c := range codes {
		keys = append(keys, x.skey(sh, "x", "ph", c))
	}
	return keys, []any{
		x.shards[sh], mode, rec.SOPInstanceUID, st, se, data,
		mod, indexValue(rec.SOPClassUID), sattrs, eattrs,
		strconv.FormatInt(gateway.StudyDateKey(md), 10), strings.Join(pids, "\x01"), acc, strings.Join(names, "\x01"),
		strings.Join(prefixes, "\x01"), gateway.MetadataOrder(rec), strings.Join(codes, "\x01"),
		strconv.FormatInt(rec.Size, 10), strconv.FormatInt(rec.StoredAt.UnixMilli(), 10),
		gateway.StudyIdentitySet(studyAttrs),
	}, nil
}

// indexedPatientIDs are the study's gateway.StudyPatientIDs as the index
// keeps them (indexValue), once each: the x:pid zsets it is listed in and
// its pid field, joined by \x01.
func indexedPatientIDs(attrs dicomcodec.Dataset) []string {
	var ids []string
	for _, id := range gateway.StudyPatientIDs(attrs) {
		if id = indexValue(id); id != "" && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids
}

// namePrefixLen is the longest name prefix with its own x:np zset.
const namePrefixLen = 3

// namePrefixes returns the hex-encoded 1- to namePrefixLen-byte prefixes of
// the name group keys, once each: the x:np zsets the study is listed in.
func namePrefixes(names []string) []string {
	var out []string
	for _, n := range names {
		for l := 1; l <= min(len(n), namePrefixLen); l++ {
			if p := hex.EncodeToString([]byte(n[:l])); !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	return out
}

// PutInstances puts many records with pipelined script calls (reindex and
// benchmarks): each is PutInstance, records already indexed are left as
// they are.
func (x *Index) PutInstances(ctx context.Context, recs []*gateway.InstanceRecord) error {
	if err := writeScript.Load(ctx, x.rdb).Err(); err != nil {
		return translate(err)
	}
	for chunk := range slices.Chunk(recs, 500) {
		alone, err := x.locateBatch(ctx, chunk)
		if err != nil {
			return err
		}
		pipe := x.rdb.Pipeline()
		cmds := make([]*goredis.Cmd, len(chunk))
		for i, rec := range chunk {
			if alone[i] {
				continue
			}
			keys, args, err := x.writeArgs("put", rec)
			if err != nil {
				return err
			}
			cmds[i] = writeScript.EvalSha(ctx, pipe, keys, args...)
		}
		if _, err := pipe.Exec(ctx); err != nil && !goredis.HasErrorPrefix(err, "NOSCRIPT") {
			return translate(err)
		}
		for i, c := range cmds {
			if c != nil {
				_, missing := plannedMissing(c.Val())
				// Needed keys of the study's earlier values, or a master
				// that lost its script cache (restarted, failed over).
				alone[i] = missing || c.Err() != nil
			}
			if alone[i] {
				if _, _, err := x.PutInstance(ctx, chunk[i]); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// locateBatch sets the locators of a batch of puts on a cluster and reports
// which records must take PutInstance's path alone: those whose instance is
// indexed under another study.
func (x *Index) locateBatch(ctx context.Context, recs []*gateway.InstanceRecord) ([]bool, error) {
	alone := make([]bool, len(recs))
	if !x.cluster {
		return alone, nil
	}
	pipe := x.rdb.Pipeline()
	gets := make([]*goredis.StringCmd, len(recs))
	for i, rec := range recs {
		if err := gateway.ValidateUID(rec.SOPInstanceUID); err != nil {
			return nil, fmt.Errorf("index record: %w", err)
		}
		gets[i] = pipe.Get(ctx, x.locatorKey(rec.SOPInstanceUID))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return nil, translate(err)
	}
	pipe = x.rdb.Pipeline()
	for i, rec := range recs {
		switch st := gets[i].Val(); st {
		case rec.StudyInstanceUID:
		case "":
			pipe.Set(ctx, x.locatorKey(rec.SOPInstanceUID), rec.StudyInstanceUID, 0)
		default:
			alone[i] = true
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, translate(err)
	}
	return alone, nil
}

// indexValue makes a value safe inside a key and a Lua \1-joined list.
func indexValue(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 {
			return -1
		}
		return r
	}, s)
}

func decodeRecord(v any) (*gateway.InstanceRecord, error) {
	s, ok := v.(string)
	if !ok {
		return nil, fmt.Errorf("redis index: record is %T: %w", v, gateway.ErrUnavailable)
	}
	rec, err := recordcodec.Decode([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("redis index: decode record: %v: %w", err, gateway.ErrUnavailable)
	}
	return rec, nil
}

// GetInstance returns the record of sopInstanceUID or ErrNotFound.
func (x *Index) GetInstance(ctx context.Context, sopInstanceUID string) (*gateway.InstanceRecord, error) {
	st, err := x.locate(ctx, sopInstanceUID)
	if err != nil {
		return nil, err
	}
	if x.cluster && st == "" {
		return nil, fmt.Errorf("instance %s: %w", sopInstanceUID, gateway.ErrNotFound)
	}
	return x.getInstance(ctx, st, sopInstanceUID)
}

// getInstance returns the record of sop in study studyUID or ErrNotFound.
func (x *Index) getInstance(ctx context.Context, studyUID, sop string) (*gateway.InstanceRecord, error) {
	s, err := x.rdb.HGet(ctx, x.instanceKey(studyUID, sop), "rec").Result()
	if err != nil {
		if errors.Is(err, goredis.Nil) {
			return nil, fmt.Errorf("instance %s: %w", sop, gateway.ErrNotFound)
		}
		return nil, translate(err)
	}
	return decodeRecord(s)
}

// DeleteInstance removes the record of sopInstanceUID or returns ErrNotFound.
func (x *Index) DeleteInstance(ctx context.Context, sopInstanceUID string) error {
	st, err := x.locate(ctx, sopInstanceUID)
	if err != nil {
		return err
	}
	if x.cluster && st == "" {
		return fmt.Errorf("instance %s: %w", sopInstanceUID, gateway.ErrNotFound)
	}
	return x.deleteFrom(ctx, st, sopInstanceUID)
}

// deleteFrom deletes sop from the shard of study st (any study on a single
// server), then its locator if it still names st.
func (x *Index) deleteFrom(ctx context.Context, st, sop string) error {
	sh := x.shardOf(st)
	res, err := x.runPlanned(ctx, deleteScript, []string{x.skey(sh, "i", sop)}, x.shards[sh], sop)
	if err != nil {
		return err
	}
	if x.cluster {
		if err := unlocateScript.Run(ctx, x.rdb, []string{x.locatorKey(sop)}, st).Err(); err != nil {
			return translate(err)
		}
	}
	if res == int64(0) {
		return fmt.Errorf("instance %s: %w", sop, gateway.ErrNotFound)
	}
	return nil
}

// ListInstances returns a study's (or one series') instances in
// gateway.CompareInstances order, or ErrNotFound when there are none.
func (x *Index) ListInstances(ctx context.Context, studyUID, seriesUID string) ([]*gateway.InstanceRecord, error) {
	recs, err := x.instances(ctx, studyUID, seriesUID)
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("no instances in study %s series %q: %w", studyUID, seriesUID, gateway.ErrNotFound)
	}
	return recs, nil
}

// members returns the SOP Instance UIDs of a study (or one series), with
// the series UID of each.
func (x *Index) members(ctx context.Context, studyUID, seriesUID string) (sops, series []string, err error) {
	seriesUIDs := []string{seriesUID}
	if seriesUID == "" {
		if seriesUIDs, err = x.rdb.SMembers(ctx, x.studyKey(studyUID, "ss", studyUID)).Result(); err != nil {
			return nil, nil, translate(err)
		}
	}
	pipe := x.rdb.Pipeline()
	cmds := make([]*goredis.StringSliceCmd, len(seriesUIDs))
	for i, se := range seriesUIDs {
		cmds[i] = pipe.SMembers(ctx, x.studyKey(studyUID, "ei", studyUID, se))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, nil, translate(err)
	}
	for i, c := range cmds {
		for _, sop := range c.Val() {
			sops = append(sops, sop)
			series = append(series, seriesUIDs[i])
		}
	}
	return sops, series, nil
}

// MetadataEntries reads each instance's order entry (the hash field "ord"
// beside its record) in one pipelined round trip after listing the
// members; an instance indexed before entries existed is prepared from its
// record.
func (x *Index) MetadataEntries(ctx context.Context, studyUID, seriesUID string) ([]gateway.MetadataEntry, error) {
	sops, series, err := x.members(ctx, studyUID, seriesUID)
	if err != nil {
		return nil, err
	}
	pipe := x.rdb.Pipeline()
	cmds := make([]*goredis.SliceCmd, len(sops))
	for i, sop := range sops {
		cmds[i] = pipe.HMGet(ctx, x.instanceKey(studyUID, sop), "ord", "se")
	}
	if len(sops) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, translate(err)
		}
	}
	entries := make([]gateway.MetadataEntry, 0, len(sops))
	for i, c := range cmds {
		v := c.Val()
		if v[1] == nil {
			continue // deleted between the two round trips
		}
		order, _ := v[0].(string)
		if order == "" {
			rec, err := x.getInstance(ctx, studyUID, sops[i])
			if errors.Is(err, gateway.ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			entries = append(entries, gateway.NewMetadataEntry(rec))
			continue
		}
		e, err := gateway.DecodeMetadataEntry(studyUID, series[i], sops[i], []byte(order))
		if err != nil {
			return nil, err
		}
		entries = append(entries, e)
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("no instances in study %s series %q: %w", studyUID, seriesUID, gateway.ErrNotFound)
	}
	slices.SortFunc(entries, gateway.CompareMetadataEntries)
	return entries, nil
}

func (x *Index) instances(ctx context.Context, studyUID, seriesUID string) ([]*gateway.InstanceRecord, error) {
	sops, _, err := x.members(ctx, studyUID, seriesUID)
	if err != nil {
		return nil, err
	}
	if len(sops) == 0 {
		return nil, nil
	}
	pipe := x.rdb.Pipeline()
	gets := make([]*goredis.StringCmd, len(sops))
	for i, sop := range sops {
		gets[i] = pipe.HGet(ctx, x.instanceKey(studyUID, sop), "rec")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return nil, translate(err)
	}
	recs := make([]*gateway.InstanceRecord, 0, len(sops))
	for _, g := range gets {
		if g.Err() != nil {
			continue // deleted between the two round trips
		}
		rec, err := decodeRecord(g.Val())
		if err != nil {
			return nil, err
		}
		recs = append(recs, rec)
	}
	slices.SortFunc(recs, gateway.CompareInstances)
	return recs, nil
}

// Search answers a QIDO-RS query with the shared engine (gateway.Search).
// Candidate studies come from the most selective secondary index the query
// allows (study UIDs, patient ID, accession number, patient-name prefix,
// modality, date range), never from a scan of every study key.
func (x *Index) Search(ctx context.Context, q *gateway.Query) (*gateway.SearchResult, error) {
	res, err := gateway.Search(ctx, q, searchSource{x})
	if err != nil && !errors.Is(err, gateway.ErrUnavailable) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return nil, translate(err)
	}
	return res, err
}

type searchSource struct{ x *Index }

// namePrefixIndexed reports whether every study is listed in the x:np zsets
// (x:npok); an index written before they existed searches names with
// x:name. A true answer is remembered: the flag is never removed. (Only the
// single-server layout can predate them.)
func (x *Index) namePrefixIndexed(ctx context.Context) bool {
	if x.npok.Load() {
		return true
	}
	n, err := x.rdb.Exists(ctx, x.skey(0, "x", "npok")).Result()
	if err == nil && n == 1 {
		x.npok.Store(true)
	}
	return n == 1
}

// phoneticIndexed reports whether every study is in the x:ph zsets of its
// name codes (x:phok); remembered like namePrefixIndexed.
func (x *Index) phoneticIndexed(ctx context.Context) bool {
	if x.phok.Load() {
		return true
	}
	n, err := x.rdb.Exists(ctx, x.skey(0, "x", "phok")).Result()
	if err == nil && n == 1 {
		x.phok.Store(true)
	}
	return n == 1
}

// everyShard returns the key of parts in each shard.
func (x *Index) everyShard(parts ...string) []string {
	keys := make([]string, len(x.shards))
	for sh := range x.shards {
		keys[sh] = x.skey(sh, parts...)
	}
	return keys
}

// tmpKeys returns a fresh temporary key name in each shard.
func (x *Index) tmpKeys() []string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return x.everyShard("tmp", hex.EncodeToString(b[:]))
}

// dropKeys deletes keys one command each (they are in different slots on a
// cluster), in one pipeline, whatever ctx's state.
func (x *Index) dropKeys(ctx context.Context, keys []string) {
	pipe := x.rdb.Pipeline()
	for _, k := range keys {
		pipe.Del(context.WithoutCancel(ctx), k)
	}
	_, _ = pipe.Exec(context.WithoutCancel(ctx))
}

func (s searchSource) Studies(ctx context.Context, h gateway.IndexHints, fn func([]*gateway.StudySummary) (bool, error)) error {
	x := s.x
	switch {
	case h.StudyUIDs != nil:
		return s.unordered(ctx, h.StudyUIDs, h, fn)
	case h.PatientID != "":
		return s.ordered(ctx, x.everyShard("x", "pid", indexValue(h.PatientID)), h, fn)
	case h.AccessionNumber != "":
		return s.ordered(ctx, x.everyShard("x", "acc", indexValue(h.AccessionNumber)), h, fn)
	case h.NamePrefix != "" && !h.NameWord && x.namePrefixIndexed(ctx):
		// Every study with a name group starting with NamePrefix is in the
		// zset of its first bytes; the engine matches the rest. Fuzzy
		// matching (a prefix of any word) uses x:name below.
		p := h.NamePrefix[:min(len(h.NamePrefix), namePrefixLen)]
		return s.ordered(ctx, x.everyShard("x", "np", hex.EncodeToString([]byte(p))), h, fn)
	case h.NamePhonetic != "" && !x.phoneticIndexed(ctx):
		// Studies indexed before the x:ph zsets existed are in none: walk
		// every study, the engine compares codes.
		return s.ordered(ctx, x.everyShard("x", "date"), h, fn)
	case h.NamePhonetic != "":
		return s.fuzzyName(ctx, h, fn)
	case h.NamePrefix != "":
		// Fuzzy matching with a wildcard first word (a prefix of any word)
		// and name prefixes of an index from before x:np.
		uids, err := s.nameWordPrefix(ctx, h.NamePrefix)
		if err != nil {
			return err
		}
		return s.unordered(ctx, slices.Concat(uids...), h, fn)
	case len(h.Modalities) == 1:
		return s.ordered(ctx, x.everyShard("x", "mod", indexValue(h.Modalities[0])), h, fn)
	case len(h.Modalities) > 1:
		tmp := x.tmpKeys()
		pipe := x.rdb.Pipeline() // not MULTI: the shards are in different slots
		for sh, t := range tmp {
			keys := make([]string, len(h.Modalities))
			for i, m := range h.Modalities {
				keys[i] = x.skey(sh, "x", "mod", indexValue(m))
			}
			pipe.ZUnionStore(ctx, t, &goredis.ZStore{Keys: keys, Aggregate: "MAX"})
			pipe.Expire(ctx, t, time.Minute)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return translate(err)
		}
		defer x.dropKeys(ctx, tmp)
		return s.ordered(ctx, tmp, h, fn)
	}
	return s.ordered(ctx, x.everyShard("x", "date"), h, fn)
}

// nameWordPrefix returns the studies with a patient-name key (a whole group
// or a word) starting with prefix, from each shard's x:name, in no order:
// one slice per shard.
func (s searchSource) nameWordPrefix(ctx context.Context, prefix string) ([][]string, error) {
	pipe := s.x.rdb.Pipeline()
	cmds := make([]*goredis.StringSliceCmd, len(s.x.shards))
	for sh := range s.x.shards {
		cmds[sh] = pipe.ZRangeByLex(ctx, s.x.skey(sh, "x", "name"), &goredis.ZRangeBy{
			Min: "[" + prefix, Max: "[" + prefix + "\xff",
		})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, translate(err)
	}
	out := make([][]string, len(cmds))
	for sh, c := range cmds {
		members := c.Val()
		seen := make(map[string]bool, len(members))
		for _, m := range members {
			_, uid, ok := strings.Cut(m, "\x00")
			if ok && !seen[uid] {
				seen[uid] = true
				out[sh] = append(out[sh], uid)
			}
		}
	}
	return out, nil
}

// fuzzyName walks the studies whose first name word matches the fuzzy
// query's first word: by Soundex code (the x:ph zset, already in date
// order) or by prefix (x:name, usually few for a whole word). In each shard
// the prefix matches are scored by date (ZINTERSTORE with x:date) and merged
// with the code's zset in a temporary zset, walked newest first as far as
// the page needs, so a common code costs no more than its page.
func (s searchSource) fuzzyName(ctx context.Context, h gateway.IndexHints, fn func([]*gateway.StudySummary) (bool, error)) error {
	x := s.x
	codes := x.everyShard("x", "ph", h.NamePhonetic)
	uids, err := s.nameWordPrefix(ctx, h.NamePrefix)
	if err != nil {
		return err
	}
	tmp := x.tmpKeys()
	walk := slices.Clone(codes)
	var made []string
	pipe := x.rdb.Pipeline() // not MULTI: the shards are in different slots
	for sh, shardUIDs := range uids {
		if len(shardUIDs) == 0 {
			continue
		}
		set, dated := tmp[sh]+":set", tmp[sh]+":dated"
		for chunk := range slices.Chunk(shardUIDs, 1000) {
			members := make([]any, len(chunk))
			for i, u := range chunk {
				members[i] = u
			}
			pipe.SAdd(ctx, set, members...)
		}
		pipe.ZInterStore(ctx, dated, &goredis.ZStore{Keys: []string{x.skey(sh, "x", "date"), set}, Weights: []float64{1, 0}})
		pipe.ZUnionStore(ctx, tmp[sh], &goredis.ZStore{Keys: []string{codes[sh], dated}, Aggregate: "MAX"})
		pipe.Del(ctx, set)
		pipe.Del(ctx, dated)
		pipe.Expire(ctx, tmp[sh], time.Minute)
		walk[sh] = tmp[sh]
		made = append(made, tmp[sh])
	}
	if len(made) == 0 {
		return s.ordered(ctx, codes, h, fn)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return translate(err)
	}
	defer x.dropKeys(ctx, made)
	return s.ordered(ctx, walk, h, fn)
}

// ordered walks zsets of study UIDs scored by StudyDate (the same search
// set, one per shard) newest first (ties by UID descending, as
// gateway.CompareStudies), in growing batches.
func (s searchSource) ordered(ctx context.Context, keys []string, h gateway.IndexHints, fn func([]*gateway.StudySummary) (bool, error)) error {
	by := goredis.ZRangeBy{Max: "+inf", Min: "-inf"}
	if h.DateHigh > 0 {
		by.Max = strconv.FormatInt(h.DateHigh, 10)
	}
	if h.HasDate {
		by.Min = strconv.FormatInt(max(h.DateLow, 1), 10)
	}
	count := int64(64)
	if h.Want > 0 {
		count = int64(min(max(h.Want, 16), 1024))
	}
	if len(keys) > 1 {
		return s.merged(ctx, keys, by, count, fn)
	}
	for {
		by.Count = count
		uids, err := s.x.rdb.ZRevRangeByScore(ctx, keys[0], &by).Result()
		if err != nil {
			return translate(err)
		}
		studies, err := s.x.studies(ctx, uids)
		if err != nil {
			return err
		}
		if len(studies) > 0 {
			more, err := fn(studies)
			if err != nil || !more {
				return err
			}
		}
		if int64(len(uids)) < count {
			return nil
		}
		by.Offset += count
		count = min(count*2, 1024)
	}
}

// shardCursor is one shard's place in a merged walk: the members read and
// not yet handed on, and where its next read starts.
type shardCursor struct {
	key    string
	buf    []goredis.Z
	offset int64
	count  int64
	done   bool
}

// shardMerge walks the same zset of every shard as one: next reads the next
// members of every shard whose read members are used up (one pipeline,
// which go-redis splits by master and sends concurrently), then hands on
// members in the walk's order as long as every shard not yet exhausted
// still has a read member to compare, so no shard's later member can come
// before one handed on. Each shard's reads grow like a single walk's.
type shardMerge struct {
	rdb     goredis.UniversalClient
	cursors []*shardCursor
	// read queues on pipe the read of count members of key from offset on,
	// in the walk's order.
	read func(ctx context.Context, pipe goredis.Pipeliner, key string, offset, count int64) *goredis.ZSliceCmd
	// before reports whether a comes before b in the walk.
	before func(a, b goredis.Z) bool
	// skip, when set, drops members as they are read (a resumed walk's
	// members at or before its cursor).
	skip func(goredis.Z) bool
}

// newShardMerge starts a walk of keys (one per shard), reading per members
// of each at first.
func newShardMerge(rdb goredis.UniversalClient, keys []string, per int64, before func(a, b goredis.Z) bool,
	read func(ctx context.Context, pipe goredis.Pipeliner, key string, offset, count int64) *goredis.ZSliceCmd) *shardMerge {
	m := &shardMerge{rdb: rdb, read: read, before: before}
	for _, k := range keys {
		m.cursors = append(m.cursors, &shardCursor{key: k, count: per})
	}
	return m
}

// next returns the walk's next members, at most n and at least one, or
// none when every shard is exhausted.
func (m *shardMerge) next(ctx context.Context, n int64) ([]goredis.Z, error) {
	for {
		pipe := m.rdb.Pipeline()
		cmds := make([]*goredis.ZSliceCmd, len(m.cursors))
		reads := 0
		for i, c := range m.cursors {
			if len(c.buf) == 0 && !c.done {
				cmds[i] = m.read(ctx, pipe, c.key, c.offset, c.count)
				reads++
			}
		}
		if reads > 0 {
			if _, err := pipe.Exec(ctx); err != nil {
				return nil, translate(err)
			}
		}
		for i, cmd := range cmds {
			if cmd == nil {
				continue
			}
			c := m.cursors[i]
			read := cmd.Val()
			c.offset += int64(len(read))
			c.done = int64(len(read)) < c.count
			c.count = min(c.count*2, 1024)
			if m.skip != nil {
				read = slices.DeleteFunc(read, m.skip)
			}
			c.buf = read
		}
		var batch []goredis.Z
		for int64(len(batch)) < n {
			best, blocked := -1, false
			for i, c := range m.cursors {
				if len(c.buf) == 0 {
					if !c.done {
						blocked = true
						break
					}
					continue
				}
				if best < 0 || m.before(c.buf[0], m.cursors[best].buf[0]) {
					best = i
				}
			}
			if blocked || best < 0 {
				break
			}
			batch = append(batch, m.cursors[best].buf[0])
			m.cursors[best].buf = m.cursors[best].buf[1:]
		}
		if len(batch) > 0 {
			return batch, nil
		}
		finished := true
		for _, c := range m.cursors {
			if len(c.buf) > 0 || !c.done {
				finished = false
			}
		}
		if finished {
			return nil, nil
		}
	}
}

// merged walks the shards' zsets as one newest first (shardMerge), handing
// fn batches of summaries that grow like the single walk's.
func (s searchSource) merged(ctx context.Context, keys []string, by goredis.ZRangeBy, count int64, fn func([]*gateway.StudySummary) (bool, error)) error {
	m := newShardMerge(s.x.rdb, keys, max(8, 2*count/int64(len(keys))), newerMember,
		func(ctx context.Context, pipe goredis.Pipeliner, key string, offset, n int64) *goredis.ZSliceCmd {
			r := by
			r.Offset, r.Count = offset, n
			return pipe.ZRevRangeByScoreWithScores(ctx, key, &r)
		})
	for {
		batch, err := m.next(ctx, count)
		if err != nil || len(batch) == 0 {
			return err
		}
		uids := make([]string, len(batch))
		for i, z := range batch {
			uids[i] = z.Member.(string)
		}
		studies, err := s.x.studies(ctx, uids)
		if err != nil {
			return err
		}
		if len(studies) > 0 {
			more, err := fn(studies)
			if err != nil || !more {
				return err
			}
		}
		count = min(count*2, 1024)
	}
}

// newerMember reports whether a comes before b in a newest-first walk:
// higher score, then higher UID (ZREVRANGEBYSCORE's order within a zset).
func newerMember(a, b goredis.Z) bool {
	if a.Score != b.Score {
		return a.Score > b.Score
	}
	return a.Member.(string) > b.Member.(string)
}

// unordered sorts uids into gateway.CompareStudies order by their date
// scores (one pipeline of ZMSCOREs of 1,000 on each study's shard, no
// summary decoded), then fetches the summaries batch by batch, only as far
// as the search reads.
func (s searchSource) unordered(ctx context.Context, uids []string, h gateway.IndexHints, fn func([]*gateway.StudySummary) (bool, error)) error {
	type cand struct {
		uid  string
		date float64
	}
	cands := make([]cand, 0, len(uids))
	if len(uids) > 0 {
		byShard := make([][]string, len(s.x.shards))
		for _, uid := range uids {
			sh := s.x.shardOf(uid)
			byShard[sh] = append(byShard[sh], uid)
		}
		pipe := s.x.rdb.Pipeline()
		var cmds []*goredis.FloatSliceCmd
		var asked [][]string
		for sh, shardUIDs := range byShard {
			for chunk := range slices.Chunk(shardUIDs, 1000) {
				cmds = append(cmds, pipe.ZMScore(ctx, s.x.skey(sh, "x", "date"), chunk...))
				asked = append(asked, chunk)
			}
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return translate(err)
		}
		for i, c := range cmds {
			scores := c.Val()
			for j, uid := range asked[i] {
				if j < len(scores) {
					cands = append(cands, cand{uid, scores[j]})
				}
			}
		}
	}
	slices.SortFunc(cands, func(a, b cand) int {
		if c := cmp.Compare(b.date, a.date); c != 0 {
			return c
		}
		return strings.Compare(b.uid, a.uid)
	})
	size := 64
	if h.Want > 0 {
		size = min(max(h.Want, 16), 1024)
	}
	for len(cands) > 0 {
		n := min(size, len(cands))
		batch := make([]string, n)
		for i := range batch {
			batch[i] = cands[i].uid
		}
		cands = cands[n:]
		studies, err := s.x.studies(ctx, batch)
		if err != nil {
			return err
		}
		slices.SortFunc(studies, gateway.CompareStudies)
		if len(studies) > 0 {
			more, err := fn(studies)
			if err != nil || !more {
				return err
			}
		}
		size = min(size*2, 1024)
	}
	return nil
}

// studies reads the summaries of uids in one pipeline, skipping any deleted
// meanwhile.
func (x *Index) studies(ctx context.Context, uids []string) ([]*gateway.StudySummary, error) {
	if len(uids) == 0 {
		return nil, nil
	}
	pipe := x.rdb.Pipeline()
	cmds := make([]*goredis.MapStringStringCmd, len(uids))
	for i, uid := range uids {
		cmds[i] = pipe.HGetAll(ctx, x.studyKey(uid, "s", uid))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, translate(err)
	}
	out := make([]*gateway.StudySummary, 0, len(uids))
	for i, c := range cmds {
		h := c.Val()
		attrs, err := decodeAttrs(h)
		if err != nil {
			return nil, fmt.Errorf("redis index: decode study %s: %v: %w", uids[i], err, gateway.ErrUnavailable)
		}
		if attrs == nil {
			continue // deleted
		}
		st := &gateway.StudySummary{StudyInstanceUID: uids[i], Attrs: attrs, Modalities: map[string]int{}, SOPClasses: map[string]int{}}
		st.Instances, _ = strconv.Atoi(h["n"])
		st.Series, _ = strconv.Atoi(h["ns"])
		for f, v := range h {
			n, _ := strconv.Atoi(v)
			if m, ok := strings.CutPrefix(f, "m:"); ok && n > 0 {
				st.Modalities[m] = n
			} else if c, ok := strings.CutPrefix(f, "c:"); ok && n > 0 {
				st.SOPClasses[c] = n
			}
		}
		out = append(out, st)
	}
	return out, nil
}

// decodeAttrs returns the attributes of a study or series hash: its compact
// ca field, or the attrs JSON of a hash written before ca existed; nil when
// the hash is gone.
func decodeAttrs(h map[string]string) (dicomcodec.Dataset, error) {
	if ca := h["ca"]; ca != "" {
		return recordcodec.DecodeCompact(ca)
	}
	if h["attrs"] == "" {
		return nil, nil
	}
	var d dicomcodec.Dataset
	if err := json.Unmarshal([]byte(h["attrs"]), &d); err != nil {
		return nil, err
	}
	if d == nil {
		d = dicomcodec.Dataset{}
	}
	return d, nil
}

func (s searchSource) Series(ctx context.Context, studyUID string) ([]*gateway.SeriesSummary, error) {
	x := s.x
	series, err := x.rdb.SMembers(ctx, x.studyKey(studyUID, "ss", studyUID)).Result()
	if err != nil {
		return nil, translate(err)
	}
	pipe := x.rdb.Pipeline()
	cmds := make([]*goredis.MapStringStringCmd, len(series))
	for i, se := range series {
		cmds[i] = pipe.HGetAll(ctx, x.studyKey(studyUID, "e", studyUID, se))
	}
	if len(series) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, translate(err)
		}
	}
	out := make([]*gateway.SeriesSummary, 0, len(series))
	for i, c := range cmds {
		attrs, err := decodeAttrs(c.Val())
		if err != nil {
			return nil, fmt.Errorf("redis index: decode series %s: %v: %w", series[i], err, gateway.ErrUnavailable)
		}
		if attrs == nil {
			continue
		}
		h := c.Val()
		se := &gateway.SeriesSummary{StudyInstanceUID: studyUID, SeriesInstanceUID: series[i], Attrs: attrs}
		se.Instances, _ = strconv.Atoi(h["n"])
		out = append(out, se)
	}
	return out, nil
}

func (s searchSource) Instances(ctx context.Context, studyUID, seriesUID string) ([]*gateway.InstanceRecord, error) {
	return s.x.instances(ctx, studyUID, seriesUID)
}

// relistScript lists one study under the patient IDs of its summary
// (KEYS[2..], ARGV[3] joined by \1) when its pid and ca fields still read
// ARGV[1] and ARGV[4]: a write between the read and this call has listed
// it itself, and a study deleted meanwhile is left deleted.
// KEYS[1] the study hash; ARGV[2] the study UID.
var relistScript = goredis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'pid', 'ca')
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[4] then return 0 end
local score = tonumber(redis.call('HGET', KEYS[1], 'd') or '0') or 0
for i = 2, #KEYS do redis.call('ZADD', KEYS[i], score, ARGV[2]) end
redis.call('HSET', KEYS[1], 'pid', ARGV[3])
return 1
`)

// ListFlaggedStudies lists every study flagged for an identity conflict
// under all its Patient IDs (gateway.StudyPatientIDs): an index written
// before 2026-12-06 listed such a study under its latest instance's ID
// only. Each shard is walked once (its x:idok mark records it), in
// pipelined batches; gateway serve runs it in the background. It returns
// how many studies it listed, and how many it could not read (left as
// they are).
func (x *Index) ListFlaggedStudies(ctx context.Context) (listed, unreadable int, err error) {
	for sh := range x.shards {
		mark := x.skey(sh, "x", "idok")
		n, err := x.rdb.Exists(ctx, mark).Result()
		if err != nil {
			return listed, unreadable, translate(err)
		}
		if n > 0 {
			continue
		}
		l, u, err := x.listFlaggedIn(ctx, sh)
		listed, unreadable = listed+l, unreadable+u
		if err != nil {
			return listed, unreadable, err
		}
		if err := x.rdb.Set(ctx, mark, "1", 0).Err(); err != nil {
			return listed, unreadable, translate(err)
		}
	}
	return listed, unreadable, nil
}

// listFlaggedIn relists the flagged studies of shard sh, read with ZSCAN
// of its x:date zset, which returns every study present throughout the
// walk at least once, whatever is written or deleted meanwhile.
func (x *Index) listFlaggedIn(ctx context.Context, sh int) (listed, unreadable int, err error) {
	var cursor uint64
	for {
		page, next, err := x.rdb.ZScan(ctx, x.skey(sh, "x", "date"), cursor, "", 500).Result()
		if err != nil {
			return listed, unreadable, translate(err)
		}
		var studies []string
		for i := 0; i < len(page); i += 2 { // member, score
			studies = append(studies, page[i])
		}
		l, u, err := x.relistFlagged(ctx, sh, studies)
		listed, unreadable = listed+l, unreadable+u
		if err != nil {
			return listed, unreadable, err
		}
		if cursor = next; cursor == 0 {
			return listed, unreadable, nil
		}
	}
}

// relistFlagged relists those of studies (in shard sh) that are flagged
// and not yet listed under every Patient ID.
func (x *Index) relistFlagged(ctx context.Context, sh int, studies []string) (listed, unreadable int, err error) {
	if len(studies) == 0 {
		return 0, 0, nil
	}
	pipe := x.rdb.Pipeline()
	cmds := make([]*goredis.SliceCmd, len(studies))
	for i, st := range studies {
		cmds[i] = pipe.HMGet(ctx, x.skey(sh, "s", st), "ca", "attrs", "pid")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return 0, 0, translate(err)
	}
	for i, st := range studies {
		h := map[string]string{}
		for j, field := range []string{"ca", "attrs", "pid"} {
			if v, ok := cmds[i].Val()[j].(string); ok {
				h[field] = v
			}
		}
		if h["ca"] == "" && h["attrs"] == "" {
			continue // deleted meanwhile
		}
		if !strings.Contains(h["ca"]+h["attrs"], gateway.IdentityConflictValue) {
			continue // not flagged: no need to decode it
		}
		attrs, err := decodeAttrs(h)
		if err != nil {
			unreadable++
			continue
		}
		if _, flagged := gateway.IdentityConflicts(attrs); !flagged {
			continue
		}
		ids := indexedPatientIDs(attrs)
		joined := strings.Join(ids, "\x01")
		if joined == h["pid"] {
			continue
		}
		keys := []string{x.skey(sh, "s", st)}
		for _, id := range ids {
			keys = append(keys, x.skey(sh, "x", "pid", id))
		}
		n, err := relistScript.Run(ctx, x.rdb, keys, h["pid"], st, joined, h["ca"]).Int()
		if err != nil {
			return listed, unreadable, translate(err)
		}
		listed += n
	}
	return listed, unreadable, nil
}

//! The scan model in Redis: what the scan API needs to answer a scan, in one round trip.
//!
//! # Key layout
//!
//! Every key starts with the configured prefix (`P`, e.g. `vt:`). The model lives in a
//! versioned *keyspace* `KS` so that the replay CLI can build a new one beside the live one
//! and switch atomically:
//!
//! | key | type | content |
//! |---|---|---|
//! | `P scan:active` | string | name of the active keyspace (absent: `0`) |
//! | `P scan:KS:v` | hash | `AggregateType:aggregate-id` → last applied version |
//! | `P scan:KS:t:BBBB` | hash | tag bucket: 16 raw UUID bytes → tag value (below) |
//! | `P scan:KS:s:BBBB` | hash | long serials (> 32 bytes) of the bucket's tags |
//! | `P scan:KS:bi` | hash | batch id → small batch index `I` (per keyspace) |
//! | `P scan:KS:bn` | string | last batch index handed out |
//! | `P scan:KS:b:I` | hash | the batch: `id`, `f` factory, `p` product, `l` lot, `st` status, `pd` production date, `sb` sell-by, `mk` markets (comma separated), `rr` recall reason |
//! | `P scan:KS:r:I` | hash | revoked tags of the batch: 16 raw UUID bytes → reason |
//! | `P scan:KS:p:PRODUCT` | hash | the product: `g` GTIN, `n` name, `b` brand |
//!
//! `BBBB` is the tag's bucket, 4 hex digits: 16 bits of FNV-1a over the UUID bytes, so that
//! every kind of UUID (random v4, time-ordered v7, sequential) spreads evenly. 65,536
//! buckets hold ~15 tags each for 1M tags and stay listpack-encoded (≤ 512 entries, values
//! ≤ 64 bytes) up to ~30M tags.
//!
//! A tag value is `I|count|first` followed by nothing (scans recorded, tag not issued yet:
//! the scan log may be applied before the batch's `TagsIssued`), `|` (issued, no serial),
//! `|=SERIAL` (issued, serial inline) or `|~` (issued, serial in the `s:` hash). `first` is
//! the first scan in epoch seconds (0: never scanned). Batch and product data are stored
//! once per batch and product and joined at read time, so a tag's batch or product may be
//! applied after the tag itself (cross-aggregate order is not guaranteed): a tag whose batch
//! or product is not (yet) in the model reads as unknown.
//!
//! Measured: 49.5 bytes of Redis memory per tag for 1,000,000 tags with 10-character
//! serials (`memory_per_tag_for_a_million_tags`, an ignored test). A scan is one `EVALSHA`.
//!
//! # Atomicity
//!
//! Every change is one Lua script: the version check, the change and the version update run
//! together, so concurrent or duplicated deliveries apply an event exactly once.
//!
//! Redis does not roll a script back when it fails halfway (a wrong-type key, say); every
//! operation is therefore idempotent (sets, max/min, a batch index allocated once), and the
//! version moves last, so a retried event converges on the same state. A reply lost to a
//! client timeout is harmless the same way: the retry answers `Duplicate`.
//!
//! The scripts read the keyspace pointer and derive their other keys from it, touching keys
//! they were not given in `KEYS`: that is fine on a single (non-cluster) Redis, which is what
//! VokeTag runs (Memorystore standard tier); a cluster would need every key under one hash
//! tag.

use chrono::{DateTime, NaiveDate, Utc};
use fred::bytes::Bytes;
use fred::bytes_utils::Str;
use fred::clients::Pool;
use fred::error::{Error as RedisError, ErrorKind};
use fred::interfaces::{KeysInterface, LuaInterface};
use fred::types::{Key, Value};
use std::sync::Arc;
use tokio::sync::OnceCell;
use uuid::Uuid;
use voketag_domain::batch::{BatchEvent, BatchStatus};
use voketag_domain::product::ProductEvent;
use voketag_domain::scan::ScanLogEvent;
use voketag_platform::redis::delete_prefix;
use voketag_schemas::bus::EventEnvelope;

use crate::event::{ModelEvent, decode, epoch_seconds, from_epoch_seconds, version_key};
use crate::{Applied, BatchView, ProductView, ProjectionError, TagView};

/// What one scan found, with the tag's counters after counting this scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanHit {
    pub view: TagView,
    /// Whether this scan was the tag's first (it set `first_scan_at`).
    pub first_scan: bool,
}

/// Serials of at most this many bytes are stored inside the tag value; longer ones in the
/// bucket's `s:` hash, so that tag values stay below Redis' listpack value limit (64 bytes).
const INLINE_SERIAL_BYTES: usize = 32;

/// Shared by every script: resolves the keyspace and decodes/encodes tag values.
/// KEYS[1]: the keyspace pointer. ARGV[1]: key prefix. ARGV[2]: keyspace ('' = the active
/// one, read from the pointer).
macro_rules! lua_prelude {
    () => {
        r#"
-- Non-cluster Redis: the keys below are derived from the keyspace the pointer names, not
-- passed in KEYS. Fine on a single Redis; a cluster would refuse it.
local ks = ARGV[2]
if ks == '' then ks = redis.call('GET', KEYS[1]) or '0' end
local base = ARGV[1] .. 'scan:' .. ks .. ':'

local function tag_decode(v)
  if not v then return nil end
  local b, c, f, rest = string.match(v, '^(%d+)|(%d+)|(%d+)(.*)$')
  if not b then return nil end
  return {b = b, c = tonumber(c), f = tonumber(f), rest = rest}
end

local function tag_encode(t)
  return t.b .. '|' .. string.format('%d', t.c) .. '|' .. string.format('%d', t.f) .. t.rest
end
"#
    };
}

/// Applies one event, version-gated. ARGV[3]: version field, ARGV[4]: sequence, ARGV[5]:
/// operation, ARGV[6]: aggregate id, ARGV[7..]: operation arguments.
/// Returns 0 (applied), -1 (duplicate) or the expected version (gap).
const APPLY_LUA: &str = concat!(
    lua_prelude!(),
    r#"
local vkey = base .. 'v'
local seq = tonumber(ARGV[4])
local last = tonumber(redis.call('HGET', vkey, ARGV[3]) or '0')
if seq <= last then return -1 end
if seq > last + 1 then return last + 1 end

local function batch_index(bid)
  local k = base .. 'bi'
  local i = redis.call('HGET', k, bid)
  if not i then
    i = string.format('%d', redis.call('INCR', base .. 'bn'))
    redis.call('HSET', k, bid, i)
  end
  return i
end

local op = ARGV[5]
if op == 'product' then
  redis.call('HSET', base .. 'p:' .. ARGV[6], 'g', ARGV[7], 'n', ARGV[8], 'b', ARGV[9])
elseif op == 'created' then
  local k = base .. 'b:' .. batch_index(ARGV[6])
  redis.call('HSET', k, 'id', ARGV[6], 'f', ARGV[7], 'p', ARGV[8], 'l', ARGV[9],
    'pd', ARGV[10], 'mk', ARGV[12], 'st', 'draft')
  if ARGV[11] == '' then redis.call('HDEL', k, 'sb') else redis.call('HSET', k, 'sb', ARGV[11]) end
elseif op == 'status' then
  local k = base .. 'b:' .. batch_index(ARGV[6])
  redis.call('HSET', k, 'st', ARGV[7])
  if ARGV[8] then redis.call('HSET', k, 'rr', ARGV[8]) end
elseif op == 'issue' then
  -- triples: bucket, tag (16 bytes), '-' (no serial) or '=' .. serial
  local i = batch_index(ARGV[6])
  local unscanned = i .. '|0|0'
  local buckets = base .. 't:'
  for a = 7, #ARGV, 3 do
    local tk = buckets .. ARGV[a]
    local field = ARGV[a + 1]
    local s = ARGV[a + 2]
    local rest
    if s == '-' then
      rest = '|'
    elseif #s <= 1 + INLINE_SERIAL then
      rest = '|' .. s
    else
      rest = '|~'
      redis.call('HSET', base .. 's:' .. ARGV[a], field, string.sub(s, 2))
    end
    -- A tag the model has never seen (every tag of a replay, almost every tag live) is
    -- one write; one already there (scans recorded first, or issued again) keeps its
    -- counters.
    if redis.call('HSETNX', tk, field, unscanned .. rest) == 0 then
      local t = tag_decode(redis.call('HGET', tk, field)) or {c = 0, f = 0, rest = ''}
      if t.rest == '|~' and rest ~= '|~' then
        redis.call('HDEL', base .. 's:' .. ARGV[a], field)
      end
      t.b = i
      t.rest = rest
      redis.call('HSET', tk, field, tag_encode(t))
    end
  end
elseif op == 'revoke' then
  redis.call('HSET', base .. 'r:' .. batch_index(ARGV[6]), ARGV[7], ARGV[8])
elseif op == 'scans' then
  -- quadruples: bucket, tag (16 bytes), scan number, scanned at (epoch seconds)
  local i = batch_index(ARGV[6])
  for a = 7, #ARGV, 4 do
    local tk = base .. 't:' .. ARGV[a]
    local field = ARGV[a + 1]
    local n = tonumber(ARGV[a + 2])
    local at = tonumber(ARGV[a + 3])
    local t = tag_decode(redis.call('HGET', tk, field)) or {b = i, c = 0, f = 0, rest = ''}
    if n > t.c then t.c = n end
    if t.f == 0 or at < t.f then t.f = at end
    redis.call('HSET', tk, field, tag_encode(t))
  end
else
  return redis.error_reply('unknown operation ' .. tostring(op))
end
redis.call('HSET', vkey, ARGV[3], ARGV[4])
return 0
"#
);

/// Reads a tag with its batch and product and, when ARGV[5] (now, epoch seconds) is not
/// empty, counts a scan. ARGV[3]: bucket, ARGV[4]: tag (16 bytes).
/// Returns nil for an unknown tag (nothing written), else
/// `{count, first, serial, revoked, first_scan, batch fields x9, product fields x3}`.
const TAG_LUA: &str = concat!(
    lua_prelude!(),
    r#"
local tk = base .. 't:' .. ARGV[3]
local field = ARGV[4]
local t = tag_decode(redis.call('HGET', tk, field))
if not t or t.rest == '' then return false end
local b = redis.call('HMGET', base .. 'b:' .. t.b, 'id', 'f', 'p', 'l', 'st', 'pd', 'sb', 'mk', 'rr')
if not b[1] or not b[3] then return false end
local p = redis.call('HMGET', base .. 'p:' .. b[3], 'g', 'n', 'b')
if not p[1] then return false end
local serial = false
if t.rest == '|~' then
  serial = redis.call('HGET', base .. 's:' .. ARGV[3], field)
elseif string.sub(t.rest, 1, 2) == '|=' then
  serial = string.sub(t.rest, 3)
end
local revoked = redis.call('HGET', base .. 'r:' .. t.b, field)
local first = 0
if ARGV[5] ~= '' then
  t.c = t.c + 1
  if t.f == 0 then
    t.f = tonumber(ARGV[5])
    first = 1
  end
  redis.call('HSET', tk, field, tag_encode(t))
end
return {string.format('%d', t.c), string.format('%d', t.f), serial, revoked, first,
  b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], p[1], p[2], p[3]}
"#
);

/// Reads a batch (ARGV[3] = 'b') or a product (ARGV[3] = 'p'); ARGV[4]: its id.
const ENTITY_LUA: &str = concat!(
    lua_prelude!(),
    r#"
if ARGV[3] == 'b' then
  local i = redis.call('HGET', base .. 'bi', ARGV[4])
  if not i then return false end
  local b = redis.call('HMGET', base .. 'b:' .. i, 'id', 'f', 'p', 'l', 'st', 'pd', 'sb', 'mk', 'rr')
  if not b[1] then return false end
  return b
end
local p = redis.call('HMGET', base .. 'p:' .. ARGV[4], 'g', 'n', 'b')
if not p[1] then return false end
return p
"#
);

/// A Lua script and its SHA-1 once the server has it.
struct Script {
    lua: String,
    sha: OnceCell<Str>,
}

impl Script {
    /// `INLINE_SERIAL` in the Lua text stands for [`INLINE_SERIAL_BYTES`].
    fn new(lua: &str) -> Script {
        Script {
            lua: lua.replace("INLINE_SERIAL", &INLINE_SERIAL_BYTES.to_string()),
            sha: OnceCell::new(),
        }
    }
}

struct Scripts {
    apply: Script,
    tag: Script,
    entity: Script,
}

/// The Redis scan model (see the module documentation for its layout).
#[derive(Clone)]
pub struct RedisScanModel {
    pool: Pool,
    prefix: String,
    /// `None`: the active keyspace, resolved by each script from the pointer key.
    keyspace: Option<String>,
    scripts: Arc<Scripts>,
    /// Built once: every script call sends them, and the scan path should not allocate
    /// them per request.
    pointer: Key,
    prefix_arg: Value,
    keyspace_arg: Value,
}

impl std::fmt::Debug for RedisScanModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisScanModel")
            .field("prefix", &self.prefix)
            .field("keyspace", &self.keyspace)
            .finish_non_exhaustive()
    }
}

impl RedisScanModel {
    /// `prefix` starts every key the model writes (e.g. `"vt:"`).
    pub fn new(pool: Pool, prefix: String) -> Self {
        RedisScanModel {
            pool,
            pointer: Key::from(format!("{prefix}scan:active")),
            prefix_arg: Value::from(prefix.clone()),
            keyspace_arg: Value::from_static_str(""),
            prefix,
            keyspace: None,
            scripts: Arc::new(Scripts {
                apply: Script::new(APPLY_LUA),
                tag: Script::new(TAG_LUA),
                entity: Script::new(ENTITY_LUA),
            }),
        }
    }

    /// A handle on the same Redis that reads and writes `keyspace` instead of the active one
    /// (to build a keyspace before [`activate`](Self::activate) switches to it). A name may
    /// hold ASCII letters, digits, `-`, `_` and `.` (at most 64); with any other name every
    /// operation of the handle fails.
    pub fn in_keyspace(&self, keyspace: &str) -> RedisScanModel {
        RedisScanModel {
            keyspace: Some(keyspace.to_string()),
            keyspace_arg: Value::from(keyspace.to_string()),
            ..self.clone()
        }
    }

    /// The keyspace this handle is pinned to, if any (`None`: the active one).
    pub fn keyspace(&self) -> Option<&str> {
        self.keyspace.as_deref()
    }

    /// The key naming the active keyspace.
    pub fn pointer_key(&self) -> String {
        format!("{}scan:active", self.prefix)
    }

    /// The active keyspace (`"0"` until one is activated).
    pub async fn active_keyspace(&self) -> Result<String, ProjectionError> {
        let ks: Option<String> = self.pool.get(self.pointer_key()).await?;
        Ok(ks.unwrap_or_else(|| "0".to_string()))
    }

    /// Makes `keyspace` the active one: one `SET`, so every script sees either the old or
    /// the new keyspace, never a mix.
    pub async fn activate(&self, keyspace: &str) -> Result<(), ProjectionError> {
        check_keyspace(keyspace)?;
        let () = self
            .pool
            .set(self.pointer_key(), keyspace, None, None, false)
            .await?;
        Ok(())
    }

    /// Deletes every key of `keyspace` (`SCAN` + `UNLINK` in batches); refuses the active
    /// keyspace. Returns how many keys were removed.
    pub async fn drop_keyspace(&self, keyspace: &str) -> Result<u64, ProjectionError> {
        check_keyspace(keyspace)?;
        if self.active_keyspace().await? == keyspace {
            return Err(invalid(format!(
                "keyspace {keyspace:?} is the active one; activate another before dropping it"
            ))
            .into());
        }
        Ok(delete_prefix(&self.pool, &self.keyspace_base(keyspace)).await?)
    }

    /// Loads the scripts into Redis, so that the first scan is one round trip too.
    pub async fn prepare(&self) -> Result<(), ProjectionError> {
        for s in [&self.scripts.apply, &self.scripts.tag, &self.scripts.entity] {
            self.sha(s).await?;
        }
        Ok(())
    }

    /// Applies one event if it is the next version of its aggregate.
    pub async fn apply(&self, e: &EventEnvelope) -> Result<Applied, ProjectionError> {
        let Some(event) = decode(e)? else {
            return Ok(Applied::Ignored);
        };
        let reply = self
            .eval(&self.scripts.apply, || self.apply_args(e, &event))
            .await?;
        match reply.as_i64() {
            Some(0) => Ok(Applied::Applied),
            Some(-1) => Ok(Applied::Duplicate),
            Some(expected) if expected >= 1 => Ok(Applied::Gap { expected }),
            _ => Err(parse_error(format!("apply script answered {reply:?}")).into()),
        }
    }

    /// The apply script's arguments for `event` (decoded from `e`).
    fn apply_args(&self, e: &EventEnvelope, event: &ModelEvent) -> Result<Vec<Value>, RedisError> {
        let mut args = self.base_args()?;
        args.push(version_key(e).into());
        args.push(e.sequence.to_string().into());
        match event {
            ModelEvent::Product(
                id,
                ProductEvent::ProductRegistered {
                    gtin, name, brand, ..
                },
            ) => {
                push_all(
                    &mut args,
                    ["product", &id.to_string(), gtin.as_str(), name, brand],
                );
            }
            ModelEvent::Batch(id, b) => {
                let id = id.to_string();
                match b {
                    BatchEvent::BatchCreated {
                        factory_id,
                        product_id,
                        lot,
                        production_date,
                        sell_by,
                        intended_markets,
                    } => {
                        let markets: Vec<&str> =
                            intended_markets.iter().map(|m| m.as_str()).collect();
                        push_all(
                            &mut args,
                            [
                                "created",
                                &id,
                                &factory_id.to_string(),
                                &product_id.to_string(),
                                lot,
                                &production_date.to_string(),
                                &sell_by.map(|d| d.to_string()).unwrap_or_default(),
                                &markets.join(","),
                            ],
                        );
                    }
                    BatchEvent::BatchActivated => {
                        push_all(&mut args, ["status", &id, BatchStatus::Active.as_str()]);
                    }
                    BatchEvent::BatchClosed => {
                        push_all(&mut args, ["status", &id, BatchStatus::Closed.as_str()]);
                    }
                    BatchEvent::BatchRecalled { reason } => {
                        push_all(
                            &mut args,
                            ["status", &id, BatchStatus::Recalled.as_str(), reason],
                        );
                    }
                    BatchEvent::TagsIssued { tags, .. } => {
                        push_all(&mut args, ["issue", &id]);
                        args.reserve(tags.len() * 3);
                        for t in tags {
                            args.push(bucket_name(&t.tag_id).into());
                            args.push(tag_field(&t.tag_id));
                            args.push(match &t.serial {
                                None => "-".into(),
                                Some(s) => format!("={s}").into(),
                            });
                        }
                    }
                    BatchEvent::TagRevoked { tag_id, reason } => {
                        push_all(&mut args, ["revoke", &id]);
                        args.push(tag_field(tag_id));
                        args.push(reason.as_str().into());
                    }
                }
            }
            ModelEvent::ScanLog(id, ScanLogEvent::ScansRecorded { scans }) => {
                push_all(&mut args, ["scans", &id.to_string()]);
                args.reserve(scans.len() * 4);
                for s in scans {
                    args.push(bucket_name(&s.tag_id).into());
                    args.push(tag_field(&s.tag_id));
                    args.push(s.scan_number.to_string().into());
                    // 0 means "never scanned" in a tag value: clamp pre-1970 instants.
                    args.push(epoch_seconds(s.scanned_at).max(1).to_string().into());
                }
            }
        }
        Ok(args)
    }

    /// The scan hot path, one round trip (one `EVALSHA`): reads the tag with its batch and
    /// product, counts the scan and sets the first scan if unset. An unknown tag (or one
    /// whose batch or product is not in the model) is `None` and nothing is written.
    pub async fn scan(
        &self,
        tag_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<ScanHit>, ProjectionError> {
        let now = epoch_seconds(now).max(1).to_string();
        Ok(self
            .read_tag(tag_id, now)
            .await?
            .map(|(view, first_scan)| ScanHit { view, first_scan }))
    }

    /// Reads a tag without counting a scan.
    pub async fn lookup(&self, tag_id: Uuid) -> Result<Option<TagView>, ProjectionError> {
        Ok(self
            .read_tag(tag_id, String::new())
            .await?
            .map(|(view, _)| view))
    }

    /// A batch as the model knows it.
    pub async fn batch(&self, batch_id: Uuid) -> Result<Option<BatchView>, ProjectionError> {
        let reply = self
            .eval(&self.scripts.entity, || {
                let mut args = self.base_args()?;
                push_all(&mut args, ["b", &batch_id.to_string()]);
                Ok(args)
            })
            .await?;
        if reply.is_null() {
            return Ok(None);
        }
        let mut f = Fields::new(reply, 9)?;
        Ok(Some(f.batch()?))
    }

    /// A product as the model knows it.
    pub async fn product(&self, product_id: Uuid) -> Result<Option<ProductView>, ProjectionError> {
        let reply = self
            .eval(&self.scripts.entity, || {
                let mut args = self.base_args()?;
                push_all(&mut args, ["p", &product_id.to_string()]);
                Ok(args)
            })
            .await?;
        if reply.is_null() {
            return Ok(None);
        }
        let mut f = Fields::new(reply, 3)?;
        Ok(Some(f.product(product_id)?))
    }

    async fn read_tag(
        &self,
        tag_id: Uuid,
        now: String,
    ) -> Result<Option<(TagView, bool)>, ProjectionError> {
        let now = Value::from(now);
        let reply = self
            .eval(&self.scripts.tag, || {
                let mut args = self.base_args_with(3)?;
                args.push(bucket_name(&tag_id).into());
                args.push(tag_field(&tag_id));
                args.push(now.clone());
                Ok(args)
            })
            .await?;
        if reply.is_null() {
            return Ok(None);
        }
        let mut f = Fields::new(reply, 17)?;
        let scan_count = f.number("scan count")?;
        let first = f.number("first scan")?;
        let first_scan_at = match first {
            0 => None,
            secs => Some(
                i64::try_from(secs)
                    .ok()
                    .and_then(from_epoch_seconds)
                    .ok_or_else(|| parse_error(format!("first scan {secs} is not a time")))?,
            ),
        };
        let serial = f.optional();
        let revoked = f.optional();
        let first_scan = f.number("first-scan flag")? == 1;
        let batch = f.batch()?;
        let product_id = f
            .product_id
            .ok_or_else(|| parse_error("the batch names no product".to_string()))?;
        let product = f.product(product_id)?;
        Ok(Some((
            TagView {
                tag_id,
                serial,
                revoked,
                first_scan_at,
                scan_count,
                batch,
                product,
            },
            first_scan,
        )))
    }

    fn keyspace_base(&self, keyspace: &str) -> String {
        format!("{}scan:{keyspace}:", self.prefix)
    }

    /// ARGV[1] and ARGV[2] of every script.
    fn base_args(&self) -> Result<Vec<Value>, RedisError> {
        self.base_args_with(8)
    }

    /// ARGV[1] and ARGV[2], with room for `more`.
    fn base_args_with(&self, more: usize) -> Result<Vec<Value>, RedisError> {
        if let Some(ks) = &self.keyspace {
            check_keyspace(ks)?;
        }
        let mut args = Vec::with_capacity(2 + more);
        args.push(self.prefix_arg.clone());
        args.push(self.keyspace_arg.clone());
        Ok(args)
    }

    async fn sha(&self, script: &Script) -> Result<Str, RedisError> {
        script
            .sha
            .get_or_try_init(|| async {
                self.pool
                    .script_load::<String, _>(script.lua.as_str())
                    .await
                    .map(Str::from)
            })
            .await
            .cloned()
    }

    /// Runs `script` with the arguments `args` builds: once, or twice when the server has
    /// lost the script (building them again is cheaper than keeping a copy of every call's
    /// arguments for that rare case: an issue of 10,000 tags has 30,000).
    async fn eval(
        &self,
        script: &Script,
        args: impl Fn() -> Result<Vec<Value>, RedisError>,
    ) -> Result<Value, RedisError> {
        let sha = self.sha(script).await?;
        match self
            .pool
            .evalsha::<Value, _, _, _>(sha, &self.pointer, args()?)
            .await
        {
            // The server lost its script cache (restart, failover, SCRIPT FLUSH): EVAL runs
            // the script and caches it again under the same SHA.
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                self.pool
                    .eval::<Value, _, _, _>(script.lua.as_str(), &self.pointer, args()?)
                    .await
            }
            other => other,
        }
    }
}

fn push_all<'a>(args: &mut Vec<Value>, items: impl IntoIterator<Item = &'a str>) {
    args.extend(items.into_iter().map(|s| Value::from(s.to_string())));
}

/// The tag's bucket: 16 bits of FNV-1a over its bytes, as 4 hex digits.
pub(crate) fn bucket(tag_id: &Uuid) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in tag_id.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    ((h >> 16) ^ (h & 0xffff)) as u16
}

fn bucket_name(tag_id: &Uuid) -> String {
    format!("{:04x}", bucket(tag_id))
}

fn tag_field(tag_id: &Uuid) -> Value {
    Value::Bytes(Bytes::copy_from_slice(tag_id.as_bytes()))
}

fn check_keyspace(ks: &str) -> Result<(), RedisError> {
    let ok = !ks.is_empty()
        && ks.len() <= 64
        && ks
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "keyspace name {ks:?} must be 1 to 64 ASCII letters, digits, '-', '_' or '.'"
        )))
    }
}

fn invalid(msg: String) -> RedisError {
    RedisError::new(ErrorKind::InvalidArgument, msg)
}

fn parse_error(msg: String) -> RedisError {
    RedisError::new(ErrorKind::Parse, format!("scan model: {msg}"))
}

/// The fields of a script reply, read in order.
struct Fields {
    values: std::vec::IntoIter<Value>,
    product_id: Option<Uuid>,
}

impl Fields {
    fn new(reply: Value, expected: usize) -> Result<Fields, RedisError> {
        let values = reply.into_array();
        if values.len() != expected {
            return Err(parse_error(format!(
                "a reply of {} fields, expected {expected}",
                values.len()
            )));
        }
        Ok(Fields {
            values: values.into_iter(),
            product_id: None,
        })
    }

    fn optional(&mut self) -> Option<String> {
        match self.values.next() {
            None | Some(Value::Null) => None,
            Some(v) => v.as_string(),
        }
    }

    fn required(&mut self, what: &str) -> Result<String, RedisError> {
        self.optional()
            .ok_or_else(|| parse_error(format!("{what} is missing")))
    }

    fn number(&mut self, what: &str) -> Result<u64, RedisError> {
        let s = self.required(what)?;
        s.parse()
            .map_err(|_| parse_error(format!("{what} {s:?} is not a number")))
    }

    fn uuid(&mut self, what: &str) -> Result<Uuid, RedisError> {
        let s = self.required(what)?;
        Uuid::parse_str(&s).map_err(|_| parse_error(format!("{what} {s:?} is not a UUID")))
    }

    fn date(&mut self, what: &str) -> Result<Option<NaiveDate>, RedisError> {
        match self.optional() {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|_| parse_error(format!("{what} {s:?} is not a date"))),
        }
    }

    /// Nine fields: id, factory, product, lot, status, production date, sell-by, markets,
    /// recall reason.
    fn batch(&mut self) -> Result<BatchView, RedisError> {
        let batch_id = self.uuid("batch id")?;
        let factory_id = self.uuid("factory id")?;
        self.product_id = Some(self.uuid("product id")?);
        let lot = self.required("lot")?;
        let status = self.required("status")?;
        let production_date = self
            .date("production date")?
            .ok_or_else(|| parse_error("production date is missing".to_string()))?;
        let sell_by = self.date("sell-by date")?;
        let markets = self.optional().unwrap_or_default();
        let intended_markets = markets
            .split(',')
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect();
        let recall_reason = self.optional();
        Ok(BatchView {
            batch_id,
            factory_id,
            lot,
            status,
            production_date,
            sell_by,
            intended_markets,
            recall_reason,
        })
    }

    /// Three fields: GTIN, name, brand.
    fn product(&mut self, product_id: Uuid) -> Result<ProductView, RedisError> {
        Ok(ProductView {
            product_id,
            gtin: self.required("gtin")?,
            name: self.required("name")?,
            brand: self.required("brand")?,
        })
    }
}

#[cfg(test)]
mod tests;
mod versions;

//! How the tags of a `TagsIssued` event are stored (ADR 0013).
//!
//! Version 2, written since then, packs them in columns:
//!
//! ```json
//! {"ids": "<base64>", "serials": ["SN-1", null, ...]}
//! ```
//!
//! `ids` is standard base64 (RFC 4648, padded) of the tag ids' 16 bytes each (RFC 9562 byte
//! order, as Postgres' `uuid_send` gives them), in the order the tags were issued;
//! `serials`, absent when no tag has one, holds each tag's serial or `null`, in the same
//! order. Version 1 was an array of `{"tag_id": ..., "serial": ...}` objects: about twice
//! the bytes for every writer, reader and bus message. Both are read, so events stored
//! before the change stay readable as they are.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use uuid::Uuid;

use super::IssuedTag;

/// Bytes of one id in `ids`.
const ID_BYTES: usize = 16;

#[derive(Serialize)]
struct Packed<'a> {
    ids: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    serials: Option<Serials<'a>>,
}

struct Serials<'a>(&'a [IssuedTag]);

impl Serialize for Serials<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|t| t.serial.as_deref()))
    }
}

pub(super) fn serialize<S: Serializer>(tags: &[IssuedTag], s: S) -> Result<S::Ok, S::Error> {
    let mut bytes = Vec::with_capacity(tags.len() * ID_BYTES);
    for t in tags {
        bytes.extend_from_slice(t.tag_id.as_bytes());
    }
    Packed {
        ids: STANDARD.encode(&bytes),
        serials: tags
            .iter()
            .any(|t| t.serial.is_some())
            .then_some(Serials(tags)),
    }
    .serialize(s)
}

pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IssuedTag>, D::Error> {
    d.deserialize_any(TagsVisitor)
}

struct TagsVisitor;

/// Fields it does not know are ignored (a tolerant reader), so that a later version may add
/// some without breaking readers of this one.
#[derive(Deserialize)]
struct PackedOwned {
    ids: String,
    #[serde(default)]
    serials: Option<Vec<Option<String>>>,
}

impl<'de> Visitor<'de> for TagsVisitor {
    type Value = Vec<IssuedTag>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the tags of TagsIssued: {\"ids\", \"serials\"} (version 2) or an array of {\"tag_id\", \"serial\"} (version 1)")
    }

    /// Version 1.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut tags = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(tag) = seq.next_element()? {
            tags.push(tag);
        }
        Ok(tags)
    }

    /// Version 2.
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let packed = PackedOwned::deserialize(de::value::MapAccessDeserializer::new(map))?;
        unpack(&packed.ids, packed.serials).map_err(de::Error::custom)
    }
}

fn unpack(ids: &str, serials: Option<Vec<Option<String>>>) -> Result<Vec<IssuedTag>, String> {
    let bytes = STANDARD
        .decode(ids)
        .map_err(|e| format!("`ids` is not standard base64: {e}"))?;
    if bytes.len() % ID_BYTES != 0 {
        return Err(format!(
            "`ids` holds {} bytes, not a whole number of {ID_BYTES}-byte ids",
            bytes.len()
        ));
    }
    let count = bytes.len() / ID_BYTES;
    let mut serials = match serials {
        Some(s) if s.len() != count => {
            return Err(format!(
                "`serials` has {} entries for {count} ids; it must have one per id",
                s.len()
            ));
        }
        Some(s) => s.into_iter(),
        None => Vec::new().into_iter(),
    };
    Ok(bytes
        .chunks_exact(ID_BYTES)
        .map(|id| IssuedTag {
            // `chunks_exact` gives slices of exactly ID_BYTES.
            tag_id: Uuid::from_slice(id).unwrap_or_default(),
            serial: serials.next().flatten(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Holder {
        #[serde(with = "super")]
        tags: Vec<IssuedTag>,
    }

    fn tag(n: u128, serial: Option<&str>) -> IssuedTag {
        IssuedTag {
            tag_id: Uuid::from_u128(n),
            serial: serial.map(str::to_string),
        }
    }

    #[test]
    fn ids_are_packed_in_order_and_serials_kept_beside_them() {
        let tags = vec![
            tag(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10, Some("SN-1")),
            tag(0xffff_0000_0000_0000_0000_0000_0000_0001, None),
        ];
        let value = serde_json::to_value(Holder { tags: tags.clone() }).unwrap();
        let mut bytes: Vec<u8> = (1..=16).collect();
        bytes.extend([0xff, 0xff].into_iter().chain([0; 13]).chain([1]));
        assert_eq!(
            value,
            json!({"tags": {"ids": STANDARD.encode(&bytes), "serials": ["SN-1", null]}})
        );
        assert_eq!(serde_json::from_value::<Holder>(value).unwrap().tags, tags);
    }

    #[test]
    fn serials_are_left_out_when_no_tag_has_one() {
        let tags = vec![tag(1, None), tag(2, None)];
        let value = serde_json::to_value(Holder { tags: tags.clone() }).unwrap();
        assert_eq!(value["tags"].as_object().unwrap().len(), 1, "{value}");
        assert_eq!(serde_json::from_value::<Holder>(value).unwrap().tags, tags);
        let empty = serde_json::to_value(Holder { tags: vec![] }).unwrap();
        assert_eq!(empty, json!({"tags": {"ids": ""}}));
        assert!(
            serde_json::from_value::<Holder>(empty)
                .unwrap()
                .tags
                .is_empty()
        );
    }

    #[test]
    fn version_1_arrays_still_read() {
        let id = Uuid::from_u128(7);
        let value = json!({"tags": [{"tag_id": id, "serial": "A"}, {"tag_id": id}]});
        let read: Holder = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(read.tags, vec![tag(7, Some("A")), tag(7, None)]);
        // From text too (the relay and the store read text, the bus reads values).
        let from_text: Holder = serde_json::from_str(&value.to_string()).unwrap();
        assert_eq!(from_text.tags, read.tags);
    }

    #[test]
    fn malformed_packs_are_refused_with_the_reason() {
        let cases = [
            (json!({"ids": "not base64!"}), "not standard base64"),
            (
                json!({"ids": STANDARD.encode([0u8; 15])}),
                "not a whole number of 16-byte ids",
            ),
            (
                json!({"ids": STANDARD.encode([0u8; 32]), "serials": ["x"]}),
                "`serials` has 1 entries for 2 ids",
            ),
            (json!({"serials": []}), "missing field `ids`"),
            (json!("text"), "the tags of TagsIssued"),
        ];
        for (tags, reason) in cases {
            let err = serde_json::from_value::<Holder>(json!({ "tags": tags })).unwrap_err();
            assert!(err.to_string().contains(reason), "{tags}: {err}");
        }
    }

    proptest! {
        #[test]
        fn any_tags_round_trip_through_text(
            tags in proptest::collection::vec(
                (any::<u128>(), proptest::option::of("[A-Za-z0-9 \\-\"\\\\é]{1,12}")),
                0..40,
            )
        ) {
            let tags: Vec<IssuedTag> = tags
                .into_iter()
                .map(|(id, serial)| IssuedTag { tag_id: Uuid::from_u128(id), serial })
                .collect();
            let text = serde_json::to_string(&Holder { tags: tags.clone() }).unwrap();
            let read: Holder = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(read.tags, tags);
        }
    }
}

//! Reading messages the way Go's `encoding/json` reads them: a JSON key matches a struct
//! field whatever its case (`Authtoken`, `AuthToken` and `authtoken` are one field). ngrok's
//! Go clients send `Authtoken` where ngrok-rust sends `AuthToken`; ngrok's own edge accepts
//! both because it is written in Go. Only struct fields fold: the keys of maps (labels,
//! traffic policies, free-form options) are data and stay as they were sent.
//!
//! The keys of the message that matched no field are collected, so the caller can refuse
//! what it would otherwise drop.

use serde::de::{self, DeserializeSeed, Deserializer as _, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Decodes `value` into `T`, matching struct fields case-insensitively. Returns the message
/// and the paths of the keys that matched no field (`Extra.LegNumber`).
pub fn from_value<T: de::DeserializeOwned>(value: Value) -> Result<(T, Vec<String>), serde_json::Error> {
    let mut unknown = Vec::new();
    let t = T::deserialize(Folded { value, path: String::new(), unknown: &mut unknown })?;
    Ok((t, unknown))
}

/// A JSON value whose struct keys fold to the field names the target asks for.
struct Folded<'u> {
    value: Value,
    /// Where this value sits in the message, for naming unknown keys.
    path: String,
    unknown: &'u mut Vec<String>,
}

impl<'de> de::Deserializer<'de> for Folded<'_> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.value.deserialize_any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.value {
            // Go reads `null` as the zero value: an empty list (ngrok-go sends `"Bindings": null`).
            Value::Null => visitor.visit_seq(FoldedSeq {
                items: Vec::new().into_iter(),
                path: self.path,
                index: 0,
                unknown: self.unknown,
            }),
            Value::Array(items) => {
                let path = self.path;
                visitor.visit_seq(FoldedSeq {
                    items: items.into_iter(),
                    path,
                    index: 0,
                    unknown: self.unknown,
                })
            }
            other => other.deserialize_seq(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let map = match self.value {
            Value::Object(map) => map,
            // `null` for an object: all of its fields keep their zero values.
            Value::Null => Map::new(),
            other => return other.deserialize_any(visitor),
        };
        let mut folded = Map::with_capacity(map.len());
        for (key, value) in map {
            let name = match fields.iter().find(|f| f.eq_ignore_ascii_case(&key)) {
                Some(f) => (*f).to_owned(),
                None => {
                    self.unknown.push(join(&self.path, &key));
                    key
                }
            };
            if folded.contains_key(&name) {
                // `AuthToken` and `Authtoken` in one message: which one is meant is unclear.
                return Err(de::Error::custom(format_args!("the key {name:?} appears twice (in any case)")));
            }
            folded.insert(name, value);
        }
        visitor.visit_map(FoldedMap {
            entries: folded.into_iter(),
            value: None,
            path: self.path,
            unknown: self.unknown,
        })
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Null => visitor.visit_str(""),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Null => visitor.visit_bool(false),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Null => Value::Object(Map::new()).deserialize_map(visitor),
            other => other.deserialize_map(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        char bytes byte_buf unit unit_struct tuple tuple_struct enum identifier ignored_any
    }

    // Numbers: `null` is zero, as in Go.
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number(v)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number(v)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number(v)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number(v)
    }
    fn deserialize_i128<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number(v)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number(v)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number(v)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number(v)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number(v)
    }
    fn deserialize_u128<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number(v)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number(v)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number(v)
    }
}

impl Folded<'_> {
    fn number<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, serde_json::Error> {
        match self.value {
            Value::Null => visitor.visit_u64(0),
            other => other.deserialize_any(visitor),
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

struct FoldedMap<'u> {
    entries: serde_json::map::IntoIter,
    value: Option<(String, Value)>,
    path: String,
    unknown: &'u mut Vec<String>,
}

impl<'de> MapAccess<'de> for FoldedMap<'_> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Self::Error> {
        let Some((key, value)) = self.entries.next() else { return Ok(None) };
        let k = seed.deserialize(key.as_str().into_deserializer()).map(Some);
        self.value = Some((key, value));
        k
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Self::Error> {
        let (key, value) = self.value.take().ok_or_else(|| de::Error::custom("a value without its key"))?;
        seed.deserialize(Folded { value, path: join(&self.path, &key), unknown: self.unknown })
    }
}

struct FoldedSeq<'u> {
    items: std::vec::IntoIter<Value>,
    path: String,
    index: usize,
    unknown: &'u mut Vec<String>,
}

impl<'de> SeqAccess<'de> for FoldedSeq<'_> {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        let Some(value) = self.items.next() else { return Ok(None) };
        let path = format!("{}[{}]", self.path, self.index);
        self.index += 1;
        seed.deserialize(Folded { value, path, unknown: self.unknown }).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Auth, Bind};

    #[test]
    fn keys_match_fields_in_any_case_and_the_rest_is_reported() {
        let go = serde_json::json!({
            "Version": ["2"], "ClientId": "",
            "Extra": {"OS": "linux", "Authtoken": "tok", "Version": "2.3.41", "Fingerprint": null, "Teleport": 1}, "Later": true
        });
        let (a, unknown): (Auth, _) = from_value(go).unwrap();
        assert_eq!(a.extra.authtoken.0, "tok");
        assert_eq!(a.extra.os, "linux");
        assert_eq!(unknown, ["Later", "Extra.Teleport"]);
        let shouting = serde_json::json!({"VERSION": ["3"], "extra": {"authtoken": "t2", "os": "darwin"}});
        let (a, _): (Auth, _) = from_value(shouting).unwrap();
        assert_eq!(
            (a.version, a.extra.authtoken.0, a.extra.os),
            (vec!["3".to_owned()], "t2".to_owned(), "darwin".to_owned())
        );
    }

    #[test]
    fn a_key_given_twice_in_different_cases_is_refused() {
        let both = serde_json::json!({"Extra": {"AuthToken": "a", "Authtoken": "b"}});
        let e = from_value::<Auth>(both).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn null_is_the_zero_value_as_in_go() {
        let go = serde_json::json!({"Id": null, "Proto": "https", "Extra": {"Bindings": null, "PoolingEnabled": null, "Name": null}, "Opts": null});
        let (b, _): (Bind, _) = from_value(go).unwrap();
        assert!(b.client_id.is_empty() && b.extra.bindings.is_empty() && !b.extra.pooling_enabled);
        let (a, _): (Auth, _) = from_value(
            serde_json::json!({"Extra": {"HeartbeatInterval": null, "StopUnsupportedError": null}}),
        )
        .unwrap();
        assert_eq!(a.extra.heartbeat_interval, 0);
        assert_eq!(a.extra.stop_unsupported_error, None, "an Option stays None");
    }

    #[test]
    fn data_keys_are_not_folded() {
        let bind = serde_json::json!({"id": "x", "proto": "https", "opts": {"Hostname": "h"}, "extra": {"name": "web"}});
        let (b, _): (Bind, _) = from_value(bind).unwrap();
        assert_eq!(b.client_id, "x");
        assert_eq!(b.opts["Hostname"], "h", "Opts is raw JSON: kept as sent");
    }
}

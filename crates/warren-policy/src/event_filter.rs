//! CEL filters of event subscription sources: an expression over `ev`, the event's object
//! (`ev.http.response.status_code >= 500`), checked when the source is created and evaluated
//! with the same step budget and panic guard as traffic policy expressions.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map, Value};

use crate::cost::Compiled;

/// A compiled filter.
pub struct EventFilter {
    compiled: Compiled,
    source: String,
}

impl std::fmt::Debug for EventFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventFilter({:?})", self.source)
    }
}

impl EventFilter {
    /// Compiles `source`; it may name only `ev`.
    pub fn compile(source: &str) -> Result<EventFilter, String> {
        let program =
            cel::Program::compile(source).map_err(|e| format!("filter {source:?} does not parse: {e}"))?;
        for v in program.references().variables() {
            if v != "ev" {
                return Err(format!("filter {source:?} uses the unknown variable {v:?}; events are `ev`"));
            }
        }
        Ok(EventFilter { compiled: Compiled::new(program, source)?, source: source.to_owned() })
    }

    /// Whether the event whose object is `ev` passes. An expression that fails (a missing
    /// field, a wrong type) or is not a boolean lets nothing through.
    pub fn matches(&self, ev: &serde_json::Value) -> bool {
        let mut ctx = crate::vars::root().new_inner_scope();
        ctx.add_variable_from_value("ev", to_cel(ev));
        matches!(self.compiled.execute(&ctx), Ok(Value::Bool(true)))
    }
}

fn to_cel(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            (None, Some(u), _) => Value::UInt(u),
            (_, _, f) => Value::Float(f.unwrap_or(0.0)),
        },
        J::String(s) => Value::String(Arc::new(s.clone())),
        J::Array(a) => Value::List(Arc::new(a.iter().map(to_cel).collect())),
        J::Object(o) => {
            let m: HashMap<Key, Value> = o.iter().map(|(k, v)| (Key::from(k.as_str()), to_cel(v))).collect();
            Value::Map(Map { map: Arc::new(m) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_see_the_event_object_and_fail_closed() {
        let ev =
            serde_json::json!({"http": {"response": {"status_code": 503}, "request": {"method": "GET"}}});
        assert!(EventFilter::compile("ev.http.response.status_code >= 500").unwrap().matches(&ev));
        assert!(!EventFilter::compile("ev.http.request.method == 'POST'").unwrap().matches(&ev));
        assert!(
            !EventFilter::compile("ev.nope.field == 1").unwrap().matches(&ev),
            "a missing field lets nothing through"
        );
        assert!(!EventFilter::compile("'not a bool'").unwrap().matches(&ev));
        let e = EventFilter::compile("req.method == 'GET'").unwrap_err();
        assert!(e.contains("unknown variable \"req\""), "{e}");
        assert!(EventFilter::compile("ev.http.(").is_err());
    }
}

//! Where a traffic-policy problem is in the user's own YAML file.
//!
//! Policies are compiled from JSON values, which have no positions; the user wrote YAML. This
//! reads the same text once more as a tree of nodes that know their line and column, and walks
//! it along the path a problem names (a phase, a rule, an expression or action), so the error
//! says `file:line:column` of what the user typed rather than a position in converted JSON.

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// One step from a node to a child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    /// A mapping's key.
    Key(String),
    /// A sequence's item.
    Index(usize),
}

/// What a policy check found, with where it is in the document when that is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyProblem {
    /// The message, as `check_policy` words it.
    pub msg: String,
    /// The path from the document's root to the part at fault (empty when unknown).
    pub path: Vec<Seg>,
    /// A key the document must not have (`unknown field`), to find when there is no path.
    pub unknown_key: Option<String>,
}

impl PolicyProblem {
    /// `(line, column)` of the problem in `text`, the YAML holding the document at `base`
    /// (an empty `base` when the text is the document itself).
    pub fn position(&self, text: &str, base: &[Seg]) -> Option<(u64, u64)> {
        let root: Spanned<Node> = serde_saphyr::from_str(text).ok()?;
        let mut node = &root;
        for seg in base {
            node = node.value.child(seg)?;
        }
        if let Some(key) = &self.unknown_key {
            return node.value.find_key(key).map(|n| (n.referenced.line(), n.referenced.column()));
        }
        if self.path.is_empty() {
            return None;
        }
        let path = legacy_phase(&node.value, &self.path);
        let mut best = None;
        for seg in &path {
            match node.value.child(seg) {
                Some(n) => {
                    node = n;
                    best = Some((n.referenced.line(), n.referenced.column()));
                }
                None => break,
            }
        }
        best
    }
}

/// A top-level key, where it was written (line, column), and its value.
pub type TopLevelKey = (String, (u64, u64), serde_json::Value);

/// The keys of a YAML document's top-level mapping, each with where it was written and its
/// value: for files whose keys are checked one by one (the edge's config).
pub fn top_level(text: &str) -> Result<Vec<TopLevelKey>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let root: Spanned<Node> = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let values: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let (Node::Map(keys), Some(values)) = (&root.value, values.as_object()) else {
        return Err("expected a mapping of keys to values".into());
    };
    Ok(keys
        .iter()
        .map(|(k, _)| {
            let v = values.get(&k.value.0).cloned().unwrap_or(serde_json::Value::Null);
            (k.value.0.clone(), (k.referenced.line(), k.referenced.column()), v)
        })
        .collect())
}

/// The path from a `warren_policy` compile error: the phase, the rule and the item at fault.
pub(crate) fn error_path(e: &warren_policy::PolicyError) -> Vec<Seg> {
    match e {
        warren_policy::PolicyError::Rule { phase, index, item, .. } => {
            let mut p = vec![Seg::Key((*phase).to_owned()), Seg::Index(*index)];
            match item {
                Some(warren_policy::RuleItem::Expression(i)) => {
                    p.extend([Seg::Key("expressions".into()), Seg::Index(*i)]);
                }
                Some(warren_policy::RuleItem::Action(i)) => {
                    p.extend([Seg::Key("actions".into()), Seg::Index(*i)])
                }
                None => {}
            }
            p
        }
        warren_policy::PolicyError::Syntax(_) => Vec::new(),
    }
}

/// The name in serde's "unknown field `x`" or "unknown variant `x`", if the message has one.
pub(crate) fn unknown_key(msg: &str) -> Option<String> {
    let rest = msg.split_once("unknown field `")?.1;
    rest.split_once('`').map(|(k, _)| k.to_owned())
}

/// Rules of `inbound`/`outbound` (ngrok's older names) come after the new phase's own rules
/// when compiled; point into the key the user wrote.
fn legacy_phase(doc: &Node, path: &[Seg]) -> Vec<Seg> {
    let (Some(Seg::Key(phase)), Some(Seg::Index(i))) = (path.first(), path.get(1)) else {
        return path.to_vec();
    };
    let own = doc.child(&Seg::Key(phase.clone())).map_or(0, |n| n.value.len());
    let legacy = match phase.as_str() {
        "on_http_request" | "on_tcp_connect" => "inbound",
        "on_http_response" => "outbound",
        _ => return path.to_vec(),
    };
    if *i < own {
        return path.to_vec();
    }
    let mut p = vec![Seg::Key(legacy.into()), Seg::Index(i - own)];
    p.extend_from_slice(&path[2..]);
    p
}

/// A YAML node that remembers where each child was written.
enum Node {
    /// Keys with where each key was written, and their values.
    Map(Vec<(Spanned<KeyText>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar,
}

impl Node {
    fn child(&self, seg: &Seg) -> Option<&Spanned<Node>> {
        match (self, seg) {
            (Node::Map(m), Seg::Key(k)) => m.iter().find(|(key, _)| key.value.0 == *k).map(|(_, v)| v),
            (Node::Seq(s), Seg::Index(i)) => s.get(*i),
            _ => None,
        }
    }

    fn len(&self) -> usize {
        match self {
            Node::Seq(s) => s.len(),
            _ => 0,
        }
    }

    /// The first key named `key`, depth first.
    fn find_key(&self, key: &str) -> Option<&Spanned<KeyText>> {
        match self {
            Node::Map(m) => {
                m.iter().find_map(|(k, v)| if k.value.0 == key { Some(k) } else { v.value.find_key(key) })
            }
            Node::Seq(s) => s.iter().find_map(|v| v.value.find_key(key)),
            Node::Scalar => None,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut out = Vec::new();
        while let Some(k) = map.next_key::<Spanned<KeyText>>()? {
            out.push((k, map.next_value::<Spanned<Node>>()?));
        }
        Ok(Node::Map(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<Spanned<Node>>()? {
            out.push(v);
        }
        Ok(Node::Seq(out))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
}

/// A mapping key as text, whatever scalar it was written as.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeyText, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping key")
            }
            fn visit_str<E>(self, s: &str) -> Result<KeyText, E> {
                Ok(KeyText(s.to_owned()))
            }
            fn visit_bool<E>(self, b: bool) -> Result<KeyText, E> {
                Ok(KeyText(b.to_string()))
            }
            fn visit_i64<E>(self, n: i64) -> Result<KeyText, E> {
                Ok(KeyText(n.to_string()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<KeyText, E> {
                Ok(KeyText(n.to_string()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<KeyText, E> {
                Ok(KeyText(n.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "version: 3
endpoints:
  - name: web
    upstream:
      url: 80
    traffic_policy:
      on_http_request:
        - name: fine
          actions:
            - type: deny
        - expressions:
            - \"req.urlpath == '/'\"
          actions:
            - type: deny
            - type: denny
      inbound:
        - actions:
            - type: custom-response
";

    fn base() -> Vec<Seg> {
        vec![Seg::Key("endpoints".into()), Seg::Index(0), Seg::Key("traffic_policy".into())]
    }

    fn at(path: Vec<Seg>) -> Option<(u64, u64)> {
        PolicyProblem { msg: String::new(), path, unknown_key: None }.position(FILE, &base())
    }

    #[test]
    fn rules_expressions_and_actions_are_found_where_they_were_written() {
        let k = |s: &str| Seg::Key(s.into());
        let rule = |i| vec![k("on_http_request"), Seg::Index(i)];
        assert_eq!(at([rule(1), vec![k("actions"), Seg::Index(1)]].concat()).map(|p| p.0), Some(15));
        assert_eq!(at([rule(1), vec![k("expressions"), Seg::Index(0)]].concat()).map(|p| p.0), Some(12));
        // Rules past the phase's own come from `inbound`, as the compiler appends them.
        assert_eq!(at([rule(2), vec![k("actions"), Seg::Index(0)]].concat()).map(|p| p.0), Some(18));
        // A path that leaves the document points at the deepest part that exists.
        assert_eq!(at([rule(1), vec![k("actions"), Seg::Index(9)]].concat()).map(|p| p.0), Some(14));
        assert_eq!(at(Vec::new()), None);
    }

    #[test]
    fn an_unknown_key_is_found_by_name_below_the_document() {
        let text = "on_http_request:\n  - actoins:\n      - type: deny\n";
        let p = PolicyProblem {
            msg: String::new(),
            path: Vec::new(),
            unknown_key: unknown_key("unknown field `actoins`, expected one of"),
        };
        assert_eq!(p.position(text, &[]).map(|p| p.0), Some(2));
        assert_eq!(unknown_key("missing field `type`"), None);
    }

    #[test]
    fn compile_errors_name_their_rule_and_item() {
        let text = "on_http_request:\n  - actions:\n      - type: deny\n  - actions:\n      - type: deny\n      - type: denny\n";
        let doc = warren_policy::Document::parse(text).unwrap();
        let err =
            warren_policy::Policy::compile(&doc, "https", &warren_policy::CompileEnv::default()).unwrap_err();
        let path = error_path(&err);
        let k = |s: &str| Seg::Key(s.into());
        assert_eq!(path, [k("on_http_request"), Seg::Index(1), k("actions"), Seg::Index(1)], "{err}");
        let p = PolicyProblem { msg: err.to_string(), path, unknown_key: None };
        assert_eq!(p.position(text, &[]).map(|p| p.0), Some(6));
    }
}

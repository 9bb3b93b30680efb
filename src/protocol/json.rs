//! CONNECT and INFO JSON, read the way nats-server (Go `encoding/json`) reads it.
//!
//! Go matches object keys to struct fields case-insensitively and lets the last duplicate
//! win. natsguard reads keys case-insensitively too, but refuses an object with two keys
//! that Go would fold together, so there is only one way to read it. Unknown keys are kept.

use super::error::{JsonProblem, ProtocolError};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::fmt;

/// A JSON object that keeps its keys in order.
#[derive(Clone, Debug, PartialEq)]
pub struct JsonObject {
    entries: Vec<(String, Value)>,
    /// Each entry's key folded, folded once: every lookup compares with all of them.
    folded: Vec<String>,
}

/// Go's key folding (encoding/json `foldName`): ASCII letters upper-cased, other
/// characters mapped through `ToUpper(ToLower(r))`, so `ſ` folds like `s` and `K` (Kelvin)
/// like `k`.
fn fold_key(key: &str) -> String {
    key.chars().map(fold_char).collect()
}

fn fold_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_uppercase();
    }
    let lower = single(c.to_lowercase()).unwrap_or(c);
    single(lower.to_uppercase()).unwrap_or(lower)
}

/// Go's simple case mappings are one rune to one rune; a multi-rune mapping keeps the rune.
fn single(mut mapping: impl Iterator<Item = char>) -> Option<char> {
    let first = mapping.next()?;
    mapping.next().is_none().then_some(first)
}

impl JsonObject {
    /// Parses a JSON object: trailing non-whitespace, other JSON values and keys that
    /// collide under Go's folding are refused.
    pub fn parse(text: &str) -> Result<Self, JsonProblem> {
        serde_json::from_str::<ObjectOrProblem>(text)
            .map_err(|_| JsonProblem::Syntax)
            .and_then(|parsed| parsed.0)
    }

    fn position(&self, key: &str) -> Option<usize> {
        // Folded as it is compared: most lookups are of constant names, and miss.
        self.folded
            .iter()
            .position(|name| name.chars().eq(key.chars().map(fold_char)))
    }

    /// The value under `key` (matched like Go), treating `null` as absent as Go does.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.position(key)
            .map(|at| &self.entries[at].1)
            .filter(|value| !value.is_null())
    }

    /// Whether `key` is present at all, even as `null`.
    pub fn contains(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// Removes `key` (matched like Go) and returns its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.position(key).map(|at| {
            self.folded.remove(at);
            self.entries.remove(at).1
        })
    }

    /// Replaces the value under `key` (matched like Go; the key is renamed to `key`), or
    /// appends it.
    pub fn set(&mut self, key: &str, value: Value) {
        match self.position(key) {
            Some(at) => self.entries[at] = (key.to_owned(), value),
            None => {
                self.folded.push(fold_key(key));
                self.entries.push((key.to_owned(), value));
            }
        }
    }

    pub fn entries(&self) -> &[(String, Value)] {
        &self.entries
    }

    /// Writes the object compactly, escaped like Go's `json.Marshal`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (key, value)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_string(key, out);
            out.push(b':');
            write_value(value, out);
        }
        out.push(b'}');
    }

    /// Type checks for fields whose Go type is known: `null` is always allowed (Go leaves
    /// the field unchanged).
    fn check_types(&self, fields: &[(&'static str, FieldType)]) -> Result<(), JsonProblem> {
        for (name, field_type) in fields {
            if let Some(value) = self.get(name) {
                if !field_type.accepts(value) {
                    return Err(JsonProblem::WrongType(name));
                }
            }
        }
        Ok(())
    }

    fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }

    fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
}

#[derive(Clone, Copy)]
enum FieldType {
    Bool,
    String,
    /// Go `int`: an integer literal (no fraction or exponent) that fits in 64 bits.
    Int,
    /// Go `int32`.
    Int32,
    Object,
    StringArray,
}

impl FieldType {
    fn accepts(self, value: &Value) -> bool {
        match self {
            Self::Bool => value.is_boolean(),
            Self::String => value.is_string(),
            Self::Int => value.is_i64(),
            Self::Int32 => value.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
            Self::Object => value.is_object(),
            Self::StringArray => value
                .as_array()
                .is_some_and(|items| items.iter().all(|item| item.is_string() || item.is_null())),
        }
    }
}

fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => out.extend_from_slice(number.to_string().as_bytes()),
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_value(item, out);
            }
            out.push(b'}');
        }
    }
}

/// A JSON string escaped like Go (1.22+): `<`, `>`, `&`, U+2028 and U+2029 as `\u` escapes.
fn write_string(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{08}' => out.extend_from_slice(b"\\b"),
            '\u{0c}' => out.extend_from_slice(b"\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' | '\u{0}'..='\u{1f}' => {
                let code = c as u32;
                out.extend_from_slice(b"\\u");
                for shift in [12, 8, 4, 0] {
                    out.push(HEX[((code >> shift) & 0xf) as usize]);
                }
            }
            _ => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Deserialises an object, or records why it is not acceptable (so the problem is not lost
/// in serde's error text).
struct ObjectOrProblem(Result<JsonObject, JsonProblem>);

impl<'de> Deserialize<'de> for ObjectOrProblem {
    fn deserialize<De: Deserializer<'de>>(deserializer: De) -> Result<Self, De::Error> {
        deserializer.deserialize_any(ObjectVisitor)
    }
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = ObjectOrProblem;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<ObjectOrProblem, M::Error> {
        let mut entries: Vec<(String, Value)> = Vec::new();
        let mut folded: Vec<String> = Vec::new();
        let mut duplicate = false;
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            let key_folded = fold_key(&key);
            duplicate |= folded.contains(&key_folded);
            folded.push(key_folded);
            entries.push((key, value));
        }
        Ok(ObjectOrProblem(if duplicate {
            Err(JsonProblem::DuplicateKey)
        } else {
            Ok(JsonObject { entries, folded })
        }))
    }

    fn visit_bool<E>(self, _: bool) -> Result<ObjectOrProblem, E> {
        Ok(ObjectOrProblem(Err(JsonProblem::NotAnObject)))
    }
    fn visit_i64<E>(self, _: i64) -> Result<ObjectOrProblem, E> {
        Ok(ObjectOrProblem(Err(JsonProblem::NotAnObject)))
    }
    fn visit_u64<E>(self, _: u64) -> Result<ObjectOrProblem, E> {
        Ok(ObjectOrProblem(Err(JsonProblem::NotAnObject)))
    }
    fn visit_f64<E>(self, _: f64) -> Result<ObjectOrProblem, E> {
        Ok(ObjectOrProblem(Err(JsonProblem::NotAnObject)))
    }
    fn visit_str<E>(self, _: &str) -> Result<ObjectOrProblem, E> {
        Ok(ObjectOrProblem(Err(JsonProblem::NotAnObject)))
    }
    fn visit_unit<E>(self) -> Result<ObjectOrProblem, E> {
        Ok(ObjectOrProblem(Err(JsonProblem::NotAnObject)))
    }
    fn visit_seq<S: serde::de::SeqAccess<'de>>(
        self,
        mut seq: S,
    ) -> Result<ObjectOrProblem, S::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(ObjectOrProblem(Err(JsonProblem::NotAnObject)))
    }
}

/// The fields of nats-server's `ClientOpts` and their Go types.
const CONNECT_FIELDS: &[(&str, FieldType)] = &[
    ("echo", FieldType::Bool),
    ("verbose", FieldType::Bool),
    ("pedantic", FieldType::Bool),
    ("tls_required", FieldType::Bool),
    ("nkey", FieldType::String),
    ("jwt", FieldType::String),
    ("sig", FieldType::String),
    ("auth_token", FieldType::String),
    ("user", FieldType::String),
    ("pass", FieldType::String),
    ("name", FieldType::String),
    ("lang", FieldType::String),
    ("version", FieldType::String),
    ("protocol", FieldType::Int),
    ("account", FieldType::String),
    ("new_account", FieldType::Bool),
    ("headers", FieldType::Bool),
    ("no_responders", FieldType::Bool),
    ("import", FieldType::Object),
    ("export", FieldType::Object),
    ("remote_account", FieldType::String),
    ("proxy_sig", FieldType::String),
];

/// Credential fields a client may present in CONNECT.
pub const CREDENTIAL_FIELDS: [&str; 6] = ["auth_token", "user", "pass", "jwt", "nkey", "sig"];

/// A client's CONNECT options.
#[derive(Clone, Debug, PartialEq)]
pub struct Connect {
    fields: JsonObject,
}

impl Connect {
    /// Parses the CONNECT argument. Errors close the connection silently, as nats-server's
    /// do.
    pub fn parse(json: &str) -> Result<Self, ProtocolError> {
        let fields = JsonObject::parse(json).map_err(ProtocolError::InvalidJson)?;
        fields
            .check_types(CONNECT_FIELDS)
            .map_err(ProtocolError::InvalidJson)?;
        Ok(Self { fields })
    }

    pub fn verbose(&self) -> Option<bool> {
        self.fields.get_bool("verbose")
    }
    pub fn pedantic(&self) -> Option<bool> {
        self.fields.get_bool("pedantic")
    }
    pub fn echo(&self) -> Option<bool> {
        self.fields.get_bool("echo")
    }
    pub fn headers(&self) -> Option<bool> {
        self.fields.get_bool("headers")
    }
    pub fn no_responders(&self) -> Option<bool> {
        self.fields.get_bool("no_responders")
    }
    pub fn protocol(&self) -> Option<i64> {
        self.fields.get("protocol").and_then(Value::as_i64)
    }
    pub fn auth_token(&self) -> Option<&str> {
        self.fields.get_str("auth_token")
    }
    pub fn user(&self) -> Option<&str> {
        self.fields.get_str("user")
    }
    pub fn pass(&self) -> Option<&str> {
        self.fields.get_str("pass")
    }
    pub fn jwt(&self) -> Option<&str> {
        self.fields.get_str("jwt")
    }
    pub fn nkey(&self) -> Option<&str> {
        self.fields.get_str("nkey")
    }
    pub fn sig(&self) -> Option<&str> {
        self.fields.get_str("sig")
    }
    pub fn name(&self) -> Option<&str> {
        self.fields.get_str("name")
    }
    pub fn lang(&self) -> Option<&str> {
        self.fields.get_str("lang")
    }
    pub fn version(&self) -> Option<&str> {
        self.fields.get_str("version")
    }

    /// Whether `account` or `new_account` is present in any form: nats-server answers
    /// them with `Authorization Violation`.
    pub fn names_account(&self) -> bool {
        self.fields.contains("account") || self.fields.contains("new_account")
    }

    pub fn fields(&self) -> &JsonObject {
        &self.fields
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.fields.remove(key)
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.set(key, value.into());
    }

    /// Removes every credential the client presented ([`CREDENTIAL_FIELDS`]).
    pub fn remove_credentials(&mut self) {
        for key in CREDENTIAL_FIELDS {
            self.fields.remove(key);
        }
    }

    /// Appends `CONNECT <json>\r\n`.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"CONNECT ");
        self.fields.write_json(out);
        out.extend_from_slice(b"\r\n");
    }
}

/// The fields of nats-server's `Info` that natsguard reads, and their Go types.
const INFO_FIELDS: &[(&str, FieldType)] = &[
    ("max_payload", FieldType::Int32),
    ("nonce", FieldType::String),
    ("headers", FieldType::Bool),
    ("tls_required", FieldType::Bool),
    ("auth_required", FieldType::Bool),
    ("proto", FieldType::Int),
    ("connect_urls", FieldType::StringArray),
    ("ws_connect_urls", FieldType::StringArray),
];

/// A server's INFO.
#[derive(Clone, Debug, PartialEq)]
pub struct Info {
    fields: JsonObject,
}

impl Info {
    pub fn parse(json: &str) -> Result<Self, ProtocolError> {
        let fields = JsonObject::parse(json).map_err(ProtocolError::InvalidJson)?;
        fields
            .check_types(INFO_FIELDS)
            .map_err(ProtocolError::InvalidJson)?;
        Ok(Self { fields })
    }

    /// `max_payload`; a negative value (no limit in JWT terms) reads as `None`.
    pub fn max_payload(&self) -> Option<u32> {
        self.fields
            .get("max_payload")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    }
    pub fn nonce(&self) -> Option<&str> {
        self.fields.get_str("nonce")
    }
    pub fn headers(&self) -> Option<bool> {
        self.fields.get_bool("headers")
    }
    pub fn tls_required(&self) -> Option<bool> {
        self.fields.get_bool("tls_required")
    }
    pub fn auth_required(&self) -> Option<bool> {
        self.fields.get_bool("auth_required")
    }
    pub fn proto(&self) -> Option<i64> {
        self.fields.get("proto").and_then(Value::as_i64)
    }
    pub fn connect_urls(&self) -> Vec<&str> {
        self.fields
            .get("connect_urls")
            .and_then(Value::as_array)
            .map(|urls| urls.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    pub fn fields(&self) -> &JsonObject {
        &self.fields
    }

    pub fn set_auth_required(&mut self, required: bool) {
        self.fields.set("auth_required", Value::Bool(required));
    }

    /// Removes `connect_urls` and `ws_connect_urls`, so clients cannot learn addresses that
    /// bypass the filter.
    pub fn remove_connect_urls(&mut self) {
        self.fields.remove("connect_urls");
        self.fields.remove("ws_connect_urls");
    }

    /// Appends `INFO <json> \r\n` (nats-server writes a space before the CRLF).
    pub fn write_line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"INFO ");
        self.fields.write_json(out);
        out.extend_from_slice(b" \r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problem(json: &str) -> Option<JsonProblem> {
        match Connect::parse(json) {
            Err(ProtocolError::InvalidJson(problem)) => Some(problem),
            Err(other) => panic!("unexpected {other}"),
            Ok(_) => None,
        }
    }

    #[test]
    fn keys_are_read_case_insensitively_like_go() {
        let connect =
            Connect::parse(r#"{"USER":"all","Pass":"x","VERBOSE":false,"uſer_x":1}"#).unwrap();
        assert_eq!(connect.user(), Some("all"));
        assert_eq!(connect.pass(), Some("x"));
        assert_eq!(connect.verbose(), Some(false));
        assert_eq!(connect.echo(), None);
        let kelvin = Connect::parse("{\"\u{212a}ey\":1,\"na\u{17f}\":2}").unwrap();
        assert!(kelvin.fields().contains("key"));
        assert!(kelvin.fields().contains("NAS"));
    }

    #[test]
    fn duplicate_keys_are_refused() {
        assert_eq!(
            problem(r#"{"user":"a","user":"b"}"#),
            Some(JsonProblem::DuplicateKey)
        );
        assert_eq!(
            problem(r#"{"user":"a","USER":"b"}"#),
            Some(JsonProblem::DuplicateKey)
        );
        assert_eq!(
            problem("{\"user\":\"a\",\"u\u{17f}er\":\"b\"}"),
            Some(JsonProblem::DuplicateKey)
        );
    }

    #[test]
    fn syntax_and_type_errors() {
        assert_eq!(
            problem(r#"{"verbose":"no"}"#),
            Some(JsonProblem::WrongType("verbose"))
        );
        assert_eq!(
            problem(r#"{"protocol":1.0}"#),
            Some(JsonProblem::WrongType("protocol"))
        );
        assert_eq!(
            problem(r#"{"protocol":1e0}"#),
            Some(JsonProblem::WrongType("protocol"))
        );
        assert_eq!(
            problem(r#"{"user":5}"#),
            Some(JsonProblem::WrongType("user"))
        );
        assert_eq!(
            problem(r#"{"import":[]}"#),
            Some(JsonProblem::WrongType("import"))
        );
        assert_eq!(problem(r#"{"verbose":false} x"#), Some(JsonProblem::Syntax));
        assert_eq!(problem(r#"{"verbose":false"#), Some(JsonProblem::Syntax));
        assert_eq!(problem(r#"[1]"#), Some(JsonProblem::NotAnObject));
        assert_eq!(problem("null"), Some(JsonProblem::NotAnObject));
        assert_eq!(problem(r#"{"verbose":null,"user":null} "#), None);
        assert_eq!(problem(r#"{"protocol":-1,"unknown":[1,{"a":2}]}"#), None);
    }

    #[test]
    fn escapes_are_decoded() {
        let connect = Connect::parse(r#"{"user":"\u0061ll"}"#).unwrap();
        assert_eq!(connect.user(), Some("all"));
    }

    #[test]
    fn rewrite_connect() {
        let mut connect = Connect::parse(
            r#"{"verbose":false,"User":"u","pass":"p","auth_token":"t","name":"<app>&","x":{"b":1}}"#,
        )
        .unwrap();
        assert!(!connect.names_account());
        connect.remove_credentials();
        connect.set("user", "svc");
        connect.set("proxy_sig", json!("abc"));
        connect.set("VERBOSE", true);
        let mut line = Vec::new();
        connect.write_line(&mut line);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "CONNECT {\"VERBOSE\":true,\"name\":\"\\u003capp\\u003e\\u0026\",\"x\":{\"b\":1},\
             \"user\":\"svc\",\"proxy_sig\":\"abc\"}\r\n"
        );
    }

    #[test]
    fn account_fields_are_noticed_in_any_form() {
        assert!(Connect::parse(r#"{"account":""}"#).unwrap().names_account());
        assert!(Connect::parse(r#"{"New_Account":null}"#)
            .unwrap()
            .names_account());
    }

    #[test]
    fn info_read_and_rewrite() {
        let mut info = Info::parse(
            r#"{"server_id":"S","proto":1,"headers":true,"max_payload":1048576,"nonce":"n1","auth_required":false,"tls_required":false,"connect_urls":["10.0.0.1:4222"],"ws_connect_urls":["x"]}"#,
        )
        .unwrap();
        assert_eq!(info.max_payload(), Some(1_048_576));
        assert_eq!(info.nonce(), Some("n1"));
        assert_eq!(info.headers(), Some(true));
        assert_eq!(info.proto(), Some(1));
        assert_eq!(info.connect_urls(), vec!["10.0.0.1:4222"]);
        info.set_auth_required(true);
        info.remove_connect_urls();
        let mut line = Vec::new();
        info.write_line(&mut line);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "INFO {\"server_id\":\"S\",\"proto\":1,\"headers\":true,\"max_payload\":1048576,\
             \"nonce\":\"n1\",\"auth_required\":true,\"tls_required\":false} \r\n"
        );
        assert!(Info::parse(r#"{"max_payload":"big"}"#).is_err());
        assert!(Info::parse(r#"{"max_payload":4294967296}"#).is_err());
    }
}

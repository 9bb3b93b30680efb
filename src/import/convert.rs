//! The `authorization` block of a nats-server configuration as natsguard rules, read with
//! nats-server's meaning (server/opts.go: parseAuthorization, parseUsers, parseUserPermissions,
//! parseVariablePermissions, parsePermSubjects, parseAllowResponses, checkPermSubjectArray;
//! applyDefaultPermissions). What natsguard cannot express is refused with its place.

use std::path::Path;

use serde_json::{json, Map as JsonMap, Value as Json};

use super::conf::{Entry, Location, Map, Node, Value};
use super::{ImportError, Imported, UserMapping};
use crate::policy;

/// The fields of a nats-server block, each with the (lower-case) keys that set it.
type Fields = &'static [(&'static str, &'static [&'static str])];

/// The top-level options that bear on who may do what.
const TOP_LEVEL: Fields = &[
    ("authorization", &["authorization"]),
    ("accounts", &["accounts"]),
    ("mappings", &["mappings", "maps"]),
    (
        "operator",
        &[
            "operator",
            "operators",
            "roots",
            "root",
            "root_operators",
            "root_operator",
        ],
    ),
    (
        "resolver",
        &["resolver", "account_resolver", "accounts_resolver"],
    ),
    ("trusted", &["trusted", "trusted_keys"]),
];

const AUTHORIZATION: Fields = &[
    ("user", &["user", "username"]),
    ("password", &["pass", "password"]),
    ("token", &["token"]),
    ("timeout", &["timeout"]),
    ("users", &["users"]),
    (
        "default_permissions",
        &["default_permission", "default_permissions", "permissions"],
    ),
    ("auth_callout", &["auth_callout", "auth_hook"]),
    ("proxy_required", &["proxy_required"]),
];

const USER: Fields = &[
    ("nkey", &["nkey"]),
    ("user", &["user", "username"]),
    ("password", &["pass", "password"]),
    (
        "permissions",
        &["permission", "permissions", "authorization"],
    ),
    (
        "connection_types",
        &["allowed_connection_types", "connection_types", "clients"],
    ),
    ("proxy_required", &["proxy_required"]),
];

const PERMISSIONS: Fields = &[
    ("publish", &["pub", "publish", "import"]),
    ("subscribe", &["sub", "subscribe", "export"]),
    (
        "allow_responses",
        &["allow_responses", "publish_allow_responses"],
    ),
];

const SUBJECT_PERMISSION: Fields = &[("allow", &["allow"]), ("deny", &["deny"])];

const RESPONSES: Fields = &[
    ("max", &["max", "max_msgs", "max_messages", "max_responses"]),
    ("expires", &["expires", "expiration", "ttl"]),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Unknown {
    /// nats-server refuses to start with an unknown key (unless it is a used `$variable`).
    Refuse,
    /// Options outside what the import reads.
    Ignore,
}

/// One key of a block, by the field it sets.
struct Field<'m> {
    name: &'static str,
    entry: &'m Entry,
    path: String,
}

/// `key` in a key path: as written when it is a plain word, quoted otherwise.
fn child(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$'));
    let key = if plain {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    match path {
        "" => key,
        _ => format!("{path}.{key}"),
    }
}

fn kind(value: &Value) -> String {
    match value {
        Value::String(_) => "a string".to_owned(),
        Value::Bool(_) => "a boolean".to_owned(),
        Value::Integer(_) => "an integer".to_owned(),
        Value::Float(_) => "a float".to_owned(),
        Value::Datetime(_) => "a datetime".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::Map(_) => "a map".to_owned(),
        Value::Undefined(name) => {
            format!("${name}, which no key or environment variable defines")
        }
    }
}

/// The keys of `map` by the field they set. nats-server lower-cases keys and takes aliases;
/// two keys for one field are refused, because nats-server would apply them in Go's random map
/// order.
fn fields<'m>(
    map: &'m Map,
    path: &str,
    table: Fields,
    unknown: Unknown,
) -> Result<Vec<Field<'m>>, ImportError> {
    let mut found: Vec<Field<'m>> = Vec::new();
    for entry in map.entries() {
        let key = entry.key.to_lowercase();
        let path = child(path, &entry.key);
        let Some((name, _)) = table.iter().find(|(_, keys)| keys.contains(&key.as_str())) else {
            if unknown == Unknown::Refuse && !entry.used_as_variable {
                return Err(ImportError::at(
                    &entry.key_at,
                    &path,
                    format!(
                        "unknown field {:?} (nats-server refuses to start with it)",
                        entry.key
                    ),
                ));
            }
            continue;
        };
        if let Some(earlier) = found.iter().find(|field| field.name == *name) {
            return Err(ImportError::at(
                &entry.key_at,
                &path,
                format!(
                    "{:?} and {:?} ({}) set the same option: nats-server applies one of them at random",
                    earlier.entry.key, entry.key, earlier.entry.key_at
                ),
            ));
        }
        found.push(Field { name, entry, path });
    }
    Ok(found)
}

fn string<'n>(node: &'n Node, path: &str) -> Result<&'n str, ImportError> {
    match &node.value {
        Value::String(text) => Ok(text),
        other => Err(ImportError::at(
            &node.at,
            path,
            format!("expected a string, found {}", kind(other)),
        )),
    }
}

/// Where a part of the generated policy came from, to place the errors of natsguard's loader.
#[derive(Clone, Debug)]
struct Origin {
    /// JSON path below the rule's `permissions`; empty for `permissions` itself.
    json_path: String,
    at: Location,
    path: String,
}

/// natsguard's `permissions` object for one nats-server permissions block.
#[derive(Clone, Debug, Default)]
struct Permissions {
    json: JsonMap<String, Json>,
    origins: Vec<Origin>,
}

/// One entry of a publish or subscribe list.
struct SubjectEntry {
    text: String,
    at: Location,
    path: String,
}

/// nats-server's permissions block (parseUserPermissions).
fn permissions(node: &Node, path: &str) -> Result<Permissions, ImportError> {
    let Value::Map(map) = &node.value else {
        return Err(ImportError::at(
            &node.at,
            path,
            format!(
                "expected permissions to be a map, found {}",
                kind(&node.value)
            ),
        ));
    };
    let mut converted = Permissions::default();
    converted.origins.push(Origin {
        json_path: String::new(),
        at: node.at.clone(),
        path: path.to_owned(),
    });
    for field in fields(map, path, PERMISSIONS, Unknown::Refuse)? {
        match field.name {
            "allow_responses" => {
                if let Some(json) =
                    allow_responses(&field.entry.value, &field.path, &mut converted.origins)?
                {
                    converted.json.insert(field.name.to_owned(), json);
                }
            }
            direction => {
                let queues = direction == "subscribe";
                let json = subject_permission(
                    &field.entry.value,
                    &field.path,
                    direction,
                    queues,
                    &mut converted.origins,
                )?;
                if let Some(json) = json {
                    converted.json.insert(direction.to_owned(), json);
                }
            }
        }
    }
    Ok(converted)
}

/// `publish`/`subscribe` (parseVariablePermissions): a map with `allow`/`deny`, or a subject or
/// list of subjects (an allow list); none when it restricts nothing.
fn subject_permission(
    node: &Node,
    path: &str,
    direction: &str,
    queues: bool,
    origins: &mut Vec<Origin>,
) -> Result<Option<Json>, ImportError> {
    let mut record = |json_path: String, entry: &SubjectEntry| {
        origins.push(Origin {
            json_path,
            at: entry.at.clone(),
            path: entry.path.clone(),
        });
        Json::String(entry.text.clone())
    };
    let Value::Map(map) = &node.value else {
        let allow = subjects(node, path, queues)?;
        if allow.is_empty() {
            return Ok(None);
        }
        let list = allow
            .iter()
            .enumerate()
            .map(|(index, entry)| record(format!("{direction}[{index}]"), entry))
            .collect();
        return Ok(Some(Json::Array(list)));
    };
    let mut lists = JsonMap::new();
    for field in fields(map, path, SUBJECT_PERMISSION, Unknown::Refuse)? {
        let entries = subjects(&field.entry.value, &field.path, queues)?;
        if entries.is_empty() {
            continue;
        }
        let list = entries
            .iter()
            .enumerate()
            .map(|(index, entry)| record(format!("{direction}.{}[{index}]", field.name), entry))
            .collect();
        lists.insert(field.name.to_owned(), Json::Array(list));
    }
    Ok((!lists.is_empty()).then_some(Json::Object(lists)))
}

/// A subject or a list of subjects (parsePermSubjects).
fn subjects(node: &Node, path: &str, queues: bool) -> Result<Vec<SubjectEntry>, ImportError> {
    match &node.value {
        Value::String(_) => Ok(vec![subject_entry(node, path, queues)?]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(index, item)| subject_entry(item, &format!("{path}[{index}]"), queues))
            .collect(),
        other => Err(ImportError::at(
            &node.at,
            path,
            format!(
                "expected a subject or an array of subjects, found {}",
                kind(other)
            ),
        )),
    }
}

/// One permission entry: a subject, or (subscribe) `"subject queue"` (checkPermSubjectArray),
/// written the way natsguard reads it with the same meaning.
fn subject_entry(node: &Node, path: &str, queues: bool) -> Result<SubjectEntry, ImportError> {
    let text = string(node, path)?;
    let refuse = |reason: String| Err(ImportError::at(&node.at, path, reason));
    if let Some(control) = text
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\x0c'))
    {
        return refuse(format!(
            "{text:?} contains the control character {control:?}, which natsguard refuses in permission entries"
        ));
    }
    let entry = if policy::is_valid_subject(text) {
        if let Some(space) = text.chars().find(|c| c.is_whitespace()) {
            return refuse(format!(
                "{text:?} contains the white space {space:?}, which natsguard would read as the separator of \"subject queue\""
            ));
        }
        text.to_owned()
    } else {
        match text.split_whitespace().collect::<Vec<_>>().as_slice() {
            [subject, queue]
                if queues && policy::is_valid_subject(subject) && policy::is_valid_subject(queue) =>
            {
                format!("{subject} {queue}")
            }
            [_, _] if !queues => {
                return refuse(format!(
                    "{text:?} is not a valid subject (publish entries take no queue group); nats-server refuses to start with it"
                ))
            }
            _ => {
                return refuse(format!(
                    "{text:?} is not a valid subject; nats-server refuses to start with it"
                ))
            }
        }
    };
    if entry.contains("{{") {
        return refuse(format!(
            "{text:?} contains \"{{{{\", which natsguard reads as an identity template (nats-server reads it literally)"
        ));
    }
    Ok(SubjectEntry {
        text: entry,
        at: node.at.clone(),
        path: path.to_owned(),
    })
}

/// `allow_responses` (parseUserPermissions, parseAllowResponses): `true`, `false`, or a map
/// with `max` and `expires`; none when it is off.
fn allow_responses(
    node: &Node,
    path: &str,
    origins: &mut Vec<Origin>,
) -> Result<Option<Json>, ImportError> {
    let map = match &node.value {
        Value::Bool(enabled) => return Ok(enabled.then_some(Json::Bool(true))),
        Value::Map(map) => map,
        other => {
            return Err(ImportError::at(
                &node.at,
                path,
                format!("expected a boolean or a map, found {}", kind(other)),
            ))
        }
    };
    origins.push(Origin {
        json_path: "allow_responses".to_owned(),
        at: node.at.clone(),
        path: path.to_owned(),
    });
    let mut limits = JsonMap::new();
    for field in fields(map, path, RESPONSES, Unknown::Refuse)? {
        let value = &field.entry.value;
        let json = match (field.name, &value.value) {
            ("max", Value::Integer(max)) => json!(max),
            ("expires", Value::String(expires)) => json!(expires),
            (name, other) => {
                let expected = match name {
                    "max" => "an integer",
                    _ => "a duration string such as \"5s\"",
                };
                return Err(ImportError::at(
                    &value.at,
                    &field.path,
                    format!("expected {expected}, found {}", kind(other)),
                ));
            }
        };
        origins.push(Origin {
            json_path: format!("allow_responses.{}", field.name),
            at: value.at.clone(),
            path: field.path.clone(),
        });
        limits.insert(field.name.to_owned(), json);
    }
    Ok(Some(Json::Object(limits)))
}

/// A user of the `authorization` block.
struct User {
    name: String,
    at: Location,
    path: String,
    /// Its own permissions block, if it has one (even an empty one).
    permissions: Option<Permissions>,
    /// `default_permissions` apply to it when it has none (users of the `users` list).
    takes_defaults: bool,
}

/// The `users` list (parseUsers).
fn users(node: &Node, path: &str) -> Result<Vec<User>, ImportError> {
    let Value::Array(items) = &node.value else {
        return Err(ImportError::at(
            &node.at,
            path,
            format!("expected users to be an array, found {}", kind(&node.value)),
        ));
    };
    let mut users: Vec<User> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let path = format!("{path}[{index}]");
        let Value::Map(map) = &item.value else {
            return Err(ImportError::at(
                &item.at,
                &path,
                format!(
                    "expected a user entry to be a map, found {}",
                    kind(&item.value)
                ),
            ));
        };
        let mut name = None;
        let mut own = None;
        for field in fields(map, &path, USER, Unknown::Refuse)? {
            let value = &field.entry.value;
            match field.name {
                "nkey" => return Err(ImportError::at(
                    &field.entry.key_at,
                    &field.path,
                    "nkey users cannot be imported: natsguard knows a client by its SPIFFE ID or JWT and forwards its own credentials, so nats-server's nkey challenge never reaches the client",
                )),
                "user" => name = Some(string(value, &field.path)?.to_owned()),
                "permissions" => own = Some(permissions(value, &field.path)?),
                "connection_types" => standard_connections(value, &field.path)?,
                _ => {}
            }
        }
        let Some(name) = name else {
            return Err(ImportError::at(
                &item.at,
                &path,
                "user entry requires a user",
            ));
        };
        if let Some(earlier) = users.iter().find(|user| user.name == name) {
            return Err(ImportError::at(
                &item.at,
                &path,
                format!("duplicate user {name:?} (first at {})", earlier.at),
            ));
        }
        users.push(User {
            name,
            at: item.at.clone(),
            path,
            permissions: own,
            takes_defaults: true,
        });
    }
    Ok(users)
}

/// `allowed_connection_types`: natsguard carries NATS over TCP (`STANDARD`) only, so a user
/// limited to other kinds of connection cannot be imported.
fn standard_connections(node: &Node, path: &str) -> Result<(), ImportError> {
    let types = match &node.value {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(index, item)| string(item, &format!("{path}[{index}]")))
            .collect::<Result<Vec<_>, _>>()?,
        _ => vec![string(node, path)?],
    };
    if types.is_empty()
        || types
            .iter()
            .any(|kind| kind.eq_ignore_ascii_case("standard"))
    {
        return Ok(());
    }
    Err(ImportError::at(
        &node.at,
        path,
        format!(
            "the user may connect only as {}: natsguard carries STANDARD (NATS over TCP) connections",
            types.join(", ")
        ),
    ))
}

/// The `authorization` block (parseAuthorization): its users with the permissions each gets.
struct Authorization {
    users: Vec<User>,
    default_permissions: Option<Permissions>,
    /// Where `--user` names are looked up, for the error when one is missing.
    users_at: Location,
    users_path: String,
}

fn authorization(entry: &Entry, path: &str) -> Result<Authorization, ImportError> {
    let node = &entry.value;
    let Value::Map(map) = &node.value else {
        return Err(ImportError::at(
            &node.at,
            path,
            format!("expected a map, found {}", kind(&node.value)),
        ));
    };
    let mut single_user = None;
    let mut listed = None;
    let mut default_permissions = None;
    let mut users_at = (entry.key_at.clone(), path.to_owned());
    for field in fields(map, path, AUTHORIZATION, Unknown::Refuse)? {
        let value = &field.entry.value;
        match field.name {
            "user" => {
                let name = string(value, &field.path)?.to_owned();
                single_user = Some((name, field.entry.key_at.clone(), field.path));
            }
            "token" => return Err(ImportError::at(
                &field.entry.key_at,
                &field.path,
                "token authorization has no users to map to identities; natsguard's upstream credentials replace the token (docs/migration.md)",
            )),
            "users" => {
                listed = Some(users(value, &field.path)?);
                users_at = (field.entry.key_at.clone(), field.path);
            }
            "default_permissions" => default_permissions = Some(permissions(value, &field.path)?),
            "auth_callout" => return Err(ImportError::at(
                &field.entry.key_at,
                &field.path,
                "auth callout leaves authentication and permissions to an external service, which natsguard cannot express",
            )),
            _ => {}
        }
    }
    let users =
        match (single_user, listed) {
            (Some((_, user_at, user_path)), Some(_)) => return Err(ImportError::at(
                &user_at,
                &user_path,
                "cannot have a single user/pass and a users array (nats-server refuses to start)",
            )),
            (Some((name, user_at, user_path)), None) => vec![User {
                name,
                at: user_at,
                path: user_path,
                permissions: None,
                takes_defaults: false,
            }],
            (None, listed) => listed.unwrap_or_default(),
        };
    Ok(Authorization {
        users,
        default_permissions,
        users_at: users_at.0,
        users_path: users_at.1,
    })
}

/// Refuses what lies outside natsguard's model at the top level; returns `authorization`.
fn authorization_entry<'c>(config: &'c Map, file: &Path) -> Result<&'c Entry, ImportError> {
    let mut found = None;
    for field in fields(config, "", TOP_LEVEL, Unknown::Ignore)? {
        let refuse = |reason: &str| Err(ImportError::at(&field.entry.key_at, &field.path, reason));
        match field.name {
            "authorization" => found = Some(field.entry),
            "accounts" => return refuse(
                "accounts cannot be imported: natsguard logs every client in to nats-server as one user, so all of them share one account",
            ),
            "mappings" => return refuse(
                "subject mappings cannot be imported: nats-server checks permissions on the mapped subject, natsguard on the subject the client sends",
            ),
            _ => return refuse(
                "operator mode (JWT accounts and users) cannot be imported: its users and permissions live in JWTs, not in this file",
            ),
        }
    }
    found.ok_or_else(|| ImportError::file(file, "no authorization block: nothing to import"))
}

/// The nats-server configuration `config` (read from `file`) as a natsguard policy.
pub(super) fn convert(
    config: &Map,
    file: &Path,
    mappings: &[UserMapping],
) -> Result<Imported, ImportError> {
    let entry = authorization_entry(config, file)?;
    let authorization = authorization(entry, &child("", &entry.key))?;
    for mapping in mappings {
        if !authorization
            .users
            .iter()
            .any(|user| user.name == mapping.user)
        {
            return Err(ImportError::at(
                &authorization.users_at,
                &authorization.users_path,
                format!("no user {:?} (given with --user)", mapping.user),
            ));
        }
        if let Some(other) = mappings
            .iter()
            .find(|other| other.principal == mapping.principal && other.user != mapping.user)
        {
            return Err(ImportError::file(
                file,
                format!(
                    "principal {:?} is given for users {:?} and {:?}: natsguard would grant it both users' permissions together",
                    mapping.principal, mapping.user, other.user
                ),
            ));
        }
    }
    let mut notes = Vec::new();
    let mut rules = Vec::new();
    let mut origins: Vec<(String, Location, String)> = Vec::new();
    for user in &authorization.users {
        let mut principals: Vec<&str> = Vec::new();
        for mapping in mappings.iter().filter(|mapping| mapping.user == user.name) {
            if !principals.contains(&mapping.principal.as_str()) {
                principals.push(&mapping.principal);
            }
        }
        if principals.is_empty() {
            notes.push(format!(
                "user {:?} ({}) is not imported: no --user names it",
                user.name, user.at
            ));
            continue;
        }
        let permissions = match (&user.permissions, &authorization.default_permissions) {
            (Some(own), _) => own.clone(),
            (None, Some(defaults)) if user.takes_defaults => {
                notes.push(format!(
                    "user {:?} gets default_permissions (it has no permissions of its own)",
                    user.name
                ));
                defaults.clone()
            }
            (None, _) => Permissions::default(),
        };
        let rule_path = format!("rules[{}]", rules.len());
        origins.push((rule_path.clone(), user.at.clone(), user.path.clone()));
        for origin in &permissions.origins {
            let json_path = match origin.json_path.as_str() {
                "" => format!("{rule_path}.permissions"),
                below => format!("{rule_path}.permissions.{below}"),
            };
            origins.push((json_path, origin.at.clone(), origin.path.clone()));
        }
        rules.push(json!({
            "name": user.name,
            "from": { "principals": principals },
            "permissions": permissions.json,
        }));
    }
    let mut trust_domains: Vec<&str> = Vec::new();
    for mapping in mappings {
        if !trust_domains.contains(&mapping.trust_domain()) {
            trust_domains.push(mapping.trust_domain());
        }
    }
    let policy = json!({
        "identity": { "spiffe": { "required": true, "trust_domains": trust_domains } },
        "default_action": "deny",
        "rules": rules,
    });
    match policy::load(&policy.to_string()) {
        Ok(loaded) => notes.extend(loaded.warnings.iter().map(ToString::to_string)),
        Err(error) => return Err(place(&error, &origins, file)),
    }
    Ok(Imported { policy, notes })
}

/// An error of natsguard's loader, placed at the configuration part that produced the value.
fn place(
    error: &policy::ConfigError,
    origins: &[(String, Location, String)],
    file: &Path,
) -> ImportError {
    let covers = |json_path: &str| {
        error.path == json_path
            || error
                .path
                .strip_prefix(json_path)
                .is_some_and(|rest| rest.starts_with(['.', '[']))
    };
    let closest = origins
        .iter()
        .filter(|(json_path, _, _)| covers(json_path))
        .max_by_key(|(json_path, _, _)| json_path.len());
    match closest {
        Some((_, at, path)) => {
            ImportError::at(at, path, format!("natsguard refuses it: {}", error.reason))
        }
        None => ImportError::file(file, format!("the imported policy does not load: {error}")),
    }
}

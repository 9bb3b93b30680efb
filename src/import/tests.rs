//! The configuration parser (every syntax form, variables, includes, errors with their place)
//! and the conversion (nats-server's aliases and forms, what is refused), on in-memory files.

use std::path::{Path, PathBuf};

use serde_json::{json, Value as Json};

use super::{import_with, parse_file, Imported, MemoryInputs, Node, UserMapping, Value};

const MAIN: &str = "conf/nats.conf";

fn inputs(files: &[(&str, &str)]) -> MemoryInputs {
    MemoryInputs {
        files: files
            .iter()
            .map(|(path, text)| (PathBuf::from(path), (*text).to_owned()))
            .collect(),
        env: [
            ("NATS_PASS", "from-env"),
            ("SUBJECTS", "[a, b.>]"),
            ("LOOP", "$LOOP"),
        ]
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect(),
    }
}

/// A value as JSON, for comparison (datetimes as `{"datetime": ...}`).
fn render(node: &Node) -> Json {
    match &node.value {
        Value::String(text) => json!(text),
        Value::Bool(flag) => json!(flag),
        Value::Integer(integer) => json!(integer),
        Value::Float(float) => json!(float),
        Value::Datetime(text) => json!({ "datetime": text }),
        Value::Array(items) => Json::Array(items.iter().map(render).collect()),
        Value::Undefined(name) => json!({ "undefined": name }),
        Value::Map(map) => Json::Object(
            map.entries()
                .iter()
                .map(|entry| (entry.key.clone(), render(&entry.value)))
                .collect(),
        ),
    }
}

fn parse_files(files: &[(&str, &str)]) -> Result<Json, String> {
    let map = parse_file(Path::new(MAIN), &inputs(files)).map_err(|error| error.to_string())?;
    Ok(Json::Object(
        map.entries()
            .iter()
            .map(|entry| (entry.key.clone(), render(&entry.value)))
            .collect(),
    ))
}

fn parse(text: &str) -> Result<Json, String> {
    parse_files(&[(MAIN, text)])
}

#[test]
fn every_syntax_form_reads_as_nats_server_reads_it() {
    let cases: &[(&str, Json)] = &[
        // Separators between key and value, terminators between entries.
        ("a = 1\nb: 2\nc 3", json!({ "a": 1, "b": 2, "c": 3 })),
        ("a=1; b=2, c=3", json!({ "a": 1, "b": 2, "c": 3 })),
        ("a\n  = 1", json!({ "a": 1 })),
        // A whole file in braces (JSON), quoted keys.
        (
            r#"{"a": 1, 'b c': [true, false], "d": {"e": null_ish}}"#,
            json!({ "a": 1, "b c": [true, false], "d": { "e": "null_ish" } }),
        ),
        // Comments wherever a key or an array value may stand, and after values.
        (
            "# head\n// also\na: 1 # after\nb: [ # open\n  x, // one\n  y\n]\nm { # in a map\n  k: v // after\n}",
            json!({ "a": 1, "b": ["x", "y"], "m": { "k": "v" } }),
        ),
        // A `#` where a value starts belongs to the value.
        ("a: #not-a-comment", json!({ "a": "#not-a-comment" })),
        // Unquoted strings run to white space or , ; ] } and a new line.
        (
            "url: nats://host:4222\nsubject: foo.*.>\nq: \"billing.requests.* workers\"",
            json!({ "url": "nats://host:4222", "subject": "foo.*.>", "q": "billing.requests.* workers" }),
        ),
        // Booleans in every spelling; a boolean word with an escape is a string.
        (
            "a: true, b: FALSE, c: yes, d: No, e: on, f: OFF, g: tru\\x65",
            json!({ "a": true, "b": false, "c": true, "d": false, "e": true, "f": false, "g": "true" }),
        ),
        // Single quotes are raw; double quotes take \xXX \t \n \r \" \\.
        (
            r#"raw: 'a\tb "c"', escaped: "t\tn\nr\rq\"b\\x\x41""#,
            json!({ "raw": "a\\tb \"c\"", "escaped": "t\tn\nr\rq\"b\\xA" }),
        ),
        // Integers with size suffixes, negative numbers, floats, IP addresses, datetimes.
        (
            "a: 1k, b: 1kb, c: 2MB, d: 1Gi, e: 3KiB, f: -5, g: 1.5, h: 127.0.0.1, i: -0.25, j: 2024-01-02T03:04:05Z, k: 1m",
            json!({ "a": 1000, "b": 1024, "c": 2_097_152, "d": 1_073_741_824, "e": 3072, "f": -5, "g": 1.5, "h": "127.0.0.1", "i": -0.25, "j": { "datetime": "2024-01-02T03:04:05Z" }, "k": 1_000_000 }),
        ),
        // Digits followed by other characters are a string: durations.
        (
            "a: 5s, b: 1h30m, c: 500ms, d: [1]",
            json!({ "a": "5s", "b": "1h30m", "c": "500ms", "d": ["1"] }),
        ),
        // A block string runs to a line holding only `)`.
        (
            "text: (\nline one\n  line two\n)\nafter: 1",
            json!({ "text": "\nline one\n  line two\n", "after": 1 }),
        ),
        // Arrays: commas or new lines, a trailing comma, nesting; maps: the same. A number
        // right before `]` is a string in nats-server's lexer.
        (
            "a: [\n  1\n  2,\n  [3, 4],\n]\nm: { x: 1; y: 2\n z: { deep: [ {k: v} ] } }",
            json!({ "a": [1, 2, [3, "4"]], "m": { "x": 1, "y": 2, "z": { "deep": [{ "k": "v" }] } } }),
        ),
        // A map value needs no separator; a later key replaces an earlier one.
        (
            "authorization {\n  users = []\n}\na: 1\na: 2",
            json!({ "authorization": { "users": [] }, "a": 2 }),
        ),
        // Variables: the enclosing maps, innermost first, then the environment (parsed as a
        // value); a bcrypt hash is a string.
        (
            "X = outer\nm {\n  X = inner\n  a: $X\n  n { b: $X }\n}\nc: $X\nd: $NATS_PASS\ne: $SUBJECTS\nf: $2a$11$abc",
            json!({
                "X": "outer",
                "m": { "X": "inner", "a": "inner", "n": { "b": "inner" } },
                "c": "outer",
                "d": "from-env",
                "e": ["a", "b.>"],
                "f": "$2a$11$abc"
            }),
        ),
        // A variable defined later, or only in the file that includes this one, or nowhere, is
        // undefined (an error only where the import reads it).
        (
            "a: $LATER\nLATER: 1\np: $UNSET",
            json!({ "a": { "undefined": "LATER" }, "LATER": 1, "p": { "undefined": "UNSET" } }),
        ),
        // A variable holding a map or an array copies it.
        (
            "P = { publish: [\"a\"] }\nusers: [ { permissions: $P }, { permissions: $P } ]",
            json!({ "P": { "publish": ["a"] }, "users": [{ "permissions": { "publish": ["a"] } }, { "permissions": { "publish": ["a"] } }] }),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(parse(text).as_ref(), Ok(expected), "{text}");
    }
}

#[test]
fn includes_resolve_relative_to_the_including_file() {
    let files = [
        (
            MAIN,
            "include 'sub/auth.conf'\ntop: 1\nm {\n  include \"sub/inner.conf\"\n  own: 2\n}",
        ),
        (
            "conf/sub/auth.conf",
            "include ../common.conf\nfrom_auth: $FROM_COMMON",
        ),
        ("conf/common.conf", "FROM_COMMON = yes"),
        ("conf/sub/inner.conf", "inner: [x]"),
    ];
    assert_eq!(
        parse_files(&files),
        Ok(
            json!({ "FROM_COMMON": true, "from_auth": true, "top": 1, "m": { "inner": ["x"], "own": 2 } })
        )
    );
    // Go's filepath.Join: an absolute include path is relative to the including file too.
    assert_eq!(
        parse_files(&[(MAIN, "include /abs.conf"), ("conf/abs.conf", "a: 1")]),
        Ok(json!({ "a": 1 }))
    );
    // An included file does not see the variables of the file that includes it.
    assert_eq!(
        parse_files(&[
            (MAIN, "V = 1\ninclude inc.conf"),
            ("conf/inc.conf", "b: $V")
        ]),
        Ok(json!({ "V": 1, "b": { "undefined": "V" } }))
    );
}

#[test]
fn errors_name_the_file_line_and_column() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[(MAIN, "a: 1\nb: \"open")],
            "conf/nats.conf:2:4: unterminated string (no closing \")",
        ),
        (
            &[(MAIN, "a: 1\nb:\nc: 2")],
            "conf/nats.conf:2:3: expected a value, found a new line",
        ),
        (&[(MAIN, "m { a: 1 b: 2 }")], "conf/nats.conf:1:10: expected ',' or '}' after a map value, found 'b'"),
        (&[(MAIN, "a: [1,,2]")], "conf/nats.conf:1:7: unexpected ',' in an array"),
        (
            &[(MAIN, "a: [1, 2")],
            "conf/nats.conf:1:9: expected ',' or ']' after an array value, found end of file",
        ),
        (&[(MAIN, "a: [\n")], "conf/nats.conf:1:4: unterminated array (no closing ])"),
        (&[(MAIN, "m {\n  a: 1\n")], "conf/nats.conf:1:3: unterminated map (no closing })"),
        (&[(MAIN, "a: 1.5s")], "conf/nats.conf:1:7: expected a new line, ',' or ';' after the value, found 's'"),
        (&[(MAIN, "a: \"\\q\"")], "conf/nats.conf:1:5: invalid escape: only \\xXX, \\t, \\n, \\r, \\\" and \\\\ are allowed"),
        (&[(MAIN, "a: 99999999999999999999")], "conf/nats.conf:1:4: integer \"99999999999999999999\" is out of range"),
        (&[(MAIN, "a: 9000000000000000000k")], "conf/nats.conf:1:4: integer \"9000000000000000000k\" is out of range"),
        (&[(MAIN, "a: 2024-01-02")], "conf/nats.conf:1:4: expected a Zulu datetime such as 2006-01-02T15:04:05Z"),
        (&[(MAIN, "key")], "conf/nats.conf:1:4: key \"key\" has no value"),
        (&[(MAIN, "a: \"\\xff\"")], "conf/nats.conf:1:4: the string is not UTF-8 after its \\x escapes"),
        (&[(MAIN, "a: $LOOP")], "conf/nats.conf:1:4: variable reference cycle for \"LOOP\""),
        // Includes that cannot be read, and cycles, name the include line.
        (
            &[(MAIN, "a: 1\n  include missing.conf")],
            "conf/nats.conf:2:3: cannot read include file conf/missing.conf: entity not found",
        ),
        (
            &[(MAIN, "include a.conf"), ("conf/a.conf", "x: 1\ninclude ./nats.conf")],
            "conf/a.conf:2:1: include cycle: conf/nats.conf is already being read",
        ),
        (&[(MAIN, "include\n  x.conf")], "conf/nats.conf:1:8: expected an include path, found a new line"),
        (&[("other.conf", "a: 1")], "conf/nats.conf: cannot read: entity not found"),
    ];
    for (files, expected) in cases {
        assert_eq!(
            parse_files(files).as_ref().map_err(String::as_str),
            Err(*expected),
            "{files:?}"
        );
    }
}

#[test]
fn inputs_that_would_exhaust_the_parser_are_refused() {
    let deep = format!("a: {}{}", "[".repeat(100), "]".repeat(100));
    assert_eq!(
        parse(&deep),
        Err("conf/nats.conf:1:68: arrays and maps nested deeper than 64".to_owned())
    );
    // Variables that double at each step (a billion laughs).
    let mut laughs = String::from("l0: [x, x]\n");
    for level in 1..40 {
        laughs += &format!("l{level}: [$l{}, $l{}]\n", level - 1, level - 1);
    }
    let error = parse(&laughs).unwrap_err();
    assert!(
        error.ends_with("more than 100000 values (after variable expansion)"),
        "{error}"
    );
    // Nesting through variables.
    let mut nested = String::from("v0: x\n");
    for level in 1..70 {
        nested += &format!("v{level}: [$v{}]\n", level - 1);
    }
    let error = parse(&nested).unwrap_err();
    assert!(
        error.ends_with("nested deeper than 64 (after variable expansion)"),
        "{error}"
    );
    // Includes of includes, each a new file.
    let chain: Vec<(String, String)> =
        std::iter::once((MAIN.to_owned(), "include i0.conf".to_owned()))
            .chain((0..20).map(|index| {
                (
                    format!("conf/i{index}.conf"),
                    format!("include i{}.conf", index + 1),
                )
            }))
            .collect();
    let files: Vec<(&str, &str)> = chain
        .iter()
        .map(|(path, text)| (path.as_str(), text.as_str()))
        .collect();
    let error = parse_files(&files).unwrap_err();
    assert!(error.ends_with("includes nested deeper than 16"), "{error}");
}

#[test]
fn keys_used_as_variables_are_marked() {
    let map = parse_file(
        Path::new(MAIN),
        &inputs(&[(MAIN, "authorization {\n  P = { publish: a }\n  UNUSED = 1\n  users: [ { user: u, permissions: $P } ]\n}")]),
    )
    .unwrap();
    let Value::Map(authorization) = &map.entries()[0].value.value else {
        panic!("authorization is not a map")
    };
    let used: Vec<(&str, bool)> = authorization
        .entries()
        .iter()
        .map(|entry| (entry.key.as_str(), entry.used_as_variable))
        .collect();
    assert_eq!(used, [("P", true), ("UNUSED", false), ("users", false)]);
    let users = &authorization.entries()[2];
    assert_eq!((users.key_at.line, users.key_at.column), (4, 3));
}

// ---------------------------------------------------------------------------------------------
// Conversion

fn mapping(text: &str) -> UserMapping {
    text.parse().unwrap()
}

fn convert(text: &str, users: &[&str]) -> Result<Imported, String> {
    let users: Vec<UserMapping> = users.iter().map(|text| mapping(text)).collect();
    import_with(Path::new(MAIN), &users, &inputs(&[(MAIN, text)]))
        .map_err(|error| error.to_string())
}

fn rules(text: &str, users: &[&str]) -> Json {
    convert(text, users).unwrap().policy["rules"].clone()
}

const API: &str = "api=cluster.local/ns/billing/sa/api";

#[test]
fn permissions_keep_nats_server_meaning() {
    let cases: &[(&str, Json)] = &[
        // Aliases of publish/subscribe/allow_responses and of the response limits.
        (
            "authorization { users: [ { user: api, permissions: { pub: a, sub: [b, \"c  q\"], allow_responses: { max_msgs: 3, ttl: \"5s\" } } } ] }",
            json!({ "publish": ["a"], "subscribe": ["b", "c q"], "allow_responses": { "max": 3, "expires": "5s" } }),
        ),
        (
            "authorization { users: [ { user: api, permission: { import: { allow: a, deny: [b] }, export: { deny: \"c\" }, publish_allow_responses: true } } ] }",
            json!({ "publish": { "allow": ["a"], "deny": ["b"] }, "subscribe": { "deny": ["c"] }, "allow_responses": true }),
        ),
        (
            "authorization { users: [ { username: api, authorization: { PUBLISH: a, allow_responses: { max_messages: -1, expiration: \"-1s\" } } } ] }",
            json!({ "publish": ["a"], "allow_responses": { "max": -1, "expires": "-1s" } }),
        ),
        (
            "authorization { users: [ { user: api, permissions: { publish: a, allow_responses: { max_responses: 0, expires: \"0\" } } } ] }",
            json!({ "publish": ["a"], "allow_responses": { "max": 0, "expires": "0" } }),
        ),
        // allow_responses beside a publish without allow list: nats-server then installs an
        // empty one (validateResponsePermissions), as natsguard does.
        (
            "authorization { users: [ { user: api, permissions: { publish: { deny: x }, allow_responses: true } } ] }",
            json!({ "publish": { "deny": ["x"] }, "allow_responses": true }),
        ),
        // Empty lists and maps restrict nothing; allow_responses false is off.
        (
            "authorization { users: [ { user: api, permissions: { publish: [], subscribe: { allow: [], deny: [] }, allow_responses: false } } ] }",
            json!({}),
        ),
        (
            "authorization { users: [ { user: api, permissions: { publish: {}, allow_responses: {} } } ] }",
            json!({ "allow_responses": {} }),
        ),
        // default_permissions (and its aliases) for a user without permissions; a user with an
        // empty block keeps it.
        (
            "authorization { default_permissions: { publish: d }, users: [ { user: api } ] }",
            json!({ "publish": ["d"] }),
        ),
        (
            "authorization { permissions: { publish: d }, users: [ { user: api, permissions: {} } ] }",
            json!({}),
        ),
        // Queue entries: any white space between subject and queue.
        (
            "authorization { users: [ { user: api, permissions: { subscribe: [\"a.* \\t q.*\", \">\"] } } ] }",
            json!({ "subscribe": ["a.* q.*", ">"] }),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(rules(text, &[API])[0]["permissions"], *expected, "{text}");
    }
}

#[test]
fn the_policy_names_rules_principals_and_trust_domains() {
    let text = "PASS: pw\nauthorization {\n  users: [\n    { user: worker, password: $PASS, permissions: { sub: jobs } }\n    { user: api, password: $PASS }\n    { user: idle, password: $PASS }\n  ]\n}";
    let imported = convert(
        text,
        &[
            API,
            "worker=cluster.local/ns/jobs/sa/worker",
            "worker=prod.example/ns/jobs/sa/batch",
            "worker=cluster.local/ns/jobs/sa/worker",
        ],
    )
    .unwrap();
    assert_eq!(
        imported.policy,
        json!({
            "identity": { "spiffe": { "required": true, "trust_domains": ["cluster.local", "prod.example"] } },
            "default_action": "deny",
            "rules": [
                { "name": "worker", "from": { "principals": ["cluster.local/ns/jobs/sa/worker", "prod.example/ns/jobs/sa/batch"] }, "permissions": { "subscribe": ["jobs"] } },
                { "name": "api", "from": { "principals": ["cluster.local/ns/billing/sa/api"] }, "permissions": {} }
            ]
        })
    );
    assert_eq!(
        imported.notes,
        [
            "user \"idle\" (conf/nats.conf:6:5) is not imported: no --user names it",
            "rules[0].permissions.publish: rule \"worker\" leaves publish unrestricted (no allow list): every subject not denied is allowed",
            "rules[1].permissions.publish: rule \"api\" leaves publish unrestricted (no allow list): every subject not denied is allowed",
            "rules[1].permissions.subscribe: rule \"api\" leaves subscribe unrestricted (no allow list): every subject not denied is allowed",
        ]
    );
    // The single-user form, without default_permissions (nats-server applies them to the
    // users list only).
    let single = "authorization { user: api, password: pw, default_permissions: { publish: x } }";
    assert_eq!(rules(single, &[API])[0]["permissions"], json!({}));
}

#[test]
fn what_natsguard_cannot_express_is_refused_with_its_place() {
    let users = "users: [ { user: api, password: pw } ]";
    let cases: &[(String, &str)] = &[
        (
            format!("accounts {{ A {{ {users} }} }}"),
            "conf/nats.conf:1:1: accounts: accounts cannot be imported: natsguard logs every client in to nats-server as one user, so all of them share one account",
        ),
        (
            format!("mappings {{ a: b }}\nauthorization {{ {users} }}"),
            "conf/nats.conf:1:1: mappings: subject mappings cannot be imported: nats-server checks permissions on the mapped subject, natsguard on the subject the client sends",
        ),
        (
            "operator: /etc/op.jwt\nresolver: MEMORY".to_owned(),
            "conf/nats.conf:1:1: operator: operator mode (JWT accounts and users) cannot be imported: its users and permissions live in JWTs, not in this file",
        ),
        ("port: 4222".to_owned(), "conf/nats.conf: no authorization block: nothing to import"),
        (
            "authorization {\n  token: s3cret\n}".to_owned(),
            "conf/nats.conf:2:3: authorization.token: token authorization has no users to map to identities; natsguard's upstream credentials replace the token (docs/migration.md)",
        ),
        (
            format!("authorization {{ {users}\n  auth_callout {{ issuer: AB, auth_users: [api] }} }}"),
            "conf/nats.conf:2:3: authorization.auth_callout: auth callout leaves authentication and permissions to an external service, which natsguard cannot express",
        ),
        (
            "authorization { users: [ { nkey: UABC } ] }".to_owned(),
            "conf/nats.conf:1:28: authorization.users[0].nkey: nkey users cannot be imported: natsguard knows a client by its SPIFFE ID or JWT and forwards its own credentials, so nats-server's nkey challenge never reaches the client",
        ),
        (
            "authorization { users: [ { user: api, allowed_connection_types: [WEBSOCKET, mqtt] } ] }".to_owned(),
            "conf/nats.conf:1:65: authorization.users[0].allowed_connection_types: the user may connect only as WEBSOCKET, mqtt: natsguard carries STANDARD (NATS over TCP) connections",
        ),
        (
            "authorization { users: [ { user: api, permissions: { publish: \"a b\" } } ] }".to_owned(),
            "conf/nats.conf:1:63: authorization.users[0].permissions.publish: \"a b\" is not a valid subject (publish entries take no queue group); nats-server refuses to start with it",
        ),
        (
            "authorization { users: [ { user: api, permissions: { subscribe: [ok, \"a..b\"] } } ] }".to_owned(),
            "conf/nats.conf:1:70: authorization.users[0].permissions.subscribe[1]: \"a..b\" is not a valid subject; nats-server refuses to start with it",
        ),
        (
            "authorization { users: [ { user: api, permissions: { subscribe: \"t.{{name()}}\" } } ] }".to_owned(),
            "conf/nats.conf:1:65: authorization.users[0].permissions.subscribe: \"t.{{name()}}\" contains \"{{\", which natsguard reads as an identity template (nats-server reads it literally)",
        ),
        (
            "authorization { users: [ { user: api, permissions: { publish: \"a\\x01\" } } ] }".to_owned(),
            "conf/nats.conf:1:63: authorization.users[0].permissions.publish: \"a\\u{1}\" contains the control character '\\u{1}', which natsguard refuses in permission entries",
        ),
        (
            "authorization { users: [ { user: api, permissions: { publish: \"a\u{a0}b\" } } ] }".to_owned(),
            "conf/nats.conf:1:63: authorization.users[0].permissions.publish: \"a\\u{a0}b\" contains the white space '\\u{a0}', which natsguard would read as the separator of \"subject queue\"",
        ),
        // natsguard's loader refuses the duration: placed at the value.
        (
            "authorization { users: [ { user: api, permissions: { allow_responses: { ttl: \"5x\" } } } ] }".to_owned(),
            "conf/nats.conf:1:78: authorization.users[0].permissions.allow_responses.ttl: natsguard refuses it: invalid duration \"5x\" (expected Go syntax such as \"5s\", \"2m\", \"500ms\", \"1h30m\")",
        ),
        (
            "authorization { users: [ { user: api, permissions: { allow_responses: { max: \"1\" } } } ] }".to_owned(),
            "conf/nats.conf:1:78: authorization.users[0].permissions.allow_responses.max: expected an integer, found a string",
        ),
        (
            "authorization { users: [ { user: api, permissions: { allow_responses: yes_please } } ] }".to_owned(),
            "conf/nats.conf:1:71: authorization.users[0].permissions.allow_responses: expected a boolean or a map, found a string",
        ),
        // nats-server's own refusals: unknown fields (unless used as variables), aliases of one
        // option, duplicate users, a single user beside a users list.
        (
            "authorization { users: [ { user: api, permissions: { publish: a, pubish: b } } ] }".to_owned(),
            "conf/nats.conf:1:66: authorization.users[0].permissions.pubish: unknown field \"pubish\" (nats-server refuses to start with it)",
        ),
        (
            "authorization { users: [ { user: api, permissions: { pub: a, publish: b } } ] }".to_owned(),
            "conf/nats.conf:1:62: authorization.users[0].permissions.publish: \"pub\" and \"publish\" (conf/nats.conf:1:54) set the same option: nats-server applies one of them at random",
        ),
        (
            "authorization { users: [ { user: api }, { user: api } ] }".to_owned(),
            "conf/nats.conf:1:41: authorization.users[1]: duplicate user \"api\" (first at conf/nats.conf:1:26)",
        ),
        (
            "authorization { user: a, password: b, users: [ { user: api } ] }".to_owned(),
            "conf/nats.conf:1:17: authorization.user: cannot have a single user/pass and a users array (nats-server refuses to start)",
        ),
        (
            "authorization { users: [ { password: x } ] }".to_owned(),
            "conf/nats.conf:1:26: authorization.users[0]: user entry requires a user",
        ),
        (
            "authorization { users: { user: api } }".to_owned(),
            "conf/nats.conf:1:24: authorization.users: expected users to be an array, found a map",
        ),
        // An undefined variable where a value is read (a password is not).
        (
            "authorization { users: [ { user: api, password: $API_PASS, permissions: $PERMS } ] }".to_owned(),
            "conf/nats.conf:1:73: authorization.users[0].permissions: expected permissions to be a map, found $PERMS, which no key or environment variable defines",
        ),
        // --user names no user of the configuration.
        (
            "authorization {\n  users: [ { user: other } ]\n}".to_owned(),
            "conf/nats.conf:2:3: authorization.users: no user \"api\" (given with --user)",
        ),
    ];
    let mut wrong = Vec::new();
    for (text, expected) in cases {
        let got = convert(text, &[API]);
        if got.as_ref().map_err(String::as_str) != Err(*expected) {
            wrong.push(format!("{text}\n  got {got:?}\n want {expected}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // A key used as a variable is not an unknown field.
    assert!(convert(
        "authorization { P = { publish: a }, users: [ { user: api, permissions: $P } ] }",
        &[API]
    )
    .is_ok());
    // One principal for two users would get both users' permissions.
    let two = "authorization { users: [ { user: api }, { user: other } ] }";
    assert_eq!(
        convert(two, &[API, "other=cluster.local/ns/billing/sa/api"]),
        Err("conf/nats.conf: principal \"cluster.local/ns/billing/sa/api\" is given for users \"api\" and \"other\": natsguard would grant it both users' permissions together".to_owned())
    );
}

#[test]
fn user_mappings_take_istio_principals() {
    let parsed = mapping("a=b=cluster.local/ns/x/sa/y");
    assert_eq!(
        (
            parsed.user.as_str(),
            parsed.principal.as_str(),
            parsed.trust_domain()
        ),
        ("a=b", "cluster.local/ns/x/sa/y", "cluster.local")
    );
    let cases = [
        ("api", "--user \"api\": expected NAME=PRINCIPAL"),
        ("=cluster.local/ns/x/sa/y", "--user \"=cluster.local/ns/x/sa/y\": the user name is empty"),
        (
            "api=spiffe://cluster.local/ns/x/sa/y",
            "--user \"api=spiffe://cluster.local/ns/x/sa/y\": give the principal without spiffe:// (Istio's form, e.g. cluster.local/ns/billing/sa/api)",
        ),
        ("api=Cluster.local/ns/x/sa/y", "--user \"api=Cluster.local/ns/x/sa/y\": invalid principal (invalid_trust_domain)"),
        ("api=cluster.local/ns/x/sa/*", "--user \"api=cluster.local/ns/x/sa/*\": invalid principal (invalid_path_character)"),
        (
            "api=cluster.local/workload",
            "--user \"api=cluster.local/workload\": the principal must have Istio's form <trust-domain>/ns/<namespace>/sa/<service-account>",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(
            text.parse::<UserMapping>(),
            Err(expected.to_owned()),
            "{text}"
        );
    }
}

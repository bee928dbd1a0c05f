use proptest::prelude::*;

use super::{redact_uri, S3Uri, TargetUri};
use crate::TargetError;

fn parse(s: &str) -> TargetUri {
    s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

#[test]
fn canonical_forms_round_trip() {
    for s in [
        "file:///var/lib/cleave/t0",
        "file:///a b/%41",
        "node://127.0.0.1:7000",
        "node://[::1]:7000",
        "node://store-3.example:443",
        "s3://bucket",
        "s3://bucket/deep/prefix",
        "s3://bucket/p?endpoint=http://127.0.0.1:9&region=us-east-1",
        "s3://bucket/p?region=eu-west-1",
    ] {
        assert_eq!(parse(s).to_string(), s);
    }
}

#[test]
fn typed_constructors_and_parts() {
    assert_eq!(TargetUri::node("10.0.0.1:7000").to_string(), "node://10.0.0.1:7000");
    assert_eq!(TargetUri::file("/srv/t0").to_string(), "file:///srv/t0");
    assert_eq!(parse("node://h:1/").as_node(), Some("h:1"));
    assert_eq!(parse("file:///x").as_file(), Some(std::path::Path::new("/x")));
    assert_eq!(
        parse("s3://b/deep/p/?region=r&endpoint=https://s3.example.com/"),
        TargetUri::S3(S3Uri {
            bucket: "b".into(),
            prefix: "deep/p".into(),
            endpoint: Some("https://s3.example.com".into()),
            region: Some("r".into()),
        })
    );
}

#[test]
fn refusals() {
    for (uri, why) in [
        ("", "unknown scheme"),
        ("ftp://x", "unknown scheme"),
        ("file://relative", "absolute path"),
        ("file:///a\0b", "NUL"),
        ("s3://", "bucket"),
        ("s3://AK:SECRET@b/p", "credentials"),
        ("s3://b/p#frag", "fragment"),
        ("s3://b/p?region=", "unknown parameter"),
        ("s3://b/p?endpoint=http://u:p@h", "credentials"),
        ("node://a@b:1", "node://host:port"),
        ("node://a:1?x", "node://host:port"),
    ] {
        match uri.parse::<TargetUri>() {
            Err(TargetError::InvalidUri(m)) => assert!(m.contains(why), "{uri:?}: {m:?} should mention {why:?}"),
            other => panic!("{uri:?}: expected InvalidUri, got {other:?}"),
        }
    }
}

#[test]
fn serde_uses_the_string_form() {
    let u = parse("s3://b/p?endpoint=http://h:9");
    let json = serde_json::to_string(&u).unwrap();
    assert_eq!(json, "\"s3://b/p?endpoint=http://h:9\"");
    assert_eq!(serde_json::from_str::<TargetUri>(&json).unwrap(), u);
    assert!(serde_json::from_str::<TargetUri>("\"node://\"").is_err());
}

#[test]
fn redaction() {
    assert_eq!(redact_uri("file:///a/b"), "file:///a/b");
    assert_eq!(redact_uri("s3://AK:SECRET@bucket/p"), "s3://***@bucket/p");
    assert_eq!(
        redact_uri("s3://b/p?endpoint=http://u:pw@h:1&region=r&secret=SECRET"),
        "s3://b/p?endpoint=http://***@h:1&region=r&secret=***"
    );
    assert_eq!(redact_uri("garbage@SECRET"), "***");
    assert_eq!(redact_uri("s3://b/p?endpoint=http%3A%2F%2Fu%3Apw%40h"), "s3://b/p?endpoint=***");
    assert_eq!(redact_uri(""), "");
}

fn any_uri() -> impl Strategy<Value = TargetUri> {
    let segment = "[a-z0-9][a-z0-9_-]{0,8}";
    prop_oneof![
        proptest::collection::vec("[^\0/]{1,10}", 0..4).prop_map(|p| TargetUri::file(format!("/{}", p.join("/")))),
        ("[a-z0-9.-]{1,20}", 1..65535u16).prop_map(|(h, p)| TargetUri::node(format!("{h}:{p}"))),
        (
            "[a-z0-9][a-z0-9-]{2,20}",
            proptest::collection::vec(segment, 0..3),
            proptest::option::of((any::<bool>(), "[a-z][a-z0-9]{0,10}", 1..65535u16, "[a-z0-9/&=+% ]{0,6}")),
            proptest::option::of("[a-z0-9&=+% -]{1,12}"),
        )
            .prop_map(|(bucket, prefix, endpoint, region)| {
                let endpoint = endpoint.map(|(tls, host, port, path)| {
                    let scheme = if tls { "https" } else { "http" };
                    format!("{scheme}://{host}:{port}/{path}").trim_end_matches('/').to_string()
                });
                TargetUri::S3(S3Uri { bucket, prefix: prefix.join("/"), endpoint, region })
            }),
    ]
}

proptest! {
    #[test]
    fn display_then_parse_is_identity(u in any_uri()) {
        let s = u.to_string();
        let back: TargetUri = s.parse().map_err(|e| TestCaseError::fail(format!("{s:?}: {e}")))?;
        prop_assert_eq!(back, u);
    }
}

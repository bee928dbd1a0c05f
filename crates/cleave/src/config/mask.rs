//! Hiding secrets in the configuration a process prints: logs are read by more people than
//! the data directory is.

pub const MASK: &str = "***";

/// Words that mark a setting or a URI query parameter as a secret.
const SECRET_WORDS: [&str; 7] = ["secret", "token", "passphrase", "password", "credential", "signature", "key"];

/// `value` as it may be shown: all of it when `key` names a secret (and not a file holding
/// one), otherwise with the credentials inside any URI masked.
pub fn value(key: &str, value: &str) -> String {
    let key = key.to_ascii_lowercase();
    let names_a_file = ["_file", "_path", "_dir"].iter().any(|s| key.ends_with(s));
    if !names_a_file && SECRET_WORDS.iter().any(|w| key.contains(w)) && !value.is_empty() {
        return MASK.into();
    }
    uri(value)
}

/// `text` with the user information of a URI (`user:password@`) and the values of its secret
/// query parameters (`secret_access_key=…`, `X-Amz-Signature=…`) masked. Text that is not a
/// URI is returned as it is.
pub fn uri(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else { return text.to_string() };
    let rest_start = scheme_end + 3;
    let rest = &text[rest_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let mut out = text[..rest_start].to_string();
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            out.push_str(MASK);
            out.push_str(&rest[at..authority_end]);
        }
        None => out.push_str(&rest[..authority_end]),
    }
    let rest = &rest[authority_end..];
    let Some(q) = rest.find('?') else {
        out.push_str(rest);
        return out;
    };
    out.push_str(&rest[..=q]);
    let query_and_fragment = &rest[q + 1..];
    let (query, fragment) =
        query_and_fragment.split_at(query_and_fragment.find('#').unwrap_or(query_and_fragment.len()));
    let params: Vec<String> = query.split('&').map(param).collect();
    out.push_str(&params.join("&"));
    out.push_str(fragment);
    out
}

/// One `name=value` of a query: the value masked if the name says secret, and a URI inside
/// it (an endpoint) masked in turn.
fn param(pair: &str) -> String {
    let Some((name, v)) = pair.split_once('=') else { return pair.to_string() };
    let lower = name.to_ascii_lowercase();
    if SECRET_WORDS.iter().any(|w| lower.contains(w)) {
        format!("{name}={MASK}")
    } else {
        format!("{name}={}", uri(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_named_secret_are_masked_whole() {
        assert_eq!(value("CLEAVE_PASSPHRASE", "correct horse"), MASK);
        assert_eq!(value("cluster_secret", "00ff"), MASK);
        assert_eq!(value("api_token", "abc"), MASK);
        // A file that holds a secret is not one.
        assert_eq!(value("secret_file", "/etc/cleave/cluster.secret"), "/etc/cleave/cluster.secret");
        assert_eq!(value("parent_secret_file", "cluster.secret"), "cluster.secret");
        assert_eq!(value("nbd", "127.0.0.1:10809"), "127.0.0.1:10809");
    }

    #[test]
    fn user_information_in_uris_is_masked() {
        assert_eq!(uri("http://admin:hunter2@gw1:8080/"), "http://***@gw1:8080/");
        assert_eq!(uri("https://token@example.net"), "https://***@example.net");
        assert_eq!(value("advertise_api", "http://u:p@10.0.0.1:8080"), "http://***@10.0.0.1:8080");
        // An @ after the authority is not user information.
        assert_eq!(uri("file:///srv/a@b"), "file:///srv/a@b");
    }

    #[test]
    fn secret_query_parameters_are_masked() {
        let s3 = "s3://bucket/p?endpoint=https://s3.example.net&region=eu&access_key_id=AKIA1&secret_access_key=wJalr";
        assert_eq!(
            uri(s3),
            "s3://bucket/p?endpoint=https://s3.example.net&region=eu&access_key_id=***&secret_access_key=***"
        );
        assert_eq!(
            uri("s3://b?X-Amz-Signature=abc&session_token=t#frag"),
            "s3://b?X-Amz-Signature=***&session_token=***#frag"
        );
        // A URI inside a parameter has its credentials masked too.
        assert_eq!(uri("s3://b?endpoint=http://k:s@h:9000"), "s3://b?endpoint=http://***@h:9000");
        let masked = uri(s3);
        assert!(!masked.contains("AKIA1") && !masked.contains("wJalr"));
    }

    #[test]
    fn plain_values_are_unchanged() {
        for v in ["", "./cleave-data", "1GiB", "node://10.0.0.7:7800", "s3://bucket/prefix?region=eu-west-1"] {
            assert_eq!(value("target", v), v);
        }
    }
}

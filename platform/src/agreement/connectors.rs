//! The agreement's connectors (`sources:`) and the secrets they take their credentials from
//! (`secrets:`). A source runs as one of the tenant's stream instances, so it needs the stream
//! section: its limits (memory, CPUs, restarts, reports) are the tenant's stream limits.

use serde_yaml::Value;

use super::fields::{integer, size, string, Errors, Section};
use crate::units::ByteSize;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SecretsAgreement {
    pub max_secrets: u64,
    /// The largest value one secret may hold.
    pub max_size: ByteSize,
}

impl Default for SecretsAgreement {
    fn default() -> Self {
        SecretsAgreement { max_secrets: 20, max_size: ByteSize(16 << 10) }
    }
}

pub(super) fn parse_secrets(value: &Value, path: &str, errors: &mut Errors) -> Option<SecretsAgreement> {
    let s = Section::new(value, path, &["max_secrets", "max_size"], errors)?;
    let d = SecretsAgreement::default();
    let max_secrets = s.optional("max_secrets", d.max_secrets, errors, integer(0, 1_000));
    let max_size = s.optional("max_size", d.max_size, errors, |v| {
        let m = size(v)?;
        // The API takes a secret in a small JSON body.
        if m.0 > 48 << 10 {
            Err(format!("{m} is over the 48KiB a secret may hold"))
        } else {
            Ok(m)
        }
    });
    Some(SecretsAgreement { max_secrets: max_secrets?, max_size: max_size? })
}

/// `initial`: the tables' rows first, then their changes; `never`: changes from the start only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    Initial,
    Never,
}

/// A `postgres_cdc` source: a tenant's PostgreSQL tables into its topics as Debezium change events.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Source {
    /// `[a-z0-9-]`, unique in the agreement; names its instance (`source:<name>`), slot and publication.
    pub name: String,
    /// The tenant secret holding the database's URL (`postgres://login:password@host:port/db`).
    pub secret: String,
    /// `schema.table`.
    pub tables: Vec<String>,
    /// Events of table `s.t` go to topic `<tenant>.<topic_prefix>.s.t`.
    pub topic_prefix: String,
    pub snapshot: SnapshotMode,
    /// Each event with Kafka Connect's schema part (`schemas.enable=true`).
    pub schemas: bool,
    /// Updates and deletes carry the whole old row (`REPLICA IDENTITY FULL`).
    pub replica_identity_full: bool,
    /// Of each table's topic. One keeps a table's changes in commit order.
    pub partitions: u64,
}

impl Source {
    /// The topics the source writes, without the tenant prefix.
    pub fn topics(&self) -> impl Iterator<Item = String> + '_ {
        self.tables.iter().map(|t| format!("{}.{t}", self.topic_prefix))
    }
}

/// `[a-z0-9][a-z0-9_]*` (a PostgreSQL identifier needing no quotes), up to 63.
fn identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

pub(super) fn parse_sources(s: &Section<'_>, errors: &mut Errors) -> Option<Vec<Source>> {
    let mut names = std::collections::HashSet::new();
    let sources: Vec<Option<Source>> = s
        .list("sources", errors, false)
        .into_iter()
        .map(|(field, v)| parse_source(v, &field, &mut names, errors))
        .collect();
    sources.into_iter().collect()
}

const SOURCE_FIELDS: [&str; 9] =
    ["name", "kind", "secret", "tables", "topic_prefix", "snapshot", "schemas", "replica_identity", "partitions"];

/// One entry of `sources`; `names` holds the names seen before it.
fn parse_source(
    v: &Value,
    field: &str,
    names: &mut std::collections::HashSet<String>,
    errors: &mut Errors,
) -> Option<Source> {
    let src = Section::new(v, field, &SOURCE_FIELDS, errors)?;
    let name = src.required("name", errors, |v| {
        let n = connector_name(v)?;
        if !names.insert(n.clone()) {
            return Err(format!("source `{n}` is declared twice"));
        }
        Ok(n)
    });
    let kind = src.required("kind", errors, |v| match string(v)?.as_str() {
        "postgres_cdc" => Ok(()),
        other => Err(format!("unknown source kind `{other}` (postgres_cdc)")),
    });
    let secret = src.required("secret", errors, |v| {
        let n = string(v)?;
        super::validate_secret_name(&n)?;
        Ok(n)
    });
    let tables = parse_tables(&src, errors);
    let topic_prefix = src.required("topic_prefix", errors, topic_prefix);
    let snapshot = src.optional("snapshot", SnapshotMode::Initial, errors, |v| match string(v)?.as_str() {
        "initial" => Ok(SnapshotMode::Initial),
        "never" => Ok(SnapshotMode::Never),
        other => Err(format!("unknown snapshot mode `{other}` (initial, never)")),
    });
    let schemas =
        src.optional("schemas", false, errors, |v| v.as_bool().ok_or_else(|| "expected true or false".to_owned()));
    let replica_identity_full = src.optional("replica_identity", false, errors, |v| match string(v)?.as_str() {
        "default" => Ok(false),
        "full" => Ok(true),
        other => Err(format!("unknown replica identity `{other}` (default, full)")),
    });
    let partitions = src.optional("partitions", 1, errors, integer(1, 1024));
    kind?;
    Some(Source {
        name: name?,
        secret: secret?,
        tables: tables?,
        topic_prefix: topic_prefix?,
        snapshot: snapshot?,
        schemas: schemas?,
        replica_identity_full: replica_identity_full?,
        partitions: partitions?,
    })
}

pub(super) fn connector_name(v: &Value) -> Result<String, String> {
    lowercase_name(v, 32, '-', "connector name")
}

/// `v` as a name of `a-z` first, then `a-z`, `0-9` and `extra`, up to `max` bytes; the error names
/// it as `what`.
pub(super) fn lowercase_name(v: &Value, max: usize, extra: char, what: &str) -> Result<String, String> {
    let n = string(v)?;
    let ok = n.len() <= max
        && n.starts_with(|c: char| c.is_ascii_lowercase())
        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == extra);
    if ok {
        Ok(n)
    } else {
        Err(format!("`{n}` is not a {what} (a-z first, then a-z, 0-9, `{extra}`; up to {max})"))
    }
}

/// `tables`: at least one, each `schema.table`.
fn parse_tables(src: &Section<'_>, errors: &mut Errors) -> Option<Vec<String>> {
    let tables: Vec<Option<String>> = src
        .list("tables", errors, true)
        .into_iter()
        .map(|(field, v)| {
            let parsed = string(v).and_then(|t| match t.split_once('.') {
                Some((schema, table)) if identifier(schema) && identifier(table) => Ok(t),
                _ => Err(format!("`{t}` is not schema.table (lowercase identifiers, e.g. public.orders)")),
            });
            parsed.map_err(|m| errors.push(field, m)).ok()
        })
        .collect();
    if src.get("tables").is_some_and(|t| t.as_sequence().is_some_and(|l| l.is_empty())) {
        errors.push(src.field("tables"), "at least one table is needed to capture anything");
    }
    tables.into_iter().collect()
}

fn topic_prefix(v: &Value) -> Result<String, String> {
    let p = string(v)?;
    let part_ok = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
    if p.len() <= 64 && p.split('.').all(part_ok) {
        Ok(p)
    } else {
        Err(format!("`{p}` is not a topic prefix (letters, digits, `_`, `-`, parts joined by `.`; up to 64)"))
    }
}

use super::*;

fn parse(name: &str, text: &str) -> Result<ServiceAgreement, AgreementError> {
    ServiceAgreement::from_yaml(Path::new(&format!("tenants/{name}.yaml")), text)
}

fn fields(err: &AgreementError) -> Vec<&str> {
    err.errors.iter().map(|e| e.field.as_str()).collect()
}

#[test]
fn the_example_agreements_parse() {
    for name in ["zoo", "food", "bank"] {
        let path = PathBuf::from(format!("{}/../tenants/{name}.yaml", env!("CARGO_MANIFEST_DIR")));
        let a = ServiceAgreement::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.tenant.as_str(), name);
        assert!(a.stream.is_some());
    }
}

#[test]
fn every_error_is_reported_at_once_with_its_field() {
    let text = r#"
version: 1
tenant: zoo
name: Zoo
colour: green
batch:
  routes:
    - files: "*.csv"
      app: tortoise-csv
      timeout: 10 minutes
      memory: 512MiB
      mem: 1GiB
  formats: [csv, parquet]
  max_file_size: big
  max_files_per_hour: -3
  max_bytes_per_day: 20GiB
"#;
    let err = parse("zoo", text).unwrap_err();
    let f = fields(&err);
    for expected in [
        "colour",
        "batch.routes[0].timeout",
        "batch.routes[0].mem",
        "batch.formats[1]",
        "batch.max_file_size",
        "batch.max_files_per_hour",
        "batch.max_concurrent_jobs",
    ] {
        assert!(f.contains(&expected), "missing {expected} in {err}");
    }
    let text = err.to_string();
    assert!(text.starts_with("tenants/zoo.yaml: 7 errors"), "{text}");
    assert!(text.contains("parquet"), "{text}");
    assert!(text.contains("`10 minutes` has unknown duration unit"), "{text}");
}

#[test]
fn the_tenant_must_match_the_file_name() {
    let err = parse("food", "version: 1\ntenant: zoo\nname: Zoo\n").unwrap_err();
    assert_eq!(fields(&err), ["tenant"]);
    assert!(err.errors[0].message.contains("`food`"));
}

#[test]
fn syntax_errors_name_the_line() {
    let err = parse("zoo", "version: 1\ntenant: [zoo\n").unwrap_err();
    assert_eq!(fields(&err), ["(syntax)"]);
    assert!(err.errors[0].message.contains("line"), "{}", err);
}

#[test]
fn unsupported_versions_are_refused() {
    let err = parse("zoo", "version: 2\ntenant: zoo\nname: Zoo\n").unwrap_err();
    assert_eq!(fields(&err), ["version"]);
}

#[test]
fn a_route_for_a_format_the_tenant_does_not_allow_is_an_error() {
    let text = r#"
version: 1
tenant: zoo
name: Zoo
batch:
  routes: [{files: "*.jsonl", app: x, timeout: 1m, memory: 64MiB}]
  formats: [csv]
  max_file_size: 1MiB
  max_files_per_hour: 10
  max_bytes_per_day: 1GiB
  max_concurrent_jobs: 1
"#;
    let err = parse("zoo", text).unwrap_err();
    assert_eq!(fields(&err), ["batch.routes[0].files"]);
}

#[test]
fn pinned_app_versions_and_defaults() {
    let text = r#"
version: 1
tenant: zoo
name: Zoo
batch:
  routes: [{files: "*.csv", app: tortoise-csv@3, timeout: 1m, memory: 64MiB}]
  formats: [csv]
  max_file_size: 1MiB
  max_files_per_hour: 10
  max_bytes_per_day: 1GiB
  max_concurrent_jobs: 1
"#;
    let a = parse("zoo", text).unwrap();
    let route = a.route_for("readings.csv").unwrap();
    assert_eq!((route.app.as_str(), route.app_version), ("tortoise-csv", Some(3)));
    let batch = a.batch.unwrap();
    assert_eq!((batch.retries, batch.min_file_age), (0, Duration::from_secs(2)));
    assert_eq!(a.apps.max_apps, 10);
}

#[test]
fn globs_match_file_names() {
    assert!(glob_match("*.csv", "a.csv"));
    assert!(glob_match("orders-*.jsonl", "orders-2026-11-21.jsonl"));
    assert!(!glob_match("orders-*.jsonl", "order-1.jsonl"));
    assert!(glob_match("r?.csv", "r1.csv"));
    assert!(!glob_match("*.csv", "a.csv.gz"));
    assert!(glob_match("*", "anything"));
}

#[test]
fn formats_come_from_extensions() {
    assert_eq!(Format::from_file_name("a.CSV"), Some(Format::Csv));
    assert_eq!(Format::from_file_name("a.ndjson"), Some(Format::Jsonl));
    assert_eq!(Format::from_file_name("a.parquet"), None);
    assert_eq!(Format::from_file_name("noext"), None);
}

#[test]
fn sandbox_and_coredms_limits_parse_with_defaults_and_report_their_errors() {
    let base = "version: 1\ntenant: zoo\nname: Zoo\nbatch:\n  routes: [{files: \"*.csv\", app: a, timeout: 1m, memory: 64MiB, cpus: 0.5, max_processes: 16}]\n  formats: [csv]\n  max_file_size: 1MiB\n  max_files_per_hour: 10\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: 1\n";
    let a = parse("zoo", base).unwrap();
    let route = &a.batch.as_ref().unwrap().routes[0];
    assert_eq!((route.cpus, route.max_processes), (Some(0.5), 16));
    assert_eq!(a.coredms, CoreDmsAgreement::default(), "absent: the defaults");
    let a = parse("zoo", &format!("{base}coredms: {{max_connections: 4, statement_timeout: 30s}}\n")).unwrap();
    assert_eq!(a.coredms.max_connections, 4);
    assert_eq!(a.coredms.statement_timeout, Duration::from_secs(30));
    assert_eq!(a.coredms.idle_in_transaction_timeout, CoreDmsAgreement::default().idle_in_transaction_timeout);

    let bad = base.replace("max_processes: 16", "max_processes: 0")
        + "coredms: {max_connections: 0, statement_timeout: 10ms, idle: 1m}\n";
    let err = parse("zoo", &bad).unwrap_err();
    let f = fields(&err);
    for expected in
        ["batch.routes[0].max_processes", "coredms.max_connections", "coredms.statement_timeout", "coredms.idle"]
    {
        assert!(f.contains(&expected), "missing {expected} in {err}");
    }
    assert!(err.to_string().contains("10ms is less than a second"), "{err}");
}

const STREAM: &str = "stream:\n  topics: [{name: orders, partitions: 2}]\n  max_instances: 2\n  thresholds: {min_processing_rate: 1, max_avg_ingestion_time: 1s}\n";

#[test]
fn a_source_is_declared_with_its_secret_tables_and_topics() {
    let text = format!(
        "version: 1\ntenant: shop\nname: Shop\n{STREAM}secrets: {{max_secrets: 5}}\nsources:\n  - name: orders-db\n    kind: postgres_cdc\n    secret: shop-db\n    tables: [public.orders, sales.refunds]\n    topic_prefix: cdc\n    schemas: true\n    replica_identity: full\n"
    );
    let a = parse("shop", &text).unwrap_or_else(|e| panic!("{e}"));
    let s = &a.sources[0];
    assert_eq!((s.name.as_str(), s.secret.as_str(), s.snapshot), ("orders-db", "shop-db", SnapshotMode::Initial));
    assert!(s.schemas && s.replica_identity_full && s.partitions == 1);
    assert_eq!(s.topics().collect::<Vec<_>>(), ["cdc.public.orders", "cdc.sales.refunds"]);
    assert_eq!((a.secrets.max_secrets, a.secrets.max_size), (5, ByteSize(16 << 10)));
}

#[test]
fn a_bad_source_is_reported_field_by_field() {
    let text = "version: 1\ntenant: shop\nname: Shop\nsources:\n  - name: Orders\n    kind: mysql_cdc\n    secret: ../db\n    tables: [orders, public.Orders]\n    topic_prefix: 'a..b'\n    snapshot: sometimes\n  - name: dup\n    kind: postgres_cdc\n    secret: s\n    tables: []\n    topic_prefix: p\n  - name: dup\n    kind: postgres_cdc\n    secret: s\n    tables: [public.t]\n    topic_prefix: p\n";
    let err = parse("shop", text).unwrap_err();
    let f = fields(&err);
    for expected in [
        "sources[0].name",
        "sources[0].kind",
        "sources[0].secret",
        "sources[0].tables[0]",
        "sources[0].tables[1]",
        "sources[0].topic_prefix",
        "sources[0].snapshot",
        "sources[1].tables",
        "sources[2].name",
        "sources",
    ] {
        assert!(f.contains(&expected), "missing {expected} in {err}");
    }
    let text = err.to_string();
    assert!(text.contains("unknown source kind `mysql_cdc` (postgres_cdc)"), "{text}");
    assert!(text.contains("source `dup` is declared twice"), "{text}");
    assert!(text.contains("add a stream section"), "{text}");
    let clash = format!("version: 1\ntenant: shop\nname: Shop\n{STREAM}sources:\n  - {{name: o, kind: postgres_cdc, secret: s, tables: [public.t], topic_prefix: p, partitions: 3}}\n")
        .replace("name: orders, partitions: 2", "name: p.public.t, partitions: 2");
    let err = parse("shop", &clash).unwrap_err().to_string();
    assert!(
        err.contains(
            "table public.t goes to topic `p.public.t`, which stream.topics declares with 2 partitions, not 3"
        ),
        "{err}"
    );
}

#[test]
fn sinks_copy_the_tenants_topics_into_the_lake_and_the_coredms() {
    let text = format!(
        "version: 1\ntenant: shop\nname: Shop\n{STREAM}sources:\n  - {{name: db, kind: postgres_cdc, secret: s, tables: [public.t], topic_prefix: cdc}}\nsinks:\n  - name: lake\n    kind: parquet_lake\n    topics: [orders, cdc.public.t]\n    columns: [{{name: id, type: int64}}, {{name: at, type: timestamp}}]\n    date_field: at\n    flush_interval: 2s\n  - {{name: docs, kind: coredms, topics: [orders], collection: orders_copy}}\n"
    );
    let a = parse("shop", &text).unwrap_or_else(|e| panic!("{e}"));
    let SinkKind::ParquetLake(lake) = &a.sinks[0].kind else { panic!("{:?}", a.sinks[0]) };
    assert_eq!(a.sinks[0].topics, ["orders", "cdc.public.t"]);
    let columns: Vec<(&str, ColumnKind)> =
        lake.columns.as_ref().unwrap().0.iter().map(|c| (c.name.as_str(), c.kind)).collect();
    assert_eq!(columns, [("id", ColumnKind::Int64), ("at", ColumnKind::Timestamp)]);
    assert_eq!(
        (lake.date_field.as_deref(), lake.flush_rows, lake.flush_interval),
        (Some("at"), 100_000, Duration::from_secs(2))
    );
    assert_eq!(a.sinks[1].kind, SinkKind::Coredms { collection: Some("orders_copy".into()) });
}

#[test]
fn a_bad_sink_is_reported_field_by_field() {
    let text = format!(
        "version: 1\ntenant: shop\nname: Shop\n{STREAM}sinks:\n  - name: Lake\n    kind: s3\n    topics: [other-tenant.orders]\n  - name: l\n    kind: parquet_lake\n    topics: [orders]\n    columns: [{{name: id, type: uuid}}, {{name: id, type: int64}}]\n    collection: x\n    flush_interval: 2h\n  - {{name: m, kind: parquet_lake, topics: [orders]}}\n  - {{name: m, kind: coredms, topics: [], collection: 'Bad Name', date_field: at}}\n  - {{name: n, kind: parquet_lake, topics: [orders]}}\n"
    );
    let err = parse("shop", &text).unwrap_err();
    let f = fields(&err);
    for expected in [
        "sinks[0].name",
        "sinks[0].kind",
        "sinks[0].topics[0]",
        "sinks[1].columns[0].type",
        "sinks[1].columns[1].name",
        "sinks[1].collection",
        "sinks[1].flush_interval",
        "sinks[4].topics",
        "sinks[3].name",
        "sinks[3].topics",
        "sinks[3].collection",
        "sinks[3].date_field",
    ] {
        assert!(f.contains(&expected), "missing {expected} in {err}");
    }
    let text = err.to_string();
    for message in [
        "unknown sink kind `s3` (parquet_lake, coredms)",
        "topic `other-tenant.orders` is neither in stream.topics nor written by one of the sources",
        "unknown column type `uuid`",
        "column `id` is listed twice",
        "not a field of a parquet_lake sink",
        "topic `orders` already goes to another parquet_lake sink (one lake folder per topic)",
        "sink `m` is declared twice",
    ] {
        assert!(text.contains(message), "{message} not in {text}");
    }
    let without_stream =
        "version: 1\ntenant: shop\nname: Shop\nsinks:\n  - {name: m, kind: coredms, topics: [orders]}\n";
    assert!(parse("shop", without_stream).unwrap_err().to_string().contains("sinks run as stream instances"));
    let dots = STREAM.replace("name: orders", "name: '..'");
    assert!(parse("shop", &format!("version: 1\ntenant: shop\nname: Shop\n{dots}"))
        .unwrap_err()
        .to_string()
        .contains("is not a topic name"));
}

#[test]
fn an_app_reads_the_topics_its_inputs_name_and_only_its_tenants() {
    let stream = STREAM.replace(
        "max_instances",
        "inputs:\n    cleaner: [cdc.public.t]\n    copier: [orders, cdc.public.t]\n  max_instances",
    );
    let sources = "sources:\n  - {name: db, kind: postgres_cdc, secret: s, tables: [public.t], topic_prefix: cdc}\n";
    let a = parse("shop", &format!("version: 1\ntenant: shop\nname: Shop\n{stream}{sources}")).unwrap();
    let inputs = &a.stream.unwrap().inputs;
    assert_eq!(inputs["cleaner"], ["cdc.public.t"]);
    assert_eq!(inputs["copier"], ["orders", "cdc.public.t"]);
    assert!(!inputs.contains_key("other"), "an app not named reads every stream topic");

    // Another tenant's topic, a topic nobody writes, a bad app name, an empty list, not a mapping.
    let bad = STREAM.replace(
        "max_instances",
        "inputs:\n    thief: [other.orders, cdc.public.t]\n    Bad/Name: [orders]\n    idle: []\n  max_instances",
    );
    let err = parse("shop", &format!("version: 1\ntenant: shop\nname: Shop\n{bad}")).unwrap_err();
    let text = err.to_string();
    for (field, message) in [
        (
            "stream.inputs.thief[0]",
            "topic `other.orders` is neither in stream.topics nor written by one of the sources",
        ),
        ("stream.inputs.thief[1]", "topic `cdc.public.t` is neither"),
        ("stream.inputs", "`Bad/Name` is not a valid app name"),
        ("stream.inputs.idle", "at least one topic"),
    ] {
        assert!(fields(&err).contains(&field), "{field} missing: {text}");
        assert!(text.contains(message), "{message} not in {text}");
    }
    let list = STREAM.replace("max_instances", "inputs: [orders]\n  max_instances");
    let err = parse("shop", &format!("version: 1\ntenant: shop\nname: Shop\n{list}")).unwrap_err();
    assert!(err.to_string().contains("expected a mapping of app names"), "{err}");
}

//! The environment variables the platform sets for a tenant's app, and nothing else is there (the
//! platform's own environment never reaches an app).

// Every app.
/// The tenant the app runs for.
pub const TENANT: &str = "MYSIMBDP_TENANT";
/// The tenant's coredms: a connection URL with the tenant's own login, and its database.
pub const COREDMS_URL: &str = "MYSIMBDP_COREDMS_URL";
pub const COREDMS_DB: &str = "MYSIMBDP_COREDMS_DB";

// Batch apps, once per file.
/// The job's id, for provenance.
pub const JOB_ID: &str = "MYSIMBDP_JOB_ID";
/// The file to ingest (also the first argument).
pub const INPUT_FILE: &str = "MYSIMBDP_INPUT_FILE";
/// Where the app may leave its result (records ingested and rejected, bytes read, a message).
pub const RESULT_FILE: &str = "MYSIMBDP_RESULT_FILE";

// Stream apps, per instance.
pub const APP: &str = "MYSIMBDP_APP";
pub const INSTANCE_ID: &str = "MYSIMBDP_INSTANCE_ID";
/// The broker (the gateway, for confined apps).
pub const KAFKA_BROKERS: &str = "KAFKA_BROKERS";
/// The tenant's topics to read, comma-separated.
pub const INPUT_TOPICS: &str = "MYSIMBDP_INPUT_TOPICS";
/// The consumer group, and the instance's static membership in it.
pub const CONSUMER_GROUP: &str = "MYSIMBDP_CONSUMER_GROUP";
pub const GROUP_INSTANCE_ID: &str = "MYSIMBDP_GROUP_INSTANCE_ID";
/// Where reports go, the key that signs them, and how often.
pub const METRICS_TOPIC: &str = "MYSIMBDP_METRICS_TOPIC";
pub const REPORT_KEY: &str = "MYSIMBDP_REPORT_KEY";
pub const REPORT_INTERVAL_MS: &str = "MYSIMBDP_REPORT_INTERVAL_MS";
/// The agreement's `max_message_size`, in bytes: larger messages are the app's to reject.
pub const MAX_MESSAGE_SIZE: &str = "MYSIMBDP_MAX_MESSAGE_SIZE";

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

/// The metrics report a stream app sends for each window, keyed `<tenant>/<app>/<instance>` and
/// signed with its report key. Read strictly: every field required, nothing else allowed.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub version: u32,
    pub tenant: String,
    pub app: String,
    pub instance: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub messages: u64,
    pub bytes: u64,
    pub rejected: u64,
    pub avg_ingestion_ms: f64,
    pub p95_ingestion_ms: f64,
    pub processing_rate: f64,
    pub throughput_bytes_per_s: f64,
    /// The partitions the instance read when the window closed, by topic (optional): who owns what
    /// where the broker's group description does not say (tansu's does not). Only the app's own
    /// group's partitions count, and a false claim can only misjudge the claimant's own app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<BTreeMap<String, Vec<i32>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        Report {
            version: 1,
            tenant: "zoo".into(),
            app: "ingest".into(),
            instance: "i".into(),
            window_start: at,
            window_end: at,
            messages: 3,
            bytes: 30,
            rejected: 0,
            avg_ingestion_ms: 1.0,
            p95_ingestion_ms: 2.0,
            processing_rate: 3.0,
            throughput_bytes_per_s: 30.0,
            partitions: None,
        }
    }

    #[test]
    fn what_is_sent_is_what_is_read() {
        let sent = serde_json::to_value(report()).unwrap();
        assert!(sent.get("partitions").is_none(), "{sent}");
        assert_eq!(serde_json::from_value::<Report>(sent).unwrap(), report());
    }

    #[test]
    fn an_unknown_or_missing_field_is_refused() {
        let mut extra = serde_json::to_value(report()).unwrap();
        extra["admin"] = true.into();
        assert!(serde_json::from_value::<Report>(extra).unwrap_err().to_string().contains("unknown field `admin`"));
        let mut missing = serde_json::to_value(report()).unwrap();
        missing.as_object_mut().unwrap().remove("lag");
        missing.as_object_mut().unwrap().remove("messages");
        assert!(serde_json::from_value::<Report>(missing)
            .unwrap_err()
            .to_string()
            .contains("missing field `messages`"));
    }
}

//! The platform's vocabulary, shared by every layer: the states of jobs and instances, the kinds of
//! apps and the reasons files are refused or runs fail, as types.
//! Each is stored as text (the store's columns stay readable in `psql`) and shown as the same word in
//! the API, so the word is spelled once, here; everything else compares the enum. Depends on nothing
//! else of the crate.

use sqlx::encode::IsNull;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::Postgres;

/// An enum stored and shown as one word per variant: `as_str`, `parse`, `Display`, serde, the OpenAPI
/// schema, and sqlx's text encoding (also in arrays, for `state = any($1)`).
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        // The words are the variants' names in snake_case, so serde and the OpenAPI schema (which
        // reads `rename_all`, not a per-variant rename made inside a macro) say them as `as_str` does;
        // a unit test holds the three together.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// Every word, for messages naming what is accepted.
            pub fn words() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl sqlx::Type<Postgres> for $name {
            fn type_info() -> PgTypeInfo {
                <String as sqlx::Type<Postgres>>::type_info()
            }
            fn compatible(ty: &PgTypeInfo) -> bool {
                <String as sqlx::Type<Postgres>>::compatible(ty)
            }
        }

        impl PgHasArrayType for $name {
            fn array_type_info() -> PgTypeInfo {
                <String as PgHasArrayType>::array_type_info()
            }
        }

        impl<'q> sqlx::Encode<'q, Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, Postgres> for $name {
            fn decode(value: PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <&str as sqlx::Decode<Postgres>>::decode(value)?;
                $name::parse(s).ok_or_else(|| format!("`{s}` is not a {}", stringify!($name)).into())
            }
        }
    };
}

/// An id of one kind of record: a UUID that cannot be passed where another kind's id is wanted (a job
/// id where an instance id goes). Stored as `uuid`, shown as its text.
macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[derive(serde::Serialize, serde::Deserialize, sqlx::Type, utoipa::ToSchema)]
        #[serde(transparent)]
        #[sqlx(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            /// A new id, ordered by creation time (UUIDv7), so the newest rows sort last in an index.
            pub fn now() -> Self {
                $name(uuid::Uuid::now_v7())
            }

            pub fn parse_str(s: &str) -> Result<Self, uuid::Error> {
                uuid::Uuid::parse_str(s).map($name)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, uuid::Error> {
                Self::parse_str(s)
            }
        }
    };
}

id_type! {
    /// A job: one file's ingestion.
    JobId
}

id_type! {
    /// A stream app instance.
    InstanceId
}

id_type! {
    /// One installed version of an app.
    AppId
}

id_type! {
    /// A batch manager process, holder of job leases.
    ManagerId
}

id_type! {
    /// A notification from the monitor to the stream manager.
    NotificationId
}

text_enum! {
    /// Where a job is in its life. The last three are final: each file ends in exactly one of them.
    JobState {
        Detected = "detected",
        Queued = "queued",
        Running = "running",
        RetryWait = "retry_wait",
        Succeeded = "succeeded",
        Rejected = "rejected",
        Failed = "failed",
    }
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Rejected | JobState::Failed)
    }
}

text_enum! {
    /// What the stream manager last saw of an instance. `Exited` and `Failed` are final: the instance
    /// is not wanted any more and its program no longer runs.
    InstanceState {
        Starting = "starting",
        Running = "running",
        Stopping = "stopping",
        Restarting = "restarting",
        Exited = "exited",
        Failed = "failed",
    }
}

impl InstanceState {
    pub const FINAL: [InstanceState; 2] = [InstanceState::Exited, InstanceState::Failed];

    pub fn is_final(self) -> bool {
        Self::FINAL.contains(&self)
    }
}

text_enum! {
    /// What was asked of an instance: by the API, or by the manager's reaction to a notification.
    Desired {
        Running = "running",
        Stopped = "stopped",
    }
}

text_enum! {
    /// What an app is for: run once per file, or run as supervised instances reading topics.
    AppKind {
        Batch = "batch",
        Stream = "stream",
    }
}

text_enum! {
    /// Why a file was refused, or why its run failed (or waits to be retried): stable, for filters and
    /// statistics; the job's `detail` says the same in words, with the limit and the value.
    Reason {
        // Refused at admission, before any app runs.
        /// The tenant has no agreement in force.
        NoAgreement = "no_agreement",
        /// The tenant's agreement has no `batch` section.
        NoBatchAgreement = "no_batch_agreement",
        /// The name breaks the staging rules (see `names`).
        BadName = "bad_name",
        /// A link, FIFO, device or folder, or a file that changed while it was opened.
        NotRegularFile = "not_regular_file",
        /// A file with other names elsewhere.
        HardLink = "hard_link",
        /// Still open for writing by some process.
        OpenForWriting = "open_for_writing",
        /// An extension the agreement's `formats` do not allow.
        Format = "format",
        /// No route of the agreement matches the name.
        NoRoute = "no_route",
        EmptyFile = "empty_file",
        MaxFileSize = "max_file_size",
        /// The content is not what the extension says.
        ContentMismatch = "content_mismatch",
        /// The same content as an earlier file that succeeded or is on its way.
        Duplicate = "duplicate",
        MaxFilesPerHour = "max_files_per_hour",
        MaxBytesPerDay = "max_bytes_per_day",
        DiskQuota = "disk_quota",
        // Failed runs.
        /// The route's app is not installed, or is not a batch app.
        AppNotFound = "app_not_found",
        /// The platform could not start the app.
        AppStart = "app_start",
        /// The app ended with a failure status or a signal.
        AppError = "app_error",
        Timeout = "timeout",
        MemoryLimit = "memory_limit",
        /// The app asked to be run again later (exit 75).
        TryLater = "try_later",
        /// A claimed file that could not be taken up after a crash, however often tried.
        RecoveryFailed = "recovery_failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each enum's words: `as_str`, serde and the OpenAPI schema say the same.
    fn same_words<T>(all: &[T], word: fn(T) -> &'static str)
    where
        T: Copy + serde::Serialize + utoipa::PartialSchema,
    {
        let words: Vec<&str> = all.iter().map(|v| word(*v)).collect();
        let serde: Vec<String> =
            all.iter().map(|v| serde_json::to_value(v).unwrap().as_str().unwrap().to_owned()).collect();
        assert_eq!(serde, words);
        let schema = serde_json::to_value(T::schema()).unwrap();
        let listed: Vec<&str> = schema["enum"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
        assert_eq!(listed, words, "{schema}");
    }

    #[test]
    fn serde_and_the_openapi_schema_say_the_same_words() {
        same_words(JobState::ALL, JobState::as_str);
        same_words(InstanceState::ALL, InstanceState::as_str);
        same_words(Desired::ALL, Desired::as_str);
        same_words(AppKind::ALL, AppKind::as_str);
        same_words(Reason::ALL, Reason::as_str);
    }

    #[test]
    fn every_word_parses_back_to_its_variant() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(*s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in InstanceState::ALL {
            assert_eq!(InstanceState::parse(&s.to_string()), Some(*s));
        }
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(*r));
        }
        assert_eq!(JobState::parse("retry-wait"), None);
        assert_eq!(Desired::words(), "running, stopped");
    }

    #[test]
    fn final_states() {
        let final_jobs: Vec<_> = JobState::ALL.iter().filter(|s| s.is_final()).map(|s| s.as_str()).collect();
        assert_eq!(final_jobs, ["succeeded", "rejected", "failed"]);
        let final_instances: Vec<_> = InstanceState::ALL.iter().filter(|s| s.is_final()).collect();
        assert_eq!(final_instances, [&InstanceState::Exited, &InstanceState::Failed]);
    }
}

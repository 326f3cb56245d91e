//! Tenant identifiers. Parsed once at the edge; afterwards a `TenantId` is known to be safe as a file
//! name, a topic prefix and (after mapping `-` to `_`) a PostgreSQL identifier.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, pattern = "^[a-z0-9][a-z0-9-]{1,31}$")]
pub struct TenantId(String);

impl TenantId {
    /// `[a-z0-9][a-z0-9-]{1,31}`: two to 32 characters, lowercase, digits and dashes, not starting with a dash.
    pub fn parse(s: &str) -> Result<Self, String> {
        let valid_len = (2..=32).contains(&s.len());
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if valid_len && first_ok && rest_ok {
            Ok(TenantId(s.to_owned()))
        } else {
            Err(format!("`{s}` is not a valid tenant id (2-32 characters of a-z, 0-9 and `-`, not starting with `-`)"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tenant's coredms database and role name: `coredms_<tenant>` with `-` mapped to `_`.
    pub fn coredms_name(&self) -> String {
        format!("coredms_{}", self.0.replace('-', "_"))
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checked when read, like any other input: a row or a message naming something that is no tenant id
/// fails to decode instead of reaching a path or a topic name.
impl<'de> serde::Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        TenantId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl sqlx::Type<sqlx::Postgres> for TenantId {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }
    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl sqlx::postgres::PgHasArrayType for TenantId {
    fn array_type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::postgres::PgHasArrayType>::array_type_info()
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Postgres> for TenantId {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<'q, sqlx::Postgres>>::encode(self.as_str(), buf)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for TenantId {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(TenantId::parse(<&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["zoo", "z1", "food-delivery", "a234567890123456789012345678901b"] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in ["", "z", "-zoo", "Zoo", "zoo_1", "zoo/..", "a2345678901234567890123456789012x", "zoo.x"] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deserialising_checks_like_parsing() {
        let ok: TenantId = serde_json::from_str("\"food-delivery\"").unwrap();
        assert_eq!(ok.as_str(), "food-delivery");
        let bad = serde_json::from_str::<TenantId>("\"../zoo\"").unwrap_err().to_string();
        assert!(bad.contains("`../zoo` is not a valid tenant id"), "{bad}");
    }

    #[test]
    fn coredms_name_is_a_plain_identifier() {
        assert_eq!(TenantId::parse("food-delivery").unwrap().coredms_name(), "coredms_food_delivery");
    }
}

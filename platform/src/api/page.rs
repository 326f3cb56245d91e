//! One way to page every list the API gives: newest first, at most `limit` items (1 to 1000, 100 by
//! default), and a `next_cursor` naming where the next page starts, absent on the last page. The
//! cursor is the time and id of the last item (keyset paging, see `store::After`), opaque to callers;
//! one this API did not give out is refused, and a cursor only positions a query that is filtered
//! by the caller's tenant anyway.

use base64::Engine;
use chrono::{DateTime, Utc};

use super::problem::Problem;
use crate::store::After;

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

/// One page of a list.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// Newest first.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// What a list request asks for: how many items, after which.
#[derive(Debug)]
pub struct PageRequest<K> {
    pub limit: i64,
    pub after: Option<After<K>>,
}

impl<K: std::str::FromStr> PageRequest<K> {
    /// From the query's `limit` and `cursor`: 400 for a limit outside 1..=1000 or a cursor this API
    /// did not give out.
    pub fn new(limit: Option<u32>, cursor: Option<&str>) -> Result<Self, Problem> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(Problem::bad_request(format!("limit is {limit}; it must be between 1 and {MAX_LIMIT}")));
        }
        let after = match cursor {
            Some(c) => Some(decode(c).ok_or_else(|| Problem::bad_request("cursor is not one this API gave out"))?),
            None => None,
        };
        Ok(PageRequest { limit: limit as i64, after })
    }

    /// Rows to ask the store for: one more than the page holds, whose presence says there is a
    /// next page.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }
}

impl<T> Page<T> {
    /// The page from the rows fetched for `request` (see `PageRequest::fetch`), `key` naming where
    /// each row is in the list.
    pub fn new<K: std::fmt::Display>(
        mut rows: Vec<T>,
        request: &PageRequest<impl Sized>,
        key: impl Fn(&T) -> After<K>,
    ) -> Self {
        let limit = request.limit as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|row| encode(&key(row)))
        } else {
            None
        };
        Page { items: rows, next_cursor }
    }
}

fn encode<K: std::fmt::Display>(after: &After<K>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}.{}", after.at.timestamp_micros(), after.id))
}

fn decode<K: std::str::FromStr>(cursor: &str) -> Option<After<K>> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let (micros, id) = std::str::from_utf8(&raw).ok()?.split_once('.')?;
    let at: DateTime<Utc> = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    Some(After { at, id: id.parse().ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobId;

    #[test]
    fn a_cursor_given_out_names_the_last_item_and_reads_back() {
        let request = PageRequest::<i64>::new(Some(2), None).unwrap();
        assert_eq!(request.fetch(), 3);
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let page = Page::new(vec![30i64, 20, 10], &request, |&id| After { at, id });
        assert_eq!(page.items, [30, 20]);
        let next = PageRequest::<i64>::new(None, page.next_cursor.as_deref()).unwrap();
        assert_eq!(next.after, Some(After { at, id: 20 }));
        assert_eq!(next.limit, DEFAULT_LIMIT as i64);
        let last = Page::new(vec![1i64], &request, |&id| After { at, id });
        assert_eq!(last.next_cursor, None);
    }

    #[test]
    fn a_forged_cursor_or_limit_is_refused() {
        for bad in ["", "x", "bm90LWEtY3Vyc29y", &encode(&After { at: Utc::now(), id: "not-a-uuid" })] {
            let e = PageRequest::<JobId>::new(None, Some(bad)).unwrap_err();
            assert_eq!((e.status, e.detail.as_str()), (400, "cursor is not one this API gave out"), "{bad}");
        }
        for limit in [0, MAX_LIMIT + 1] {
            assert_eq!(PageRequest::<JobId>::new(Some(limit), None).unwrap_err().status, 400);
        }
    }
}

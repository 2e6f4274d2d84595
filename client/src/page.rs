//! Paged lists (`GET` with `limit` and `cursor`, the `next-cursor` answer header): which
//! page to ask for next, and how the pages make one list.

use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::HashSet;

/// How much of a paged list to fetch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Page {
    /// Records per page (the service's default, 100, when `None`; at most
    /// [`hammer_protocol::api::MAX_PAGE_LIMIT`]).
    pub limit: Option<u32>,
    /// Every page, following `next-cursor` until the last; else the first page only.
    pub all: bool,
}

impl Page {
    /// The first page of at most `limit` records.
    pub fn first(limit: u32) -> Page {
        Page {
            limit: Some(limit),
            all: false,
        }
    }

    /// Every record, `limit` per request.
    pub fn all(limit: Option<u32>) -> Page {
        Page { limit, all: true }
    }
}

/// How the service lists a collection. Pages always come newest first; the records within a
/// page are either newest first too (deployments) or oldest first (a device's history).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Newest first overall: pages are appended.
    NewestFirst,
    /// Oldest first overall: older pages go in front.
    Chronological,
}

/// What a paged `GET` fetched.
#[derive(Debug, Clone)]
pub struct Listed<T> {
    /// The records as the service sent them (one JSON array), for exact `--json` output.
    pub raw: Value,
    pub items: Vec<T>,
    /// More (older) records exist than were fetched.
    pub more: bool,
}

/// Where a paged fetch goes after a page.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Ask for the page at this cursor.
    Fetch(String),
    /// Stop; `more` tells whether older records were left.
    Done { more: bool },
}

/// The pages fetched so far and the cursors seen.
#[derive(Debug)]
pub(crate) struct Pager {
    path: String,
    all: bool,
    seen: HashSet<String>,
    pages: Vec<Vec<Value>>,
}

impl Pager {
    pub(crate) fn new(path: &str, page: Page) -> Pager {
        Pager {
            path: path.to_owned(),
            all: page.all,
            seen: HashSet::new(),
            pages: Vec::new(),
        }
    }

    /// Records one page and its `next-cursor`; says what to do next. A cursor seen before is
    /// an error (following it would never end).
    pub(crate) fn step(&mut self, items: Vec<Value>, next: Option<String>) -> Result<Step> {
        self.pages.push(items);
        match next {
            Some(n) if self.all => {
                if !self.seen.insert(n.clone()) {
                    return Err(Error::RepeatedCursor {
                        path: self.path.clone(),
                    });
                }
                Ok(Step::Fetch(n))
            }
            Some(_) => Ok(Step::Done { more: true }),
            None => Ok(Step::Done { more: false }),
        }
    }

    /// The records of every page as one JSON array in `order`.
    pub(crate) fn finish(mut self, order: Order) -> Value {
        if order == Order::Chronological {
            self.pages.reverse();
        }
        Value::Array(self.pages.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vals(v: &[u64]) -> Vec<Value> {
        v.iter().map(|n| json!(n)).collect()
    }

    #[test]
    fn without_all_the_first_page_is_kept_and_more_is_told() {
        let mut p = Pager::new("/deployments", Page::first(2));
        assert_eq!(
            p.step(vals(&[9, 8]), Some("c1".into())).unwrap(),
            Step::Done { more: true }
        );
        assert_eq!(p.finish(Order::NewestFirst), json!([9, 8]));
        let mut p = Pager::new("/deployments", Page::default());
        assert_eq!(
            p.step(vals(&[1]), None).unwrap(),
            Step::Done { more: false }
        );
    }

    #[test]
    fn with_all_every_cursor_is_followed_and_pages_are_put_in_order() {
        // Deployments: newest first within and across pages.
        let mut p = Pager::new("/deployments", Page::all(Some(2)));
        assert_eq!(
            p.step(vals(&[9, 8]), Some("c1".into())).unwrap(),
            Step::Fetch("c1".into())
        );
        assert_eq!(
            p.step(vals(&[7, 6]), Some("c2".into())).unwrap(),
            Step::Fetch("c2".into())
        );
        assert_eq!(
            p.step(vals(&[5]), None).unwrap(),
            Step::Done { more: false }
        );
        assert_eq!(p.finish(Order::NewestFirst), json!([9, 8, 7, 6, 5]));

        // History: each page oldest first, older pages in front.
        let mut p = Pager::new("/devices/d1/history", Page::all(Some(2)));
        p.step(vals(&[4, 5]), Some("c1".into())).unwrap();
        p.step(vals(&[2, 3]), Some("c2".into())).unwrap();
        p.step(vals(&[1]), None).unwrap();
        assert_eq!(p.finish(Order::Chronological), json!([1, 2, 3, 4, 5]));
    }

    #[test]
    fn a_repeated_cursor_stops_the_fetch() {
        let mut p = Pager::new("/devices/d1/history", Page::all(None));
        p.step(vals(&[1]), Some("c1".into())).unwrap();
        let e = p.step(vals(&[1]), Some("c1".into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the service repeated a page cursor for /devices/d1/history; try again without --all"
        );
    }
}

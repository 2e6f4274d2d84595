//! Local deployment runtime: git mirror, releases, app supervision, health gate (being written).

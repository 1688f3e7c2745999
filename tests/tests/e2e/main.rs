//! End-to-end tests: one test binary, one module per area.

mod api;
mod cli;
mod connectors;
mod database;
mod docs;

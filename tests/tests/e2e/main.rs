//! End-to-end tests: one test binary, one module per area.

mod api;
mod cli;
mod connectors;
mod database;
mod dataplane;
mod direct;
mod docs;
mod egress;
mod hubs;
mod identity;
mod lab;
mod leases;
mod network;
mod observability;
mod offload;
mod regions;
mod relay;
mod reports;
mod spokes;
mod steering;
mod steering_lab;
mod tls;
mod transfer_engine;
mod tunnel;
mod tunnel_cli;
mod write_path;

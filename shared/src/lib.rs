//! What more than one Switchyard binary needs: auth primitives and the storage connectors.
//!
//! `shared` does IO only in [`storage`]; everything else here is pure computation that tests
//! exercise without sockets or real time.

pub mod auth;
pub mod storage;

//! What more than one Switchyard binary needs: auth primitives, the hub↔spoke protocol, the
//! network PKI, join strings and the storage connectors.
//!
//! `shared` does IO only in [`storage`], [`quic`], [`resolve`] and [`budget`] (sleeping for a
//! slot, asking the shared store); everything else here is pure computation that tests
//! exercise without sockets or real time.

pub mod auth;
pub mod budget;
pub mod egress;
pub mod join;
pub mod logging;
pub mod pki;
pub mod proto;
pub mod quic;
pub mod resolve;
pub mod storage;

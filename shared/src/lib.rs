//! What more than one Switchyard binary needs: auth primitives, the hub↔spoke protocol, the
//! network PKI, join strings and the storage connectors.
//!
//! `shared` does IO only in [`storage`], [`quic`] and [`resolve`]; everything else here is pure computation that tests
//! exercise without sockets or real time.

pub mod auth;
pub mod egress;
pub mod join;
pub mod logging;
pub mod pki;
pub mod proto;
pub mod quic;
pub mod resolve;
pub mod storage;

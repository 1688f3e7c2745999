//! The spoke: the data-plane agent. `spoke enroll` joins the network with a join string
//! ([`enroll`]); `spoke run` keeps a QUIC control connection to each hub ([`control`]) and
//! runs the transfers hubs assign ([`worker`]), moving bytes between storage providers
//! without passing them through a hub.

pub mod cli;
pub mod config;
pub mod control;
pub mod data;
pub mod enroll;
pub mod worker;

//! The spoke: the data-plane agent. `spoke enroll` joins the network with a join string
//! ([`enroll`]); `spoke run` keeps a QUIC control connection to each hub ([`control`]) and
//! runs the transfers hubs assign ([`worker`]), moving bytes between storage providers
//! without passing them through a hub, within the cluster's provider budgets ([`budget`]). A spoke with an advertised address also serves clients
//! directly ([`data`], HTTPS) and relays source bytes to other spokes ([`relay`], QUIC). It
//! acts on `fs` storage only inside the folders its operator declared ([`fsroots`]).

pub mod asks;
pub mod budget;
pub mod cli;
pub mod config;
pub mod control;
pub mod data;
pub mod enroll;
pub mod fsroots;
pub mod malloc;
pub mod relay;
pub mod worker;
